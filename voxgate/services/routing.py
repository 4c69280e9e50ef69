"""Model id → provider. The one place that decides who serves a request.

Today every catalog model names the ``local`` provider; remote OpenAI-compatible upstreams (with
retries and fallback to local) plug in here without touching the endpoints.
"""

from __future__ import annotations

from voxgate.catalog import CatalogEntry
from voxgate.errors import UnsupportedModel
from voxgate.providers.base import Provider, SpeechProvider, TranscriptionProvider


class Router:
    def __init__(self, providers: dict[str, Provider]) -> None:
        self._providers = providers

    def _provider(self, entry: CatalogEntry) -> Provider:
        try:
            return self._providers[entry.model.provider]
        except KeyError:
            raise UnsupportedModel(
                f"Model '{entry.id}' names provider '{entry.model.provider}', which is not "
                "configured on this server.",
                param="model",
            ) from None

    def transcription_provider(self, entry: CatalogEntry) -> TranscriptionProvider:
        return self._provider(entry)

    def speech_provider(self, entry: CatalogEntry) -> SpeechProvider:
        return self._provider(entry)

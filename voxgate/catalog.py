"""The model directory: ids, aliases, features, voices, languages and prices.

Everything here comes from one declarative TOML file (``catalog.toml`` shipped in the package, or
the operator's ``VOXGATE_CATALOG_FILE``); no other module hard-codes a model id or a price.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from voxgate.errors import InvalidRequest, ModelNotFound, UnsupportedModel

Feature = Literal[
    "speech-to-text",
    "translation",
    "text-to-speech",
    "language-detection",
    "word-timestamps",
    "streaming",
]
Endpoint = Literal["/v1/audio/transcriptions", "/v1/audio/translations", "/v1/audio/speech"]
#: The metered endpoints' paths: the one definition every module uses.
TRANSCRIPTIONS: Final[Endpoint] = "/v1/audio/transcriptions"
TRANSLATIONS: Final[Endpoint] = "/v1/audio/translations"
SPEECH: Final[Endpoint] = "/v1/audio/speech"
UPLOAD_ENDPOINTS: Final[tuple[Endpoint, ...]] = (TRANSCRIPTIONS, TRANSLATIONS)

ENDPOINT_FEATURES: dict[Endpoint, Feature] = {
    TRANSCRIPTIONS: "speech-to-text",
    TRANSLATIONS: "translation",
    SPEECH: "text-to-speech",
}

#: OpenAI's built-in voice names; every text-to-speech model answers them with its default voice.
OPENAI_VOICES = (
    "alloy", "ash", "ballad", "coral", "echo", "fable", "onyx",
    "nova", "sage", "shimmer", "verse", "marin", "cedar",
)  # fmt: skip


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Pricing(_Strict):
    """USD prices. ``input``/``output`` are per 1M characters; ``per_second`` per audio second."""

    input: float | None = Field(default=None, ge=0)
    output: float | None = Field(default=None, ge=0)
    per_request: float | None = Field(default=None, ge=0)
    per_second: float | None = Field(default=None, ge=0)


class Voice(_Strict):
    id: str
    name: str


class ModelSpec(_Strict):
    id: str
    name: str
    description: str = ""
    provider: str
    engine: str | None = None
    features: tuple[Feature, ...]
    pricing: Pricing = Pricing()
    languages: tuple[str, ...] = ()
    voices: tuple[Voice, ...] = ()
    default_voice: str | None = None
    #: targets tried in order, ``provider:upstream-model`` (config-file models; empty: local)
    serve: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _check_voices(self) -> ModelSpec:
        if "text-to-speech" in self.features and not self.serve:
            ids = {voice.id for voice in self.voices}
            if not ids or self.default_voice not in ids:
                raise ValueError(f"{self.id}: a speech model needs voices and a default_voice")
        return self

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(ep for ep, feature in ENDPOINT_FEATURES.items() if feature in self.features)

    @property
    def model_type(self) -> str:
        return "audio"


class AliasSpec(_Strict):
    id: str
    target: str
    name: str | None = None
    pricing: Pricing | None = None


class _CatalogFile(_Strict):
    models: tuple[ModelSpec, ...]
    aliases: tuple[AliasSpec, ...] = ()


@dataclass(frozen=True)
class CatalogEntry:
    """One id a client may send: a model, or an alias that resolves to one."""

    id: str
    model: ModelSpec
    pricing: Pricing
    alias_of: str | None = None

    @property
    def name(self) -> str:
        return self.model.name if self.alias_of is None else f"{self.id} → {self.model.name}"

    def require(self, endpoint: Endpoint) -> None:
        """Raise UnsupportedModel unless this model serves ``endpoint``."""
        if endpoint not in self.model.endpoints:
            served = ", ".join(self.model.endpoints)
            raise UnsupportedModel(
                f"Model '{self.id}' cannot be used with {endpoint}; it serves {served}.",
                param="model",
            )

    def resolve_voice(self, voice: str) -> str:
        """Map a requested voice (engine voice id or OpenAI voice name) to an engine voice id."""
        model = self.model
        if model.serve and not model.voices:
            return voice  # a routed model passes the voice on; each target resolves it
        wanted = voice.strip().lower()
        for candidate in model.voices:
            if candidate.id.lower() == wanted:
                return candidate.id
        if wanted in OPENAI_VOICES and model.default_voice:
            return model.default_voice
        sample = ", ".join(v.id for v in model.voices[:12])
        more = ", …" if len(model.voices) > 12 else ""
        raise InvalidRequest(
            f"Voice '{voice}' is not available for model '{self.id}'. Use one of OpenAI's voice "
            f"names or one of this model's voices: {sample}{more} (see GET /api/models).",
            param="voice",
            code="unsupported_value",
        )


@dataclass
class Catalog:
    entries: dict[str, CatalogEntry] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> Catalog:
        """Load and validate a catalog file (the shipped one when ``path`` is None)."""
        raw = path.read_bytes() if path else (files("voxgate") / "catalog.toml").read_bytes()
        spec = _CatalogFile.model_validate(tomllib.loads(raw.decode()))
        catalog = cls()
        for model in spec.models:
            catalog._add(CatalogEntry(id=model.id, model=model, pricing=model.pricing))
        models = {model.id: model for model in spec.models}
        for alias in spec.aliases:
            if alias.target not in models:
                raise ValueError(f"alias {alias.id} points to unknown model {alias.target}")
            target = models[alias.target]
            catalog._add(
                CatalogEntry(
                    id=alias.id,
                    model=target,
                    pricing=alias.pricing or target.pricing,
                    alias_of=target.id,
                )
            )
        return catalog

    def _add(self, entry: CatalogEntry) -> None:
        if entry.id in self.entries:
            raise ValueError(f"duplicate model id in catalog: {entry.id}")
        self.entries[entry.id] = entry

    def put(self, entry: CatalogEntry) -> None:
        """Add ``entry``, replacing a model or alias of the same id (config-file models)."""
        self.entries[entry.id] = entry

    def remove(self, model_id: str) -> None:
        self.entries.pop(model_id, None)

    def get(self, model_id: str) -> CatalogEntry:
        try:
            return self.entries[model_id]
        except KeyError:
            raise ModelNotFound(
                f"The model '{model_id}' does not exist. GET /v1/models lists the models.",
                param="model",
            ) from None

    def for_endpoint(self, model_id: str, endpoint: Endpoint) -> CatalogEntry:
        entry = self.get(model_id)
        entry.require(endpoint)
        return entry

    def __iter__(self) -> Iterator[CatalogEntry]:
        return iter(self.entries.values())

    def models(self) -> list[ModelSpec]:
        """The distinct models behind all ids, in catalog order."""
        return [entry.model for entry in self if entry.alias_of is None]

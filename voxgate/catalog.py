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

#: OpenAI's built-in voice names. A voice may claim some (its ``openai`` list); a text-to-speech
#: model answers the rest with its default voice.
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
    #: OpenAI voice names this voice stands for: an alias whose ``voices_from`` includes the
    #: voice's model sends requests for these names here (catalog.toml's one voice mapping).
    openai: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _check_openai(self) -> Voice:
        unknown = sorted(set(self.openai) - set(OPENAI_VOICES))
        if unknown:
            raise ValueError(f"voice {self.id}: not OpenAI voice names: {', '.join(unknown)}")
        return self


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
    #: targets tried in order, ``provider:upstream-model`` (config-file models; see ``chain``)
    serve: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _check_voices(self) -> ModelSpec:
        if "text-to-speech" in self.features and not self.serve:
            ids = {voice.id for voice in self.voices}
            if not ids or self.default_voice not in ids:
                raise ValueError(f"{self.id}: a speech model needs voices and a default_voice")
        return self

    def voice_for(self, wanted: str) -> Voice | None:
        """The voice with this id, else the one claiming this OpenAI name (``wanted``: lower)."""
        for voice in self.voices:
            if voice.id.lower() == wanted:
                return voice
        return next((voice for voice in self.voices if wanted in voice.openai), None)

    @property
    def chain(self) -> tuple[str, ...]:
        """The targets that serve this model, in order: a model is never without one. A shipped
        model's is implicit, itself on its own provider (``local:whisper-base``); every request
        walks its chain the same way (``services/relay.py``)."""
        return self.serve or (f"{self.provider}:{self.id}",)

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
    #: Speech models whose voices this alias also speaks with: a request naming one of their
    #: voices (by id, or an OpenAI name a voice claims) is served by that model; any other
    #: OpenAI voice name goes to ``target``. So tts-1 + "nova" is hibari, tts-1 + "alloy" Piper.
    voices_from: tuple[str, ...] = ()


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
    speakers: tuple[ModelSpec, ...] = ()  # an alias's ``voices_from`` models

    @property
    def name(self) -> str:
        if self.alias_of is None:
            return self.model.name
        return " / ".join([f"{self.id} → {self.model.name}", *(m.name for m in self.speakers)])

    @property
    def voices(self) -> tuple[Voice, ...]:
        """Every voice a request for this id may name (an alias's ``voices_from`` too)."""
        return tuple(voice for model in (self.model, *self.speakers) for voice in model.voices)

    def for_voice(self, voice: str) -> CatalogEntry:
        """This entry resolved to the model that speaks ``voice`` (itself without voices_from).

        Raises InvalidRequest (param ``voice``) for a voice none of its models has.
        """
        if not self.speakers:
            return self
        wanted = voice.strip().lower()
        for model in (self.model, *self.speakers):
            if model.voice_for(wanted) is not None:
                return CatalogEntry(self.id, model, self.pricing, alias_of=model.id)
        if wanted in OPENAI_VOICES:
            return CatalogEntry(self.id, self.model, self.pricing, alias_of=self.alias_of)
        raise self._unknown_voice(voice)

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
        found = model.voice_for(wanted)
        if found is not None:
            return found.id
        if wanted in OPENAI_VOICES and model.default_voice:
            return model.default_voice
        raise self._unknown_voice(voice)

    def _unknown_voice(self, voice: str) -> InvalidRequest:
        voices = self.voices
        sample = ", ".join(v.id for v in voices[:12])
        more = ", …" if len(voices) > 12 else ""
        return InvalidRequest(
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
                    speakers=_speakers(alias, target, models),
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


def _speakers(
    alias: AliasSpec, target: ModelSpec, models: dict[str, ModelSpec]
) -> tuple[ModelSpec, ...]:
    """An alias's ``voices_from`` models, checked: speech models whose voice ids and OpenAI
    names (with the target's) are each claimed once, so every voice name picks one model."""
    speakers: list[ModelSpec] = []
    for model_id in alias.voices_from:
        model = models.get(model_id)
        if model is None or "text-to-speech" not in model.features:
            raise ValueError(f"alias {alias.id}: voices_from {model_id} is not a speech model")
        speakers.append(model)
    if speakers and "text-to-speech" not in target.features:
        raise ValueError(f"alias {alias.id}: voices_from needs a speech model as its target")
    claimed: dict[str, str] = {}
    for model in (target, *speakers):
        for voice in model.voices:
            for name in {voice.id.lower(), *voice.openai}:
                if claimed.setdefault(name, model.id) != model.id:
                    raise ValueError(
                        f"alias {alias.id}: voice '{name}' is claimed by both "
                        f"{claimed[name]} and {model.id}"
                    )
    return tuple(speakers)

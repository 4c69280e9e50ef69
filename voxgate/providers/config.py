"""Upstream providers and routed models, read from the config file (``VOXGATE_CONFIG_FILE``).

The file's ``[providers.NAME]`` tables name OpenAI-compatible upstreams and its ``[[models]]``
entries add models (or replace shipped ones by id) whose ``serve`` chain lists the targets to try
in order, ``provider:upstream-model``. Everything is checked here, at start-up, so a typo fails
``voxgate serve`` with the line it is on instead of the first request that meets it.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from voxgate.catalog import (
    ENDPOINT_FEATURES,
    Catalog,
    CatalogEntry,
    Endpoint,
    Feature,
    ModelSpec,
    Pricing,
    Voice,
)

M = TypeVar("M", bound=BaseModel)
LOCAL = "local"  #: the reserved provider name of the embedded engines


class ConfigError(ValueError):
    """The config file cannot be used; the message names the file, line and entry."""


@dataclass(frozen=True)
class Target:
    """One step of a model's ``serve`` chain: which provider, and the model name it is sent."""

    provider: str
    model: str

    @classmethod
    def parse(cls, text: str) -> Target:
        provider, sep, model = text.partition(":")
        if not sep or not provider or not model:
            raise ValueError(f"serve target '{text}' must be 'provider:model'")
        return cls(provider, model)

    @property
    def label(self) -> str:
        """What ``x-voxgate-route`` and the ledger's ``route`` column show."""
        return f"{self.provider}:{self.model}"

    @property
    def local(self) -> bool:
        return self.provider == LOCAL


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderSpec(_Strict):
    """One OpenAI-compatible upstream. Times are seconds."""

    base_url: str = Field(pattern=r"^https?://")
    api_key_env: str | None = None
    timeout_s: float = Field(default=60.0, gt=0)  # no response headers within this: failed
    connect_timeout_s: float = Field(default=5.0, gt=0)
    max_retries: int = Field(default=1, ge=0, le=10)  # per target, before the next target
    backoff_base_s: float = Field(default=0.1, ge=0)
    backoff_max_s: float = Field(default=2.0, ge=0)
    retry_after_max_s: float = Field(default=5.0, ge=0)  # a longer Retry-After: next target
    breaker_failures: int = Field(default=5, ge=1)  # consecutive failures that open it
    breaker_cooldown_s: float = Field(default=30.0, gt=0)  # open this long, then one probe
    max_connections: int = Field(default=256, ge=1)
    headers: dict[str, str] = {}
    # What the provider accepts in one transcription upload; past either, voxgate splits the
    # audio at silences and sends it piece by piece (services/chunked.py).
    max_upload_mb: float = Field(default=25.0, ge=0.1)  # OpenAI's cap
    max_audio_s: float | None = Field(default=None, gt=0)  # unset: no duration cap
    chunk_s: float = Field(default=600.0, ge=5.0)  # the longest piece voxgate sends
    chunk_concurrency: int = Field(default=3, ge=1, le=16)  # pieces in flight at once


class RoutedModelSpec(_Strict):
    id: str = Field(min_length=1)
    name: str | None = None
    description: str = ""
    features: tuple[Feature, ...]
    pricing: Pricing = Pricing()
    serve: tuple[str, ...] = Field(min_length=1)
    languages: tuple[str, ...] = ()
    voices: tuple[Voice, ...] = ()
    default_voice: str | None = None


@dataclass(frozen=True)
class Provider:
    """A provider as configured, with its key read from the environment."""

    name: str
    spec: ProviderSpec
    api_key: str | None = field(repr=False)


@dataclass(frozen=True)
class UpstreamConfig:
    providers: dict[str, Provider] = field(default_factory=dict)
    models: tuple[RoutedModelSpec, ...] = ()
    #: where each model entry is in the file ("config.toml:12"), for later error messages
    model_lines: dict[str, str] = field(default_factory=dict)


def load_upstream_config(
    path: str | Path | None, environ: dict[str, str] | None = None
) -> UpstreamConfig:
    """Read providers and models from ``path`` (None: none configured). Raises ConfigError."""
    if not path:
        return UpstreamConfig()
    env = os.environ if environ is None else environ
    file = Path(path)
    try:
        text = file.read_text()
        raw = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{file}: {exc}") from None
    lines = text.splitlines()
    providers: dict[str, Provider] = {}
    raw_providers = raw.get("providers", {})
    if not isinstance(raw_providers, dict):
        raise ConfigError(f"{file}: 'providers' must be tables: [providers.NAME]")
    for name, table in raw_providers.items():
        header = r"^\s*\[\s*providers\." + re.escape(name) + r"\s*\]"
        where = f"{file}:{_line(lines, header)}"
        if name == LOCAL:
            raise ConfigError(f"{where}: [providers.local] is reserved for the embedded engines")
        spec = _validate(ProviderSpec, table, f"{where}: [providers.{name}]")
        key = None
        if spec.api_key_env:
            key = env.get(spec.api_key_env)
            if not key:
                raise ConfigError(
                    f"{where}: [providers.{name}] api_key_env = '{spec.api_key_env}', but that "
                    "environment variable is not set"
                )
        providers[name] = Provider(name=name, spec=spec, api_key=key)
    raw_models = raw.get("models", [])
    if not isinstance(raw_models, list):
        raise ConfigError(f"{file}: 'models' must be [[models]] entries")
    headers = [n for n, line in enumerate(lines, 1) if re.match(r"^\s*\[\[\s*models\s*\]\]", line)]
    models: list[RoutedModelSpec] = []
    model_lines: dict[str, str] = {}
    for index, table in enumerate(raw_models):
        line = headers[index] if index < len(headers) else "?"
        label = table.get("id", f"#{index + 1}") if isinstance(table, dict) else f"#{index + 1}"
        where = f"{file}:{line}: [[models]] '{label}'"
        model = _validate(RoutedModelSpec, table, where)
        for text_target in model.serve:
            try:
                target = Target.parse(text_target)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            if not target.local and target.provider not in providers:
                known = ", ".join(sorted([LOCAL, *providers]))
                raise ConfigError(
                    f"{where}: serve target '{text_target}' names provider "
                    f"'{target.provider}', which is not configured (known: {known})"
                )
        model_lines[model.id] = where
        models.append(model)
    return UpstreamConfig(providers=providers, models=tuple(models), model_lines=model_lines)


def _validate(cls: type[M], table: Any, where: str) -> M:
    try:
        return cls.model_validate(table)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'entry'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigError(f"{where}: {problems}") from None


def _line(lines: list[str], pattern: str) -> int | str:
    for number, line in enumerate(lines, 1):
        if re.match(pattern, line):
            return number
    return "?"


def apply_to_catalog(catalog: Catalog, config: UpstreamConfig, *, local_engines: bool) -> None:
    """Add the config file's models to ``catalog`` (an id already there is replaced), check
    every ``local:`` target, and, with the local engines off, drop every local model and
    local target (a model left with no target is an error: it could never be served)."""
    local_models = {entry.id: entry for entry in catalog if entry.model.provider == LOCAL}
    if not local_engines:
        for model_id in local_models:
            catalog.remove(model_id)
    for routed in config.models:
        where = config.model_lines.get(routed.id, routed.id)
        targets = [Target.parse(text) for text in routed.serve]
        for target in targets:
            if not target.local or not local_engines:
                continue
            local = local_models.get(target.model)
            if local is None:
                known = ", ".join(sorted(e.model.id for e in local_models.values()))
                raise ConfigError(
                    f"{where}: serve target '{target.label}': no local model "
                    f"'{target.model}' (local models: {known or 'none'})"
                )
            missing = [ep for ep in _endpoints(routed.features) if ep not in local.model.endpoints]
            if missing:
                raise ConfigError(
                    f"{where}: serve target '{target.label}' cannot serve {', '.join(missing)} "
                    f"(it serves {', '.join(local.model.endpoints)})"
                )
        if not local_engines:
            targets = [target for target in targets if not target.local]
            if not targets:
                raise ConfigError(
                    f"{where}: every serve target is local, and VOXGATE_LOCAL_ENGINES=off"
                )
        if not _endpoints(routed.features):
            raise ConfigError(
                f"{where}: features must include speech-to-text, translation or text-to-speech"
            )
        model = ModelSpec(
            id=routed.id,
            name=routed.name or routed.id,
            description=routed.description,
            provider=targets[0].provider,
            features=routed.features,
            pricing=routed.pricing,
            languages=routed.languages,
            voices=routed.voices,
            default_voice=routed.default_voice,
            serve=tuple(target.label for target in targets),
        )
        catalog.put(CatalogEntry(id=model.id, model=model, pricing=model.pricing))


def _endpoints(features: tuple[Feature, ...]) -> list[Endpoint]:
    return [endpoint for endpoint, feature in ENDPOINT_FEATURES.items() if feature in features]

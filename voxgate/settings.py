"""All of voxgate's settings, in one place.

Values come, highest priority first, from ``VOXGATE_*`` environment variables, then from the
optional TOML file named by ``VOXGATE_CONFIG_FILE`` (same names, lower case, no prefix), then
from the defaults below. Each field's docstring is its documentation; the README's
configuration table is written from it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def default_data_dir() -> Path:
    """Per-user data directory, following the XDG base-directory convention."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "voxgate"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOXGATE_", extra="ignore")

    host: str = "127.0.0.1"
    """Interface `voxgate serve` binds to."""

    port: int = 8000
    """Port `voxgate serve` listens on."""

    data_dir: Path = Field(default_factory=default_data_dir)
    """Where assembled models and the default SQLite database live. Must be writable."""

    api_keys: Annotated[list[str], NoDecode] = []
    """Comma-separated bootstrap bearer keys: unlimited, never expire. With neither these nor any
    key in the database, /v1/* is open (a warning is logged)."""

    admin_key: str | None = None
    """Bearer key for /admin/* and the organization usage and costs API. Unset: those are off."""

    database_url: str | None = None
    """SQLAlchemy URL of the key and usage database. Unset: SQLite at `DATA_DIR/voxgate.db`.
    `postgresql://user@host/db` (psycopg) for several replicas."""

    redis_url: str | None = None
    """`redis://host:6379/0` keeps rate and concurrency counters in Redis, shared by every
    replica. Unset: counters live in this process's memory."""

    instance_id: str | None = None
    """This replica's name in the usage ledger (default `hostname:port`). A restarted replica
    settles the requests its previous run left open, so give each replica a stable name."""

    catalog_file: Path | None = None
    """A TOML model catalog that replaces the one shipped with voxgate."""

    max_upload_mb: float = Field(default=25.0, gt=0)
    """Largest accepted upload body for transcriptions and translations, in MiB."""

    max_audio_seconds: float = Field(default=14_400.0, gt=0)
    """Longest audio accepted for transcription and translation, in seconds (default 4 h).
    Enforced while decoding, since a small upload can hold hours (1 h of silence is 656 KB of
    FLAC): decoding stops at the first frame past it with 400 `audio_too_long`. Decoded audio
    takes 64 KB per second (4 h: 0.9 GB) while its job runs."""

    whisper_compute_type: Literal["int8", "int8_float32", "float32"] = "int8"
    """CTranslate2 compute type for Whisper. int8 halves memory at equal accuracy here."""

    whisper_beam_size: int = Field(default=5, ge=1, le=10)
    """Beam size for Whisper decoding (1 is about twice as fast, slightly less accurate)."""

    whisper_cpu_threads: int = Field(default=0, ge=0)
    """Threads per Whisper inference; 0 uses every core."""

    whisper_batch_size: int = Field(default=4, ge=1)
    """Chunks (up to 30 s each) decoded per batch for audio over 30 s. On 2 cores 4 is as fast
    as 8, and streamed text and cancellation act between batches, so smaller is more responsive."""

    engine_workers: int = Field(default=1, ge=1)
    """Jobs each local engine runs at once. On 2 cores one job already uses both."""

    engine_queue_size: int = Field(default=16, ge=0)
    """Jobs that may wait per engine; beyond that requests get 503 with Retry-After."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level of the server."""

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'voxgate.db'}"

    @property
    def instance(self) -> str:
        return self.instance_id or f"{socket.gethostname()}:{self.port}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("VOXGATE_CONFIG_FILE")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

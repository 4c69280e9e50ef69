"""All of voxgate's settings, in one place.

Values come, highest priority first, from ``VOXGATE_*`` environment variables, then from the
optional TOML file named by ``VOXGATE_CONFIG_FILE`` (same names, lower case, no prefix), then
from the defaults below. Each field's docstring is its documentation; the README's
configuration table is written from it.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
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

    api_keys: Annotated[list[SecretStr], NoDecode] = []
    """Comma-separated bootstrap bearer keys: unlimited, never expire, never stored."""

    admin_key: SecretStr | None = None
    """Bearer key for /admin/* and the organization usage and costs API. Unset: those are off.
    `voxgate serve` refuses one shorter than 32 characters or a known placeholder."""

    auth: Literal["keys", "off"] = "keys"
    """`keys`: every /v1 request needs a valid key (401 until one exists). `off`: /v1 is open and
    every request is anonymous (no budget, no limits); refused on a non-loopback bind unless
    `allow_open_bind` is set. Never switched by creating, revoking or expiring keys."""

    allow_open_bind: bool = False
    """Let `auth=off` serve on a non-loopback interface. Only for a network you trust."""

    cors_origins: Annotated[list[str], NoDecode] = []
    """Comma-separated browser origins allowed by CORS (`*` for any). Empty: CORS is off."""

    database_url: str | None = None
    """SQLAlchemy URL of the key and usage database. Unset: SQLite at `DATA_DIR/voxgate.db`.
    `postgresql://user@host/db` (psycopg) for several replicas."""

    redis_url: str | None = None
    """`redis://host:6379/0` keeps rate and concurrency counters in Redis, shared by every
    replica. Unset: counters live in this process's memory."""

    limits_on_redis_down: Literal["closed", "open"] = "closed"
    """What happens to requests of keys with rate or concurrency limits while Redis is
    unreachable: `closed` answers 503 `limits_unavailable` (with Retry-After), `open` serves
    them without those limits (budgets still hold; a warning is logged). Either way, limits
    apply again as soon as Redis is back."""

    shutdown_grace_s: int = Field(default=60, ge=0)
    """On SIGTERM, how long in-flight requests may run to completion (new connections are
    refused and /health/ready answers 503 at once). Requests still running afterwards are
    cancelled and billed for what they delivered."""

    shutdown_delay_s: float = Field(default=0.0, ge=0)
    """On SIGTERM, how long to go on serving as before, with /health/ready answering 503
    draining, before the drain above begins: a load balancer polling readiness over its open
    connections sees the replica leave before connections are refused. A second signal skips
    the rest of the delay."""

    instance_id: str | None = None
    """This replica's name in the usage ledger (default `hostname:port`). A restarted replica
    settles the requests its previous run left open, so give each replica a stable name."""

    catalog_file: Path | None = None
    """A TOML model catalog that replaces the one shipped with voxgate."""

    config_file: Path | None = None
    """This TOML file (set only as the `VOXGATE_CONFIG_FILE` environment variable) gives these
    settings and the upstream `[providers.NAME]` and routed `[[models]]` (see "Upstream
    providers"), checked at start-up."""

    local_engines: Literal["on", "off"] = "on"
    """`off`: load no local engine and serve no local model (shipped models and `local:`
    targets are dropped): a pure gateway that starts in about a second."""

    gc_freeze: bool = True
    """Once the engines are loaded, move every object alive then into the garbage collector's
    permanent generation (`gc.freeze()`), so later full collections do not walk the start-up
    heap again. `false` only to measure what that buys (docs/benchmarks.md, "Pass-through vs
    LiteLLM")."""

    max_upload_mb: float = Field(default=25.0, gt=0)
    """Largest accepted upload body for transcriptions and translations, in MiB."""

    max_json_kb: int = Field(default=1024, gt=0)
    """Largest accepted body of any other request (JSON), in KiB: 413 before it is read whole."""

    body_idle_timeout_s: float = Field(default=30.0, gt=0)
    """A request body that sends nothing for this long is cut with 408 (slow-client defence)."""

    body_timeout_s: float = Field(default=120.0, gt=0)
    """A request body still arriving after this long is cut with 408, however it trickles."""

    header_timeout_s: float = Field(default=30.0, gt=0)
    """A connection whose request line and headers are not complete after this long is closed."""
    max_audio_seconds: float = Field(default=14_400.0, gt=0)
    """Longest audio accepted for transcription and translation, in seconds (default 4 h).
    Enforced while decoding, since a small upload can hold hours (1 h of silence is 656 KB of
    FLAC): decoding stops at the first frame past it with 400 `audio_too_long`. Memory does not
    grow with it: audio is held one window (``whisper_window_s``) at a time."""

    whisper_compute_type: Literal["int8", "int8_float32", "float32"] = "int8"
    """CTranslate2 compute type for Whisper. int8 halves memory at equal accuracy here."""

    whisper_beam_size: int = Field(default=5, ge=1, le=10)
    """Beam size for Whisper decoding (1 is about twice as fast, slightly less accurate)."""

    whisper_cpu_threads: int = Field(default=0, ge=0)
    """Threads per Whisper inference; 0 uses every core."""

    whisper_timestamp_tokens: bool = False
    """Decode short audio (up to one 30 s window) with Whisper's timestamp tokens, as
    faster-whisper does by default. Off, the text is more accurate (docs/benchmarks.md) and
    segment times come from word alignment; long audio never uses them."""

    transcript_guards: bool = True
    """Drop text Whisper invents on silence, noise or music and cut repetition loops (see
    README, "Quality guards"); what was done is reported in verbose_json and a header."""
    whisper_window_s: float = Field(default=120.0, ge=20.0, le=1800.0)
    """Length of the windows long audio is decoded and transcribed in, in seconds (each cut at
    a silence in its last quarter, at most 30 s of it). Memory per job is about one window
    (120 s: 7.7 MB of samples); longer windows give Whisper no more context than its 30 s."""

    whisper_batch_size: int = Field(default=4, ge=1)
    """Chunks (up to 30 s each) decoded per batch for audio over 30 s. On 2 cores 4 is as fast
    as 8, and streamed text and cancellation act between batches, so smaller is more responsive."""

    engine_workers: int = Field(default=1, ge=1)
    """Jobs each local engine runs at once. On 2 cores one job already uses both."""

    engine_queue_size: int = Field(default=16, ge=0)
    """Jobs that may wait per engine; beyond that requests get 503 with Retry-After."""

    engine_max_wait_s: float = Field(default=30.0, gt=0)
    """Longest expected wait in an engine's queue (jobs ahead / workers x recent average job
    time) that a request is admitted to; beyond it the request gets 503 with Retry-After at once
    instead of joining a queue it would wait in for minutes."""

    engine_queue_timeout_s: float = Field(default=60.0, gt=0)
    """A request that has waited this long in an engine's queue gives up with 503 and
    Retry-After (the expected wait is only an estimate; this bounds the real one)."""

    engine_job_timeout_s: float = Field(default=300.0, gt=0)
    """Most engine time one job may take. Past it the engine stops at its next sentence or
    segment: a response not yet begun gets 503 `engine_timeout`, a stream already begun is cut
    off without its end (an error, never a short success) and billed nothing."""

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level of the server."""

    log_format: Literal["text", "json"] = "text"
    """Server log format: `text` (readable lines) or `json` (one object per line). Either way
    each request gets one access line (`voxgate.access`) with its request id, key id, endpoint,
    model, status, duration, time to first byte, audio seconds or characters and cost."""

    metrics: Literal["off", "on", "admin"] = "off"
    """Prometheus metrics at `/metrics`: `off` (404), `on` (open to anyone who can reach the
    port: keep it on an internal network) or `admin` (needs the admin key as a bearer token)."""

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @property
    def bootstrap_secrets(self) -> list[str]:
        return [key.get_secret_value() for key in self.api_keys]

    @property
    def admin_secret(self) -> str | None:
        return self.admin_key.get_secret_value() if self.admin_key else None

    @property
    def max_json_bytes(self) -> int:
        return self.max_json_kb * 1024

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


MIN_ADMIN_KEY_CHARS = 32
#: Admin keys copied from examples or guessed first; refused whatever their length.
PLACEHOLDER_SECRETS = frozenset(
    {"change-me", "changeme", "change_me", "admin", "secret", "password", "test", "example"}
)


def serve_refusal(settings: Settings) -> str | None:
    """Why ``voxgate serve`` must not start with these settings (one line), or None.

    Checked at start-up rather than on load, so ``voxgate keys`` still works to repair them.
    """
    admin = settings.admin_secret
    if admin is not None:
        if admin.strip().lower() in PLACEHOLDER_SECRETS or _is_placeholder(admin):
            return "VOXGATE_ADMIN_KEY is a placeholder; generate one: openssl rand -hex 32"
        if len(admin) < MIN_ADMIN_KEY_CHARS:
            return (
                f"VOXGATE_ADMIN_KEY is shorter than {MIN_ADMIN_KEY_CHARS} characters; "
                "generate one: openssl rand -hex 32"
            )
    if settings.auth == "off" and not is_loopback(settings.host) and not settings.allow_open_bind:
        return (
            f"VOXGATE_AUTH=off on {settings.host} would open /v1 to the network; bind 127.0.0.1 "
            "or set VOXGATE_ALLOW_OPEN_BIND=true"
        )
    return None


def _is_placeholder(secret: str) -> bool:
    """``change-me`` repeated or padded (``change-me-change-me-…``) is still a placeholder."""
    words = {word for word in secret.lower().replace("_", "-").split("-") if word}
    return bool(words) and words <= {"change", "me", "changeme", "admin", "secret", "password"}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

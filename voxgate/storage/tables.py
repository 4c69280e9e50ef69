"""The database schema. Migrations in ``migrations/versions`` must produce exactly this.

Money is stored as integer micro-USD and audio as integer milliseconds, so sums are exact on
every backend. Times are Unix seconds, which bucket the same way in SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Index, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ApiKeyRow(Base):
    """A key issued by ``voxgate keys create`` or ``POST /admin/keys``. The secret is not stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    redacted: Mapped[str] = mapped_column(String(40))
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int | None] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)
    models: Mapped[list[str] | None] = mapped_column(JSON)
    budget_micros: Mapped[int | None] = mapped_column(BigInteger)
    spent_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    rpm: Mapped[int | None] = mapped_column(Integer)
    audio_seconds_per_minute: Mapped[int | None] = mapped_column(Integer)
    characters_per_minute: Mapped[int | None] = mapped_column(Integer)
    max_concurrency: Mapped[int | None] = mapped_column(Integer)


class UsageRow(Base):
    """One row per metered request. ``pending`` rows hold a budget reservation until settled."""

    __tablename__ = "usage_records"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    api_key_id: Mapped[str | None] = mapped_column(String(40))
    endpoint: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    http_status: Mapped[int | None] = mapped_column(Integer)
    input_audio_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    input_characters: Mapped[int] = mapped_column(BigInteger, default=0)
    output_audio_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    reserved_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    instance_id: Mapped[str] = mapped_column(String(200))
    #: the target that served it, ``provider:upstream-model`` (None: refused before routing)
    route: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[int] = mapped_column(BigInteger)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_usage_created_at", "created_at"),
        Index("ix_usage_key_created_at", "api_key_id", "created_at"),
        Index("ix_usage_status_instance", "status", "instance_id"),
    )


class InstanceRow(Base):
    """Replicas' heartbeats: a pending request of a replica that stopped beating is reaped."""

    __tablename__ = "instances"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    heartbeat_at: Mapped[int] = mapped_column(BigInteger)

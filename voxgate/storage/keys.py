"""API keys: issue a secret, keep only its digest, find it again; list, update, revoke.

Secrets are ``sk-vg-`` followed by 256 random bits (URL-safe base64), so secret scanners can spot
a leaked one, and a plain SHA-256 digest is a safe way to store it: a secret that long cannot be
brute-forced from its digest.

Keys are not cached in the process: every request reads its key row, so a key revoked or expired
by any writer (the admin API, ``voxgate keys`` writing the database directly, another replica on
the same PostgreSQL) is refused on the very next request. A cache would need a validation read
of the shared database anyway (a generation row, ``PRAGMA data_version`` -- which every ledger
write of any connection bumps --, or a Redis version key that the CLI might not reach), and that
read costs the same worker-thread round trip as the lookup itself. So the lookup is made cheap
instead: one pre-built Core SELECT by the unique digest, run with ``Database.transact``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, or_, select, update
from sqlalchemy.engine import Connection

from voxgate.money import micros_to_usd
from voxgate.storage.db import Database
from voxgate.storage.tables import ApiKeyRow

SECRET_PREFIX = "sk-vg-"


def secret_digest(secret: str) -> str:
    """How a key is stored and looked up: the hex SHA-256 of the secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def redact(secret: str) -> str:
    return f"{secret[: len(SECRET_PREFIX)]}...{secret[-4:]}"


@dataclass(frozen=True)
class Limits:
    """Per-key limits; None means unlimited. Rates are per minute, refilled continuously."""

    rpm: int | None = None
    audio_seconds_per_minute: int | None = None
    characters_per_minute: int | None = None
    max_concurrency: int | None = None

    def as_dict(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in LIMIT_FIELDS}

    @classmethod
    def of(cls, row: ApiKeyRow) -> Limits:
        """The limits stored in ``row`` (its columns have the same names)."""
        return cls(**{name: getattr(row, name) for name in LIMIT_FIELDS})


#: The limit fields, defined once by ``Limits``: the table's columns, the admin API's and the
#: CLI's options have these names.
LIMIT_FIELDS: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(Limits))


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    redacted: str
    created_at: int
    expires_at: int | None = None
    revoked_at: int | None = None
    models: tuple[str, ...] | None = None
    budget_micros: int | None = None
    spent_micros: int = 0
    reserved_micros: int = 0
    limits: Limits = field(default_factory=Limits)
    bootstrap: bool = False

    def refusal(self, now: float | None = None) -> str | None:
        """Why this key cannot be used right now, or None."""
        if self.revoked_at is not None:
            return "This API key has been revoked."
        if self.expires_at is not None and (now or time.time()) >= self.expires_at:
            return "This API key has expired."
        return None

    def allows(self, model_ids: Sequence[str]) -> bool:
        """Whether any of ``model_ids`` (the requested id and what it resolves to) is allowed."""
        return self.models is None or any(model in self.models for model in model_ids)

    def public(self) -> dict[str, Any]:
        """The key as the admin API and ``voxgate keys list --json`` show it (no secret)."""
        budget = None if self.budget_micros is None else micros_to_usd(self.budget_micros)
        spent = micros_to_usd(self.spent_micros)
        return {
            "object": "api_key",
            "id": self.id,
            "name": self.name,
            "redacted_value": self.redacted,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked": self.revoked_at is not None,
            "revoked_at": self.revoked_at,
            "models": list(self.models) if self.models is not None else None,
            "budget_usd": budget,
            "spent_usd": spent,
            "reserved_usd": micros_to_usd(self.reserved_micros),
            "remaining_usd": None if budget is None else max(0.0, budget - spent),
            "limits": self.limits.as_dict(),
        }


def _to_key(row: Any) -> ApiKey:
    """An ``ApiKey`` from an ORM ``ApiKeyRow`` or a Core row of the ``api_keys`` table."""
    return ApiKey(
        id=row.id,
        name=row.name,
        redacted=row.redacted,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        models=tuple(row.models) if row.models is not None else None,
        budget_micros=row.budget_micros,
        spent_micros=row.spent_micros,
        reserved_micros=row.reserved_micros,
        limits=Limits.of(row),
    )


_KEYS = cast(Table, ApiKeyRow.__table__)
_BY_DIGEST = select(_KEYS).where(_KEYS.c.secret_sha256 == bindparam("digest"))
_BY_ID = select(_KEYS).where(_KEYS.c.id == bindparam("key_id"))


class KeyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(
        self,
        name: str,
        *,
        budget_micros: int | None = None,
        limits: Limits = Limits(),
        models: Sequence[str] | None = None,
        expires_at: int | None = None,
    ) -> tuple[ApiKey, str]:
        """Store a new key; return it with its secret, which is never available again."""
        secret = new_secret()
        row = ApiKeyRow(
            id=f"key_{secrets.token_hex(8)}",
            name=name,
            redacted=redact(secret),
            secret_sha256=secret_digest(secret),
            created_at=int(time.time()),
            expires_at=expires_at,
            models=list(models) if models is not None else None,
            budget_micros=budget_micros,
            spent_micros=0,
            reserved_micros=0,
            **limits.as_dict(),
        )
        async with self._db.sessions.begin() as session:
            session.add(row)
        return _to_key(row), secret

    async def find(self, digest: str) -> ApiKey | None:
        """The key whose secret has this digest (confirmed with a constant-time compare)."""

        def lookup(connection: Connection) -> Any:
            return connection.execute(_BY_DIGEST, {"digest": digest}).one_or_none()

        row = await self._db.transact(lookup)
        if row is None or not hmac.compare_digest(row.secret_sha256, digest):
            return None
        return _to_key(row)

    async def get(self, key_id: str) -> ApiKey | None:
        """The key as stored now (its spend and reservations too)."""

        def lookup(connection: Connection) -> Any:
            return connection.execute(_BY_ID, {"key_id": key_id}).one_or_none()

        row = await self._db.transact(lookup)
        return _to_key(row) if row is not None else None

    async def list(self) -> list[ApiKey]:
        async with self._db.sessions() as session:
            rows = await session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at))
            return [_to_key(row) for row in rows]

    async def any_usable(self) -> bool:
        """Whether any stored key could authenticate (decides if /v1 is open without keys)."""
        now = int(time.time())
        query = (
            select(func.count())
            .select_from(ApiKeyRow)
            .where(ApiKeyRow.revoked_at.is_(None))
            .where(or_(ApiKeyRow.expires_at.is_(None), ApiKeyRow.expires_at > now))
        )
        async with self._db.sessions() as session:
            return bool(await session.scalar(query))

    async def update(self, key_id: str, **values: object) -> ApiKey | None:
        """Change columns of a key (name, budget_micros, limits, models, expires_at)."""
        async with self._db.sessions.begin() as session:
            if values:
                await session.execute(
                    update(ApiKeyRow).where(ApiKeyRow.id == key_id).values(**values)
                )
        return await self.get(key_id)

    async def revoke(self, key_id: str) -> ApiKey | None:
        async with self._db.sessions.begin() as session:
            await session.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.id == key_id, ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=int(time.time()))
            )
        return await self.get(key_id)

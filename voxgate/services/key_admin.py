"""Issue and change API keys from operator input, for ``/admin/keys`` and ``voxgate keys``.

Both front ends pass the fields the operator gave, named as in the admin API (``name``,
``budget_usd``, ``rpm``, ``audio_seconds_per_minute``, ``characters_per_minute``,
``max_concurrency``, ``models``, ``expires_at``), and get back InvalidRequest naming the field.
So the HTTP API and the CLI accept and refuse exactly the same values, checked in one place.
A field given as None clears it (no budget, no limit, every model, no expiry).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from voxgate.catalog import Catalog
from voxgate.errors import InvalidRequest, ModelNotFound
from voxgate.money import usd_to_micros
from voxgate.storage.keys import LIMIT_FIELDS, ApiKey, KeyStore, Limits

FIELDS = ("name", "budget_usd", *LIMIT_FIELDS, "models", "expires_at")

MAX_NAME_CHARS = 200  # the width of api_keys.name
_MAX_LIMIT = 2**31 - 1  # limits are 32-bit INTEGER columns
_MAX_BUDGET_USD = 1e12  # budget_micros is a 64-bit BIGINT: 9.2e12 USD at most
_MAX_TIMESTAMP = 253402300799  # 9999-12-31T23:59:59Z, the last time ISO 8601 can write


def parse_expiry(value: object, *, now: float | None = None) -> int | None:
    """Unix seconds from an ISO 8601 time (no offset means UTC) or Unix seconds (int or digits).

    None stays None (never expires). A time that is not in the future is refused: a key that is
    dead on arrival is a mistake, and ``revoke`` is the way to stop a key now.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidRequest(
            "expires_at must be an ISO 8601 time or Unix seconds.", param="expires_at"
        )
    if isinstance(value, int):
        timestamp = value
    elif value.strip().isdigit():
        timestamp = int(value.strip())
    else:
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidRequest(
                f"expires_at '{value}' is not an ISO 8601 time (e.g. 2030-01-31T12:00:00Z) "
                "or Unix seconds.",
                param="expires_at",
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        timestamp = math.floor(moment.timestamp())
    if timestamp <= (time.time() if now is None else now):
        raise InvalidRequest(
            f"expires_at ({format_time(timestamp)}) is not in the future.", param="expires_at"
        )
    if timestamp > _MAX_TIMESTAMP:
        raise InvalidRequest("expires_at is after the year 9999.", param="expires_at")
    return timestamp


def format_time(timestamp: int) -> str:
    """Unix seconds as ISO 8601 UTC, for messages and the CLI's tables."""
    if not 0 <= timestamp <= _MAX_TIMESTAMP:
        return str(timestamp)
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_models(catalog: Catalog, models: object) -> list[str] | None:
    """The allowlist with duplicates removed; every id must be in the catalog (ids or aliases).

    An empty list is refused: a key that may use nothing is a mistake (None allows every model).
    """
    if models is None:
        return None
    if isinstance(models, str) or not isinstance(models, Sequence):
        raise InvalidRequest("models must be a list of model ids, or null.", param="models")
    if not models:
        raise InvalidRequest(
            "models must name at least one model id (null allows every model).", param="models"
        )
    allowed: list[str] = []
    for model in models:
        if not isinstance(model, str):
            raise InvalidRequest("models must be a list of model ids.", param="models")
        try:
            catalog.get(model)
        except ModelNotFound:
            known = ", ".join(entry.id for entry in catalog)
            raise InvalidRequest(
                f"Unknown model '{model}' in models. Known ids: {known}.", param="models"
            ) from None
        if model not in allowed:
            allowed.append(model)
    return allowed


def _name(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest("name must be a non-empty string.", param="name")
    name = value.strip()
    if len(name) > MAX_NAME_CHARS:
        raise InvalidRequest(f"name is longer than {MAX_NAME_CHARS} characters.", param="name")
    return name


def _budget_micros(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest("budget_usd must be a number of US dollars.", param="budget_usd")
    if not math.isfinite(value) or not 0 <= value <= _MAX_BUDGET_USD:
        raise InvalidRequest(
            f"budget_usd must be between 0 and {_MAX_BUDGET_USD:.0f}.", param="budget_usd"
        )
    return usd_to_micros(value)


def _limit(field: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_LIMIT:
        raise InvalidRequest(f"{field} must be a whole number of at least 1.", param=field)
    return value


def key_columns(
    catalog: Catalog, fields: Mapping[str, object], *, now: float | None = None
) -> dict[str, Any]:
    """The ``api_keys`` columns for the fields given (and only those). Raises InvalidRequest."""
    columns: dict[str, Any] = {}
    for field, value in fields.items():
        if field == "name":
            columns["name"] = _name(value)
        elif field == "budget_usd":
            columns["budget_micros"] = _budget_micros(value)
        elif field in LIMIT_FIELDS:
            columns[field] = _limit(field, value)
        elif field == "models":
            columns["models"] = check_models(catalog, value)
        elif field == "expires_at":
            columns["expires_at"] = parse_expiry(value, now=now)
        else:
            raise InvalidRequest(f"Unknown key field '{field}'.", param=field)
    return columns


async def create_key(
    store: KeyStore, catalog: Catalog, fields: Mapping[str, object]
) -> tuple[ApiKey, str]:
    """Validate and store a new key; return it with its secret (never retrievable again)."""
    if "name" not in fields:
        raise InvalidRequest(
            "Missing required parameter: 'name'.", param="name", code="missing_required_parameter"
        )
    columns = key_columns(catalog, fields)
    return await store.create(
        columns["name"],
        budget_micros=columns.get("budget_micros"),
        limits=Limits(**{field: columns.get(field) for field in LIMIT_FIELDS}),
        models=columns.get("models"),
        expires_at=columns.get("expires_at"),
    )


async def update_key(
    store: KeyStore, catalog: Catalog, key_id: str, fields: Mapping[str, object]
) -> ApiKey | None:
    """Validate and apply the fields given; None when there is no such key."""
    columns = key_columns(catalog, fields)
    if await store.get(key_id) is None:
        return None
    return await store.update(key_id, **columns)

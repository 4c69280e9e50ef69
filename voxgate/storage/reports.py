"""Usage reports: billable ``usage_records`` summed per time bucket and group, in the database.

One ``GROUP BY`` query does the work, so a report costs one round trip however many rows it
covers. ``created_at`` is an integer (Unix seconds), so a row's bucket is
``(created_at - start) / width`` with integer division, which SQLite and PostgreSQL compute alike.
The start and the width are inlined as literals (``literal_execute``): PostgreSQL binds
parameters server-side and would not see that the same expression in ``SELECT`` and ``GROUP BY``
is one expression if each carried its own placeholders. Both are validated integers.

Only ``succeeded`` and ``cancelled`` rows are billable (a cancelled request is billed for what
its client received); pending, failed, rejected and interrupted rows cost nothing and are left
out of every figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import BigInteger, ColumnElement, bindparam, case, func, select
from sqlalchemy.orm import InstrumentedAttribute

from voxgate.catalog import SPEECH, UPLOAD_ENDPOINTS
from voxgate.storage.db import Database
from voxgate.storage.tables import UsageRow

GroupField = Literal["api_key_id", "model", "endpoint"]

BILLABLE_STATUSES = ("succeeded", "cancelled")
TRANSCRIPTION_ENDPOINTS: tuple[str, ...] = UPLOAD_ENDPOINTS
SPEECH_ENDPOINTS: tuple[str, ...] = (SPEECH,)


@dataclass(frozen=True)
class ReportQuery:
    """What to sum: rows with ``start_time <= created_at < end_time`` matching every filter.

    An empty filter matches everything. ``group_by`` names the columns that split a bucket into
    several results; a column not grouped by is None in every result.
    """

    start_time: int
    end_time: int
    bucket_width_s: int
    endpoints: Sequence[str] = ()
    api_key_ids: Sequence[str] = ()
    models: Sequence[str] = ()
    group_by: Sequence[GroupField] = ()

    def __post_init__(self) -> None:
        if self.bucket_width_s <= 0:
            raise ValueError("bucket_width_s must be positive")
        if self.end_time <= self.start_time:
            raise ValueError("end_time must be after start_time")


@dataclass(frozen=True)
class Aggregate:
    """One bucket's (and group's) totals. Units are exact integers: ms, characters, micro-USD.

    ``bucket`` is the index of the bucket counted from ``start_time``: it covers
    ``[start_time + bucket * width, start_time + (bucket + 1) * width)``.
    """

    bucket: int
    api_key_id: str | None
    model: str | None
    endpoint: str | None
    input_audio_ms: int
    input_characters: int
    num_model_requests: int
    cost_micros: int

    @property
    def seconds(self) -> float:
        """Audio seconds of transcriptions and translations, to the millisecond."""
        return self.input_audio_ms / 1000


_GROUP_COLUMNS: dict[GroupField, InstrumentedAttribute[Any]] = {
    "api_key_id": UsageRow.api_key_id,
    "model": UsageRow.model,
    "endpoint": UsageRow.endpoint,
}


def _sum_where(value: InstrumentedAttribute[int], endpoints: Sequence[str]) -> ColumnElement[int]:
    """``SUM(value)`` over the rows of these endpoints only; 0, not NULL, for no rows."""
    only = case((UsageRow.endpoint.in_(endpoints), value), else_=0)
    return func.coalesce(func.sum(only), 0)


class Reports:
    """Read-only aggregation over the usage ledger (``storage/usage.py`` writes it)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def aggregate(self, query: ReportQuery) -> list[Aggregate]:
        """The non-empty (bucket, group) totals, ordered by bucket then group values.

        Buckets without billable rows are absent; the caller lists them as empty.
        """
        start = bindparam("bucket_start", query.start_time, BigInteger, literal_execute=True)
        width = bindparam("bucket_width", query.bucket_width_s, BigInteger, literal_execute=True)
        bucket = ((UsageRow.created_at - start) // width).label("bucket")
        groups = [_GROUP_COLUMNS[name].label(name) for name in query.group_by]
        statement = (
            select(
                bucket,
                *groups,
                _sum_where(UsageRow.input_audio_ms, TRANSCRIPTION_ENDPOINTS).label("audio_ms"),
                _sum_where(UsageRow.input_characters, SPEECH_ENDPOINTS).label("characters"),
                func.count().label("requests"),
                func.coalesce(func.sum(UsageRow.cost_micros), 0).label("cost_micros"),
            )
            .where(
                UsageRow.status.in_(BILLABLE_STATUSES),
                UsageRow.created_at >= query.start_time,
                UsageRow.created_at < query.end_time,
            )
            .group_by(bucket, *groups)
        )
        if query.endpoints:
            statement = statement.where(UsageRow.endpoint.in_(query.endpoints))
        if query.api_key_ids:
            statement = statement.where(UsageRow.api_key_id.in_(query.api_key_ids))
        if query.models:
            statement = statement.where(UsageRow.model.in_(query.models))
        async with self._db.sessions() as session:
            rows = (await session.execute(statement)).mappings().all()
        aggregates = [
            Aggregate(
                bucket=int(row["bucket"]),
                api_key_id=row["api_key_id"] if "api_key_id" in query.group_by else None,
                model=row["model"] if "model" in query.group_by else None,
                endpoint=row["endpoint"] if "endpoint" in query.group_by else None,
                # PostgreSQL sums BIGINT as NUMERIC (Decimal): back to exact ints.
                input_audio_ms=int(row["audio_ms"]),
                input_characters=int(row["characters"]),
                num_model_requests=int(row["requests"]),
                cost_micros=int(row["cost_micros"]),
            )
            for row in rows
        ]
        aggregates.sort(key=_order)
        return aggregates


def _order(aggregate: Aggregate) -> tuple[int, str, str, str]:
    """Bucket first, then group values; None (anonymous) sorts before any id."""
    return (
        aggregate.bucket,
        aggregate.api_key_id or "",
        aggregate.model or "",
        aggregate.endpoint or "",
    )

"""The usage ledger: one row per metered request, and each key's spent and reserved money.

A request that will cost money first *reserves* its estimate: in one transaction the key's
``reserved_micros`` grows only if spent + reserved + estimate stays within the budget, and a
``pending`` row is written. *Settling* moves the row out of ``pending`` (only once: the status
guards it) and, in the same transaction, turns the reservation into spend. So a key's spend
can never pass its budget however many replicas charge it at once, and every row is counted
exactly once. Pending rows of a replica that died are settled as ``interrupted`` (cost 0) by
``reap``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from voxgate.storage.db import Database
from voxgate.storage.tables import ApiKeyRow, InstanceRow, UsageRow

Status = str  # pending | succeeded | cancelled | failed | rejected | interrupted


@dataclass
class Usage:
    """What one request processed and what it costs (integers: ms, characters, micro-USD)."""

    input_audio_ms: int = 0
    input_characters: int = 0
    output_audio_ms: int = 0
    cost_micros: int = 0


@dataclass(frozen=True)
class Entry:
    """The fixed facts of a request's row."""

    request_id: str
    api_key_id: str | None
    endpoint: str
    model: str
    instance_id: str
    created_at: int
    budgeted: bool = (
        False  # the key has a stored row holding its spend (not bootstrap, not anonymous)
    )


class Ledger:
    def __init__(self, db: Database, instance_id: str) -> None:
        self._db = db
        self.instance_id = instance_id

    async def reserve(self, entry: Entry, estimate: Usage) -> bool:
        """Hold ``estimate.cost_micros`` of the key's budget and write a pending row.

        Keys without a stored row (bootstrap, anonymous) only get the pending row. Returns
        False, writing nothing, if the budget cannot cover the estimate.
        """
        async with self._db.sessions.begin() as session:
            if entry.budgeted:
                held = await session.execute(
                    update(ApiKeyRow)
                    .where(ApiKeyRow.id == entry.api_key_id)
                    .where(
                        ApiKeyRow.budget_micros.is_(None)
                        | (
                            ApiKeyRow.spent_micros
                            + ApiKeyRow.reserved_micros
                            + estimate.cost_micros
                            <= ApiKeyRow.budget_micros
                        )
                    )
                    .values(reserved_micros=ApiKeyRow.reserved_micros + estimate.cost_micros)
                )
                if held.rowcount != 1:  # type: ignore[attr-defined]
                    return False
            session.add(
                _row(entry, estimate, status="pending", reserved_micros=estimate.cost_micros)
            )
        return True

    async def settle(
        self,
        entry: Entry,
        reserved_micros: int,
        usage: Usage,
        *,
        status: Status,
        http_status: int | None,
        latency_ms: int | None,
    ) -> bool:
        """Close a pending row with its final usage; returns False if it was already closed."""
        async with self._db.sessions.begin() as session:
            return await _settle(
                session,
                entry.request_id,
                entry.api_key_id if entry.budgeted else None,
                reserved_micros,
                usage,
                status=status,
                http_status=http_status,
                latency_ms=latency_ms,
            )

    async def record(
        self, entry: Entry, *, status: Status, http_status: int | None, latency_ms: int | None
    ) -> None:
        """Write the row of a request that never reserved anything (refused or failed early)."""
        row = _row(entry, Usage(), status=status, reserved_micros=0)
        row.http_status = http_status
        row.latency_ms = latency_ms
        row.finished_at = int(time.time())
        async with self._db.sessions.begin() as session:
            session.add(row)

    async def heartbeat(self) -> None:
        now = int(time.time())
        async with self._db.sessions.begin() as session:
            updated = await session.execute(
                update(InstanceRow)
                .where(InstanceRow.id == self.instance_id)
                .values(heartbeat_at=now)
            )
            if updated.rowcount == 0:  # type: ignore[attr-defined]
                session.add(InstanceRow(id=self.instance_id, heartbeat_at=now))

    async def reap(
        self, *, own: bool = False, stale_after_s: int = 60
    ) -> list[tuple[str, str | None]]:
        """Settle as ``interrupted`` the pending rows of dead replicas (or, at start, our own
        previous run's, with ``own=True``). Returns the (request id, key id) pairs settled."""
        query = select(UsageRow.request_id, UsageRow.api_key_id, UsageRow.reserved_micros).where(
            UsageRow.status == "pending"
        )
        if own:
            query = query.where(UsageRow.instance_id == self.instance_id)
        else:
            alive = select(InstanceRow.id).where(
                InstanceRow.heartbeat_at >= int(time.time()) - stale_after_s
            )
            query = query.where(UsageRow.instance_id.not_in(alive))
        async with self._db.sessions() as session:
            rows = (await session.execute(query)).all()
        settled = []
        for request_id, api_key_id, reserved in rows:
            async with self._db.sessions.begin() as session:
                closed = await _settle(
                    session,
                    request_id,
                    api_key_id,
                    reserved,
                    Usage(),
                    status="interrupted",
                    http_status=None,
                    latency_ms=None,
                )
            if closed:
                settled.append((request_id, api_key_id))
        return settled


def _row(entry: Entry, usage: Usage, *, status: Status, reserved_micros: int) -> UsageRow:
    return UsageRow(
        request_id=entry.request_id,
        api_key_id=entry.api_key_id,
        endpoint=entry.endpoint,
        model=entry.model,
        status=status,
        input_audio_ms=usage.input_audio_ms,
        input_characters=usage.input_characters,
        output_audio_ms=usage.output_audio_ms,
        cost_micros=usage.cost_micros,
        reserved_micros=reserved_micros,
        instance_id=entry.instance_id,
        created_at=entry.created_at,
    )


async def _settle(
    session: AsyncSession,
    request_id: str,
    stored_key_id: str | None,
    reserved_micros: int,
    usage: Usage,
    *,
    status: Status,
    http_status: int | None,
    latency_ms: int | None,
) -> bool:
    closed = await session.execute(
        update(UsageRow)
        .where(UsageRow.request_id == request_id, UsageRow.status == "pending")
        .values(
            status=status,
            http_status=http_status,
            input_audio_ms=usage.input_audio_ms,
            input_characters=usage.input_characters,
            output_audio_ms=usage.output_audio_ms,
            cost_micros=usage.cost_micros,
            reserved_micros=0,
            latency_ms=latency_ms,
            finished_at=int(time.time()),
        )
    )
    if closed.rowcount != 1:  # type: ignore[attr-defined]
        return False
    if stored_key_id is not None:  # bootstrap and anonymous callers have no key row
        await session.execute(
            update(ApiKeyRow)
            .where(ApiKeyRow.id == stored_key_id)
            .values(
                reserved_micros=ApiKeyRow.reserved_micros - reserved_micros,
                spent_micros=ApiKeyRow.spent_micros + usage.cost_micros,
            )
        )
    return True

"""The usage ledger: one row per metered request, and each key's spent and reserved money.

A request that will cost money first *reserves* its estimate: in one transaction the key's
``reserved_micros`` grows only if spent + reserved + estimate stays within the budget, and a
``pending`` row is written. *Settling* moves the row out of ``pending`` (only once: the status
guards it) and, in the same transaction, turns the reservation into spend. So a key's spend
can never pass its budget however many replicas charge it at once, and every row is counted
exactly once. Pending rows of a replica that died are settled as ``interrupted`` (cost 0) by
``reap``.

A settle or a row the database cannot take (it is down or restarting) goes to the replica's
``Journal`` instead and is replayed when the database answers again: the pending row keeps its
reservation meanwhile, and a row the reaper closed as ``interrupted`` before the replay got
there is corrected to what was really delivered, so a complete response is billed exactly once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from voxgate.errors import DatabaseUnavailable
from voxgate.storage.db import Database
from voxgate.storage.journal import Journal
from voxgate.storage.tables import ApiKeyRow, InstanceRow, UsageRow

log = logging.getLogger("voxgate.ledger")

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
    route: str | None = None  # the target that served it (set by settle and record)


class Ledger:
    def __init__(self, db: Database, instance_id: str, journal: Journal) -> None:
        self._db = db
        self.instance_id = instance_id
        self.journal = journal

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
    ) -> None:
        """Close a pending row with its final usage, now or, if the database is down, once it is
        back (journaled). Raises only if neither the database nor the journal took it."""
        record = {
            "op": "settle",
            "entry": asdict(entry),
            "reserved_micros": reserved_micros,
            "usage": asdict(usage),
            "status": status,
            "http_status": http_status,
            "latency_ms": latency_ms,
            "finished_at": int(time.time()),
        }
        await self._apply_or_journal(record)

    async def record(
        self,
        entry: Entry,
        *,
        status: Status,
        http_status: int | None,
        latency_ms: int | None,
        maybe_reserved_micros: int = 0,
    ) -> None:
        """Write the row of a request that never reserved anything (refused or failed early);
        journaled like ``settle`` if the database is down.

        ``maybe_reserved_micros``: a reservation whose outcome is unknown (the connection broke
        while it committed). If it did commit, its pending row is closed and the money released
        instead, so it is not left pending.
        """
        record = {
            "op": "record",
            "entry": asdict(entry),
            "status": status,
            "http_status": http_status,
            "latency_ms": latency_ms,
            "finished_at": int(time.time()),
            "maybe_reserved_micros": maybe_reserved_micros,
        }
        await self._apply_or_journal(record)

    async def replay(self) -> int:
        """Apply the journal's records in order; returns how many landed. Stops (keeping the
        rest for the next call) at the first one the database cannot take yet."""
        records = await self.journal.read()
        applied = 0
        try:
            for record in records:
                await self._apply(record)
                applied += 1
        except DatabaseUnavailable:
            pass
        except Exception:
            log.exception("replaying the ledger journal failed; retrying later")
        await self.journal.drop(applied)
        if applied:
            log.warning(
                "ledger journal: %d write(s) made after the database came back, %d still waiting",
                applied,
                len(records) - applied,
            )
        return applied

    async def _apply_or_journal(self, record: dict[str, Any]) -> None:
        try:
            await self._apply(record)
        except Exception as exc:
            await self.journal.append(record)  # if this fails too, the caller logs it
            log.warning(
                "ledger write for %s journaled, to be replayed when the database is back (%s)",
                record["entry"]["request_id"],
                type(exc).__name__,
            )

    async def _apply(self, record: dict[str, Any]) -> None:
        """Write one journal-shaped record to the database. Idempotent."""
        entry = Entry(**record["entry"])
        key_id = entry.api_key_id if entry.budgeted else None
        if record["op"] == "record":
            if maybe_reserved := record.get("maybe_reserved_micros", 0):
                async with self._db.sessions.begin() as session:
                    if await _settle(
                        session,
                        entry.request_id,
                        key_id,
                        maybe_reserved,
                        Usage(),
                        status=record["status"],
                        http_status=record["http_status"],
                        latency_ms=record["latency_ms"],
                        finished_at=record["finished_at"],
                    ):
                        return  # the reservation had committed: its row is now closed
            row = _row(entry, Usage(), status=record["status"], reserved_micros=0)
            row.http_status = record["http_status"]
            row.latency_ms = record["latency_ms"]
            row.finished_at = record["finished_at"]
            try:
                async with self._db.sessions.begin() as session:
                    session.add(row)
            except IntegrityError:
                pass  # request ids are unique: this row was written already
            return
        usage = Usage(**record["usage"])
        async with self._db.sessions.begin() as session:
            settled = await _settle(
                session,
                entry.request_id,
                key_id,
                record["reserved_micros"],
                usage,
                status=record["status"],
                http_status=record["http_status"],
                latency_ms=record["latency_ms"],
                finished_at=record["finished_at"],
                route=entry.route,
            )
            if not settled and usage.cost_micros:
                await _correct_interrupted(session, entry.request_id, key_id, usage, record)

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
        route=entry.route,
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
    finished_at: int | None = None,
    route: str | None = None,
) -> bool:
    closed = await session.execute(
        update(UsageRow)
        .where(UsageRow.request_id == request_id, UsageRow.status == "pending")
        .values(
            route=route,
            status=status,
            http_status=http_status,
            input_audio_ms=usage.input_audio_ms,
            input_characters=usage.input_characters,
            output_audio_ms=usage.output_audio_ms,
            cost_micros=usage.cost_micros,
            reserved_micros=0,
            latency_ms=latency_ms,
            finished_at=finished_at or int(time.time()),
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


async def _correct_interrupted(
    session: AsyncSession,
    request_id: str,
    stored_key_id: str | None,
    usage: Usage,
    record: dict[str, Any],
) -> None:
    """Bill a row the reaper closed as ``interrupted`` (cost 0, reservation already released)
    for what it really delivered. Only once: the row is no longer ``interrupted`` after."""
    corrected = await session.execute(
        update(UsageRow)
        .where(UsageRow.request_id == request_id, UsageRow.status == "interrupted")
        .values(
            status=record["status"],
            http_status=record["http_status"],
            input_audio_ms=usage.input_audio_ms,
            input_characters=usage.input_characters,
            output_audio_ms=usage.output_audio_ms,
            cost_micros=usage.cost_micros,
            latency_ms=record["latency_ms"],
            finished_at=record["finished_at"],
        )
    )
    if corrected.rowcount == 1 and stored_key_id is not None:  # type: ignore[attr-defined]
        await session.execute(
            update(ApiKeyRow)
            .where(ApiKeyRow.id == stored_key_id)
            .values(spent_micros=ApiKeyRow.spent_micros + usage.cost_micros)
        )

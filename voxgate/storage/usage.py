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

The per-request writes are pre-built Core statements with bound parameters (compiled once, then
taken from SQLAlchemy's cache), and each transaction runs whole in one worker-thread call
(``Database.transact``): a reservation is one hop (key UPDATE + row INSERT), a settle one hop
(row UPDATE + key UPDATE). The transactions, their guards and their order are unchanged, so are
the pending row written before any work and the journal for a database that is down.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

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


_KEYS = cast(Table, ApiKeyRow.__table__)
_USAGE = cast(Table, UsageRow.__table__)

#: Hold ``b_cost`` of a key's budget, only if spend + holds + it stay within the budget.
_HOLD = (
    update(_KEYS)
    .where(_KEYS.c.id == bindparam("b_key"))
    .where(
        _KEYS.c.budget_micros.is_(None)
        | (
            _KEYS.c.spent_micros + _KEYS.c.reserved_micros + bindparam("b_cost")
            <= _KEYS.c.budget_micros
        )
    )
    .values(reserved_micros=_KEYS.c.reserved_micros + bindparam("b_cost"))
)
_INSERT = insert(_USAGE)
#: The outcome a settle writes into a row (closing it, or correcting one the reaper closed).
_OUTCOME: dict[str, Any] = {
    "status": bindparam("b_status"),
    "http_status": bindparam("b_http_status"),
    "input_audio_ms": bindparam("b_input_audio_ms"),
    "input_characters": bindparam("b_input_characters"),
    "output_audio_ms": bindparam("b_output_audio_ms"),
    "cost_micros": bindparam("b_cost"),
    "latency_ms": bindparam("b_latency_ms"),
    "finished_at": bindparam("b_finished_at"),
}
#: Close a row, only while it is pending (so only once).
_CLOSE = (
    update(_USAGE)
    .where(_USAGE.c.request_id == bindparam("b_request"), _USAGE.c.status == "pending")
    .values(route=bindparam("b_route"), reserved_micros=0, **_OUTCOME)
)
#: Turn a settled row's hold into spend.
_SPEND = (
    update(_KEYS)
    .where(_KEYS.c.id == bindparam("b_key"))
    .values(
        reserved_micros=_KEYS.c.reserved_micros - bindparam("b_reserved"),
        spent_micros=_KEYS.c.spent_micros + bindparam("b_cost"),
    )
)
#: Bill a row the reaper closed as interrupted for what it delivered (only once).
_CORRECT = (
    update(_USAGE)
    .where(_USAGE.c.request_id == bindparam("b_request"), _USAGE.c.status == "interrupted")
    .values(**_OUTCOME)
)
_ADD_SPEND = (
    update(_KEYS)
    .where(_KEYS.c.id == bindparam("b_key"))
    .values(spent_micros=_KEYS.c.spent_micros + bindparam("b_cost"))
)


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
        row = _row(entry, estimate, status="pending", reserved_micros=estimate.cost_micros)

        def hold(connection: Connection) -> bool:
            if entry.budgeted:
                held = connection.execute(
                    _HOLD, {"b_key": entry.api_key_id, "b_cost": estimate.cost_micros}
                )
                if held.rowcount != 1:
                    return False  # nothing written: the transaction has changed nothing
            connection.execute(_INSERT, row)
            return True

        return await self._db.transact(hold)

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

                def close_maybe_reserved(connection: Connection) -> bool:
                    return _settle(
                        connection,
                        entry.request_id,
                        key_id,
                        maybe_reserved,
                        Usage(),
                        status=record["status"],
                        http_status=record["http_status"],
                        latency_ms=record["latency_ms"],
                        finished_at=record["finished_at"],
                    )

                if await self._db.transact(close_maybe_reserved):
                    return  # the reservation had committed: its row is now closed
            row = _row(entry, Usage(), status=record["status"], reserved_micros=0)
            row.update(
                http_status=record["http_status"],
                latency_ms=record["latency_ms"],
                finished_at=record["finished_at"],
            )
            with contextlib.suppress(IntegrityError):  # request ids are unique: written already
                await self._db.transact(lambda connection: connection.execute(_INSERT, row))
            return
        usage = Usage(**record["usage"])

        def settle(connection: Connection) -> None:
            settled = _settle(
                connection,
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
                _correct_interrupted(connection, entry.request_id, key_id, usage, record)

        await self._db.transact(settle)

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
            interrupt = functools.partial(
                _settle,
                request_id=request_id,
                stored_key_id=api_key_id,
                reserved_micros=reserved,
                usage=Usage(),
                status="interrupted",
                http_status=None,
                latency_ms=None,
            )
            if await self._db.transact(interrupt):
                settled.append((request_id, api_key_id))
        return settled


def _row(entry: Entry, usage: Usage, *, status: Status, reserved_micros: int) -> dict[str, Any]:
    """The parameters of a new ``usage_records`` row."""
    return {
        "request_id": entry.request_id,
        "api_key_id": entry.api_key_id,
        "endpoint": entry.endpoint,
        "model": entry.model,
        "status": status,
        "http_status": None,
        "input_audio_ms": usage.input_audio_ms,
        "input_characters": usage.input_characters,
        "output_audio_ms": usage.output_audio_ms,
        "cost_micros": usage.cost_micros,
        "reserved_micros": reserved_micros,
        "latency_ms": None,
        "instance_id": entry.instance_id,
        "route": entry.route,
        "created_at": entry.created_at,
        "finished_at": None,
    }


def _usage_params(usage: Usage) -> dict[str, int]:
    return {
        "b_input_audio_ms": usage.input_audio_ms,
        "b_input_characters": usage.input_characters,
        "b_output_audio_ms": usage.output_audio_ms,
        "b_cost": usage.cost_micros,
    }


def _settle(
    connection: Connection,
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
    closed = connection.execute(
        _CLOSE,
        {
            "b_request": request_id,
            "b_route": route,
            "b_status": status,
            "b_http_status": http_status,
            "b_latency_ms": latency_ms,
            "b_finished_at": finished_at or int(time.time()),
            **_usage_params(usage),
        },
    )
    if closed.rowcount != 1:
        return False
    if stored_key_id is not None:  # bootstrap and anonymous callers have no key row
        connection.execute(
            _SPEND,
            {"b_key": stored_key_id, "b_reserved": reserved_micros, "b_cost": usage.cost_micros},
        )
    return True


def _correct_interrupted(
    connection: Connection,
    request_id: str,
    stored_key_id: str | None,
    usage: Usage,
    record: dict[str, Any],
) -> None:
    """Bill a row the reaper closed as ``interrupted`` (cost 0, reservation already released)
    for what it really delivered. Only once: the row is no longer ``interrupted`` after."""
    corrected = connection.execute(
        _CORRECT,
        {
            "b_request": request_id,
            "b_status": record["status"],
            "b_http_status": record["http_status"],
            "b_latency_ms": record["latency_ms"],
            "b_finished_at": record["finished_at"],
            **_usage_params(usage),
        },
    )
    if corrected.rowcount == 1 and stored_key_id is not None:
        connection.execute(_ADD_SPEND, {"b_key": stored_key_id, "b_cost": usage.cost_micros})

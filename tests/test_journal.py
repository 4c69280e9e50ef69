"""The ledger journal, in process: writes the database refused are replayed once and only once.

"Down" is a PostgreSQL URL on a port nothing listens on (refused at once); "up" is a SQLite
file. Both ledgers share one journal, as a replica's ledger does before and after an outage.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from conftest import free_port

from voxgate.errors import DatabaseUnavailable
from voxgate.storage.db import Database
from voxgate.storage.journal import Journal
from voxgate.storage.keys import KeyStore
from voxgate.storage.usage import Entry, Ledger, Usage

COST = 1_500
USAGE = Usage(input_characters=100, output_audio_ms=5_000, cost_micros=COST)
Scenario = Callable[[Ledger, Ledger, Database, str], Awaitable[None]]


def run(tmp_path: Path, scenario: Scenario) -> None:
    async def main() -> None:
        journal = Journal(tmp_path / "journal" / "ledger.jsonl")
        up_db = Database(f"sqlite:///{tmp_path / 'voxgate.db'}")
        down_db = Database(f"postgresql://postgres@127.0.0.1:{free_port()}/none")
        try:
            await up_db.migrate()
            key, _ = await KeyStore(up_db).create("journal", budget_micros=1_000_000)
            await scenario(
                Ledger(up_db, "one", journal), Ledger(down_db, "one", journal), up_db, key.id
            )
        finally:
            await up_db.close()
            await down_db.close()

    asyncio.run(main())


def entry(key_id: str, request_id: str = "req_journal") -> Entry:
    return Entry(request_id, key_id, "audio.speech", "tts-1", "one", 0, budgeted=True)


async def money(db: Database, key_id: str) -> tuple[int, int]:
    stored = await KeyStore(db).get(key_id)
    assert stored is not None
    return stored.spent_micros, stored.reserved_micros


async def row_of(ledger: Ledger, request_id: str) -> tuple[str, int]:
    from sqlalchemy import select

    from voxgate.storage.tables import UsageRow

    async with ledger._db.sessions() as session:
        row = (
            await session.execute(select(UsageRow).where(UsageRow.request_id == request_id))
        ).scalar_one()
    return row.status, row.cost_micros


def test_a_settle_the_database_refused_lands_once_on_replay(tmp_path: Path) -> None:
    async def scenario(up: Ledger, down: Ledger, db: Database, key_id: str) -> None:
        assert await up.reserve(entry(key_id), Usage(cost_micros=COST))
        await down.settle(
            entry(key_id), COST, USAGE, status="succeeded", http_status=200, latency_ms=9
        )
        assert len(await up.journal.read()) == 1
        assert await row_of(up, "req_journal") == ("pending", COST)  # the estimate
        assert await up.replay() == 1
        assert await row_of(up, "req_journal") == ("succeeded", COST)
        assert await money(db, key_id) == (COST, 0)
        assert await up.journal.read() == []
        # Replaying the same record again (a crash between applying and dropping) is a no-op.
        await down.settle(
            entry(key_id), COST, USAGE, status="succeeded", http_status=200, latency_ms=9
        )
        assert await up.replay() == 1
        assert await money(db, key_id) == (COST, 0)

    run(tmp_path, scenario)


def test_replay_corrects_a_row_the_reaper_closed_first(tmp_path: Path) -> None:
    """The replica restarted (or another reaped it) before the journal was replayed: the row
    says interrupted at cost 0; the replay bills what was delivered, once."""

    async def scenario(up: Ledger, down: Ledger, db: Database, key_id: str) -> None:
        assert await up.reserve(entry(key_id), Usage(cost_micros=COST))
        await down.settle(
            entry(key_id), COST, USAGE, status="succeeded", http_status=200, latency_ms=9
        )
        assert await up.reap(own=True) == [("req_journal", key_id)]
        assert await money(db, key_id) == (0, 0)
        assert await up.replay() == 1
        assert await row_of(up, "req_journal") == ("succeeded", COST)
        assert await money(db, key_id) == (COST, 0)
        await down.settle(
            entry(key_id), COST, USAGE, status="succeeded", http_status=200, latency_ms=9
        )
        await up.replay()
        assert await money(db, key_id) == (COST, 0)

    run(tmp_path, scenario)


def test_a_refused_request_row_is_written_once(tmp_path: Path) -> None:
    async def scenario(up: Ledger, down: Ledger, db: Database, key_id: str) -> None:
        for _ in range(2):  # the same row journaled twice: request ids are unique
            await down.record(entry(key_id), status="failed", http_status=503, latency_ms=1)
        assert await up.replay() == 2
        assert await row_of(up, "req_journal") == ("failed", 0)

    run(tmp_path, scenario)


def test_replay_keeps_what_the_database_still_refuses(tmp_path: Path) -> None:
    async def scenario(up: Ledger, down: Ledger, db: Database, key_id: str) -> None:
        await down.record(entry(key_id), status="failed", http_status=503, latency_ms=1)
        assert await down.replay() == 0
        assert len(await down.journal.read()) == 1
        with pytest.raises(DatabaseUnavailable):
            await down.heartbeat()

    run(tmp_path, scenario)


def test_a_torn_line_is_set_aside_not_dropped(tmp_path: Path) -> None:
    async def scenario(up: Ledger, down: Ledger, db: Database, key_id: str) -> None:
        await down.record(entry(key_id), status="failed", http_status=503, latency_ms=1)
        with open(up.journal.path, "a") as file:
            file.write('{"op": "settle", "entr')  # a write cut by a crash
        assert await up.replay() == 1
        rejected = Path(f"{up.journal.path}.rejected").read_text()
        assert rejected == '{"op": "settle", "entr\n'
        assert not up.journal.path.exists()

    run(tmp_path, scenario)


def test_journal_lines_are_json(tmp_path: Path) -> None:
    async def scenario(up: Ledger, down: Ledger, db: Database, key_id: str) -> None:
        await down.record(entry(key_id), status="failed", http_status=503, latency_ms=1)
        (line,) = up.journal.path.read_text().splitlines()
        assert json.loads(line)["entry"]["request_id"] == "req_journal"

    run(tmp_path, scenario)


def test_a_reservation_that_committed_unseen_is_closed_not_left_pending(tmp_path: Path) -> None:
    """The connection broke while the reservation committed: the request was answered 503 as
    if nothing was held, but its pending row exists. Writing the refusal's row closes that row
    and releases the money, rather than leaving it pending with the reservation held."""

    async def scenario(up: Ledger, down: Ledger, db: Database, key_id: str) -> None:
        assert await up.reserve(entry(key_id), Usage(cost_micros=COST))
        await down.record(
            entry(key_id),
            status="failed",
            http_status=503,
            latency_ms=1,
            maybe_reserved_micros=COST,
        )
        assert await up.replay() == 1
        assert await row_of(up, "req_journal") == ("failed", 0)
        assert await money(db, key_id) == (0, 0)

    run(tmp_path, scenario)

"""SQLite's writer thread, in process: every writing transaction of a process runs on one thread,
reads beside it, and a caller cancelled mid-transaction still learns how it ended."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Connection

from voxgate.storage.db import Database


def test_writes_share_one_thread_and_reads_do_not_wait_for_it(tmp_path: Path) -> None:
    async def run() -> tuple[set[int], int]:
        db = Database(f"sqlite:///{tmp_path / 'v.db'}")
        release = threading.Event()
        try:
            await db.transact(lambda c: c.execute(text("CREATE TABLE t (x INTEGER)")))

            def write(connection: Connection) -> int:
                release.wait(10)
                connection.execute(text("INSERT INTO t VALUES (1)"))
                return threading.get_ident()

            writers = [asyncio.ensure_future(db.transact(write)) for _ in range(8)]
            # The writer thread is held by the first write; a read still gets through.
            read = await db.transact(
                lambda c: c.execute(text("SELECT count(*) FROM t")).scalar_one(), writes=False
            )
            release.set()
            idents = set(await asyncio.gather(*writers))
            assert read == 0
            count = await db.transact(
                lambda c: c.execute(text("SELECT count(*) FROM t")).scalar_one(), writes=False
            )
            return idents, count
        finally:
            await db.close()

    idents, count = asyncio.run(run())
    assert len(idents) == 1
    assert count == 8


def test_a_cancelled_caller_still_gets_the_committed_result(tmp_path: Path) -> None:
    """As with ``run_in_thread``: the transaction ends, its result is returned, and the
    cancellation arrives at the caller's next await."""

    async def run() -> tuple[list[int], bool, int]:
        db = Database(f"sqlite:///{tmp_path / 'v.db'}")
        started, release = threading.Event(), threading.Event()
        seen: list[int] = []
        try:
            await db.transact(lambda c: c.execute(text("CREATE TABLE t (x INTEGER)")))

            def write(connection: Connection) -> int:
                started.set()
                release.wait(10)
                connection.execute(text("INSERT INTO t VALUES (1)"))
                return 42

            async def caller() -> None:
                seen.append(await db.transact(write))
                await asyncio.sleep(0)  # the cancellation lands here
                seen.append(-1)

            task = asyncio.ensure_future(caller())
            while not started.is_set():
                await asyncio.sleep(0.01)
            task.cancel()
            await asyncio.sleep(0)
            release.set()
            await asyncio.wait([task])
            count = await db.transact(
                lambda c: c.execute(text("SELECT count(*) FROM t")).scalar_one(), writes=False
            )
            return seen, task.cancelled(), count
        finally:
            await db.close()

    seen, cancelled, count = asyncio.run(run())
    assert seen == [42]
    assert cancelled
    assert count == 1

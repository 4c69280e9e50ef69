"""The ledger's cost per request, in process: key lookup, reservation, settle.

One metered request with a stored key runs ``KeyStore.find`` (authentication), ``Ledger.reserve``
(the budget hold and the pending row) and ``Ledger.settle`` (the row closed, the hold turned into
spend). This times exactly that cycle, ``--n`` times in a row and then ``--concurrency`` at a time,
on a fresh SQLite database (or ``--database-url``), and prints wall and CPU milliseconds per
cycle. CPU is the whole process's (``time.process_time``), so the worker threads that run the
database calls count too. It only uses those three public calls, so the same script measures an
older checkout (``PYTHONPATH=<old tree>``) for a side-by-side comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from voxgate.storage.db import Database
from voxgate.storage.journal import Journal
from voxgate.storage.keys import KeyStore, secret_digest
from voxgate.storage.usage import Entry, Ledger, Usage


async def cycle(keys: KeyStore, ledger: Ledger, digest: str) -> None:
    """What one stored-key request does to the database."""
    key = await keys.find(digest)
    assert key is not None and key.refusal() is None
    entry = Entry(
        request_id=f"req_{uuid.uuid4().hex}",
        api_key_id=key.id,
        endpoint="/v1/audio/speech",
        model="tts-1",
        instance_id=ledger.instance_id,
        created_at=int(time.time()),
        budgeted=True,
        route="fake:tts-1",
    )
    estimate = Usage(input_characters=20, cost_micros=300)
    assert await ledger.reserve(entry, estimate)
    await ledger.settle(
        entry, estimate.cost_micros, estimate, status="succeeded", http_status=200, latency_ms=1
    )


async def run(database_url: str, n: int, concurrency: int) -> dict[str, float]:
    db = Database(database_url)
    await db.migrate()
    keys = KeyStore(db)
    ledger = Ledger(db, "bench", Journal(Path(tempfile.mkdtemp()) / "journal.jsonl"))
    _key, secret = await keys.create("bench", budget_micros=10**12)
    digest = secret_digest(secret)
    for _ in range(20):  # warm-up: pools, statement caches
        await cycle(keys, ledger, digest)

    walls = []
    cpu0 = time.process_time()
    for _ in range(n):
        start = time.perf_counter()
        await cycle(keys, ledger, digest)
        walls.append(time.perf_counter() - start)
    cpu_c1 = (time.process_time() - cpu0) / n

    async def worker(count: int) -> None:
        for _ in range(count):
            await cycle(keys, ledger, digest)

    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    done = (n // concurrency) * concurrency
    wall_cc = time.perf_counter() - wall0
    cpu_cc = (time.process_time() - cpu0) / done
    stored = await keys.find(digest)
    assert stored is not None and stored.reserved_micros == 0
    assert stored.spent_micros == 300 * (20 + n + done)  # every cycle billed exactly once
    await db.close()
    return {
        "c1_p50_ms": statistics.median(walls) * 1000,
        "c1_cpu_ms": cpu_c1 * 1000,
        f"c{concurrency}_cycles_per_s": done / wall_cc,
        f"c{concurrency}_cpu_ms": cpu_cc * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    args = parser.parse_args()
    url = args.database_url or f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    result = asyncio.run(run(url, args.n, args.concurrency))
    print(json.dumps({name: round(value, 3) for name, value in result.items()}))


if __name__ == "__main__":
    main()

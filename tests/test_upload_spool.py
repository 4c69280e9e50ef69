"""The upload spool, in process: bytes back exactly as written, memory bounded per upload and
per process, disk writes gathered into few thread hops, and readers that never share a position.

Through real servers, ``test_upstream.py`` replays uploads in memory (small) and on disk
(``test_a_large_upload_is_replayed_from_disk_and_billed_on_its_real_length``, 5.7 MB) byte for
byte to every attempt; here the spool's own bounds are pinned, which no HTTP test can see.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import io
import os
from typing import Any

import pytest

from voxgate.api import deps
from voxgate.uploads import MemoryBudget, SpooledUpload, UploadSpool

KIB = 1024
MIB = 1024 * KIB


class _CountingSpool(UploadSpool):
    """Records the size of each write to its disk file (one thread hop each)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.writes: list[int] = []

    def _write(self, pieces: list[bytes]) -> None:
        self.writes.append(sum(len(piece) for piece in pieces))
        super()._write(pieces)


def _spool_of(data: bytes, piece: int = 64 * KIB, **options: Any) -> tuple[UploadSpool, list[int]]:
    """Data appended in body-sized pieces, as the parser does; the sizes of the disk writes."""

    async def run() -> _CountingSpool:
        spool = _CountingSpool(**options)
        for start in range(0, len(data), piece):
            await spool.append(data[start : start + piece])
        await spool.finish()
        return spool

    spool = asyncio.run(run())
    return spool, spool.writes


def _read_all(spool: UploadSpool) -> bytes:
    upload = SpooledUpload(spool, spool.size, "a.wav", "audio/wav")

    async def gather() -> bytes:
        return b"".join([chunk async for chunk in upload.chunks(300 * KIB)])

    return asyncio.run(gather())


def test_a_small_upload_stays_in_memory_and_gives_its_memory_back() -> None:
    budget = MemoryBudget(64 * MIB)
    data = os.urandom(50_000)
    spool, writes = _spool_of(data, budget=budget)
    assert not spool.on_disk and writes == []
    assert budget.held == len(data)
    assert _read_all(spool) == data
    spool.close()
    assert budget.held == 0


def test_a_large_upload_goes_to_disk_in_few_large_writes() -> None:
    """Starlette's spool wrote each 64 KiB body piece past 1 MiB in a thread hop of its own
    (65 for this upload); the spool writes what it held in memory when it rolls over, then
    gathers the rest into writes of at least 1 MiB."""
    budget = MemoryBudget(64 * MIB)
    data = os.urandom(5 * MIB + 12_345)
    spool, writes = _spool_of(data, budget=budget)
    assert spool.on_disk
    assert budget.held == 0  # what it held before it rolled over is given back
    assert writes == [4 * MIB + 64 * KIB, len(data) - 4 * MIB - 64 * KIB]
    assert hashlib.sha256(_read_all(spool)).digest() == hashlib.sha256(data).digest()
    spool.close()


def test_memory_is_bounded_across_uploads_by_the_budget() -> None:
    budget = MemoryBudget(3 * MIB)
    first, _ = _spool_of(os.urandom(2 * MIB), budget=budget)
    second_data = os.urandom(2 * MIB)
    second, _ = _spool_of(second_data, budget=budget)  # does not fit beside the first
    assert not first.on_disk and second.on_disk
    assert budget.held == 2 * MIB
    assert _read_all(second) == second_data
    first.close()
    third, _ = _spool_of(os.urandom(2 * MIB), budget=budget)
    assert not third.on_disk  # the first one's memory came back
    for spool in (second, third):
        spool.close()
    assert budget.held == 0


@pytest.mark.parametrize("size", [50_000, 5 * MIB])
def test_readers_keep_positions_of_their_own(size: int) -> None:
    data = os.urandom(size)
    spool, _ = _spool_of(data)
    upload = SpooledUpload(spool, spool.size, "a.wav", "audio/wav")
    first, second = upload.reader(), upload.reader()
    assert first.read(1000) == data[:1000]
    assert second.read(10) == data[:10]
    first.seek(-10, io.SEEK_END)
    assert first.read() == data[-10:]
    spool.seek(size // 2)  # the spool is a file of its own too (the local decoder's)
    assert spool.read(5) == data[size // 2 : size // 2 + 5]
    assert second.read(5) == data[10:15]
    spool.close()


def test_request_dependencies_run_on_the_event_loop() -> None:
    """FastAPI runs a plain ``def`` dependency in a worker thread: one thread hop each, on
    every request. The request's own dependencies must not be plain functions."""
    for name in ("get_services", "get_caller", "get_ticket"):
        assert inspect.iscoroutinefunction(getattr(deps, name)), name

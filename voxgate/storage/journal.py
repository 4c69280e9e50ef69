"""Ledger writes the database could not take, kept on local disk until it can.

One JSON object per line, appended and fsync'd before the request's cleanup returns, so a
settle that failed survives a crash or restart of this replica. ``Ledger.replay`` applies the
lines in order once the database answers again and only then drops them from the file; applying
is idempotent, so a line applied twice (a crash mid-replay) changes nothing the second time.
A line that cannot be parsed (a write cut by a crash) is moved to ``<file>.rejected`` and logged,
never dropped silently.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

from voxgate.concurrency import run_in_thread

log = logging.getLogger("voxgate.ledger")


class Journal:
    """An append-only JSON-lines file; one per (database, replica)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()  # appends and the rewrite after a replay never interleave

    async def append(self, record: dict[str, Any]) -> None:
        """Write one record and fsync it. Raises OSError if the disk refuses."""
        line = json.dumps(record, separators=(",", ":")) + "\n"
        async with self._lock:
            await run_in_thread(self._append, line)

    async def read(self) -> list[dict[str, Any]]:
        """Every record now in the file, oldest first."""
        async with self._lock:
            return await run_in_thread(self._read)

    async def drop(self, count: int) -> None:
        """Remove the first ``count`` records (those just applied), keeping any added since."""
        if count:
            async with self._lock:
                await run_in_thread(self._drop, count)

    def _append(self, line: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(line)
            file.flush()
            os.fsync(file.fileno())

    def _read(self) -> list[dict[str, Any]]:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        records, broken = [], []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                broken.append(line)
        if broken:
            with open(f"{self.path}.rejected", "a", encoding="utf-8") as file:
                file.writelines(f"{line}\n" for line in broken)
            log.error(
                "%d unreadable line(s) in the ledger journal moved to %s.rejected",
                len(broken),
                self.path,
            )
            self._rewrite(records)
        return records

    def _drop(self, count: int) -> None:
        self._rewrite(self._read()[count:])

    def _rewrite(self, records: list[dict[str, Any]]) -> None:
        """Replace the file atomically (write, fsync, rename), or remove it when empty."""
        if not records:
            self.path.unlink(missing_ok=True)
            return
        temporary = self.path.with_suffix(".tmp")
        with open(temporary, "w", encoding="utf-8") as file:
            file.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)

"""A spooled upload, read many times over without ever being held whole in memory past a bound.

The multipart parser (``api/forms.py``) writes the file into an ``UploadSpool`` once, as it
streams in (its size capped while it arrives by ``BodyGuardMiddleware``). The spool keeps an
upload of up to ``MEMORY_PER_UPLOAD`` in memory as long as all uploads held in memory by this
process stay under ``MEMORY_BUDGET``; anything else goes to an anonymous temporary file, in
writes of ``WRITE_BATCH`` bytes, one worker-thread hop each (Starlette's spool hopped once per
body chunk, 64 KiB or less, once it had rolled to disk past 1 MiB).

``SpooledUpload`` then reads it by position only (``os.pread`` on the disk file, a slice of the
memory buffer), so any number of readers (the duration measurement, each upstream attempt, the
local decoder) go over it at once without sharing a file offset, and every attempt is sent the
very same bytes.
"""

from __future__ import annotations

import bisect
import io
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any, BinaryIO, cast

from voxgate.concurrency import run_in_thread

# One thread hop per MiB read from disk (a 5 MB upload: five); an upload in memory goes out in
# pieces of this size without any.
CHUNK_BYTES = 1024 * 1024
#: The largest upload kept in memory; a larger one is on disk from the moment it grows past it.
MEMORY_PER_UPLOAD = 4 * 1024 * 1024
#: What all uploads in memory may hold together in this process (32 concurrent 2 MB uploads);
#: past it, new bytes go to disk, so memory stays bounded whatever the concurrency.
MEMORY_BUDGET = 64 * 1024 * 1024
#: Bytes gathered before one write to the disk file (one thread hop).
WRITE_BATCH = 1024 * 1024


class MemoryBudget:
    """Bytes of uploads held in memory, process-wide (taken on the event loop, given back from
    wherever a spool is closed, hence the lock)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        with self._lock:
            if self.held + size > self.limit:
                return False
            self.held += size
            return True

    def give_back(self, size: int) -> None:
        with self._lock:
            self.held -= size


BUDGET = MemoryBudget(MEMORY_BUDGET)


class _PositionalFile(io.RawIOBase):
    """A read-only file object over ``read_at`` and ``size``, with a position of its own."""

    size: int
    _pos = 0

    def read_at(self, offset: int, size: int) -> bytes:
        raise NotImplementedError

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        data = self.read_at(self._pos, len(buffer))
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self.size - self._pos
        data = self.read_at(self._pos, size)
        self._pos += len(data)
        return data


class UploadSpool(_PositionalFile):
    """Where one uploaded file is spooled: memory while it is small and the budget allows, else
    an anonymous temporary file. Written only through ``append`` and ``finish`` (async, on the
    event loop); then read by position (``read_at``) or as a file of its own (PyAV, the local
    decoder: blocking reads, so they run in threads as all decoding does)."""

    def __init__(
        self,
        budget: MemoryBudget = BUDGET,
        *,
        memory_limit: int = MEMORY_PER_UPLOAD,
        write_batch: int = WRITE_BATCH,
    ) -> None:
        super().__init__()
        self._budget = budget
        self._memory_limit = memory_limit
        self._write_batch = write_batch
        # In memory: the pieces as they came, never joined: growing one buffer copied it over
        # and over, and a fresh 2 MB block costs 512 page faults on every request.
        self._memory: list[bytes] | None = []
        self._starts: list[int] = []  # where each piece begins in the upload
        self._held = 0  # bytes of the budget this spool holds
        self._disk: BinaryIO | None = None
        self._pending: list[bytes] = []  # pieces for the disk file, not yet written
        self._pending_size = 0
        self.size = 0

    @classmethod
    def holding(cls, data: bytes) -> UploadSpool:
        """A spool of bytes already in memory (kept as they are, no copy), outside the shared
        budget, which bounds what clients send: a piece of a split upload, the warm-up clip."""
        spool = cls(MemoryBudget(len(data)))
        spool._memory, spool._starts, spool.size = [data], [0], len(data)
        return spool

    @property
    def on_disk(self) -> bool:
        return self._memory is None

    async def append(self, data: bytes) -> None:
        """Add the next bytes of the upload."""
        if not data:
            return
        data = bytes(data)
        self.size += len(data)
        if self._memory is not None:
            if self.size <= self._memory_limit and self._budget.take(len(data)):
                self._held += len(data)
                self._starts.append(self.size - len(data))
                self._memory.append(data)
                return
            # Rolls over: what was in memory and these bytes go to disk in one hop.
            self._pending, self._pending_size = self._memory, self.size - len(data)
            self._memory, self._starts = None, []
            self._budget.give_back(self._held)
            self._held = 0
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= self._write_batch:
            await self._flush()

    async def finish(self) -> None:
        """The upload is complete: whatever is still gathered is written out."""
        if self._pending:
            await self._flush()

    async def _flush(self) -> None:
        pending, self._pending, self._pending_size = self._pending, [], 0
        await run_in_thread(self._write, pending)

    def _write(self, pieces: list[bytes]) -> None:
        if self._disk is None:  # closed by close(); nothing else moves its position
            self._disk = cast(BinaryIO, tempfile.TemporaryFile())  # noqa: SIM115
        self._disk.writelines(pieces)
        self._disk.flush()

    def read_at(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset`` (blocking on a disk file: call in a thread)."""
        size = max(0, min(size, self.size - offset))
        if size == 0:
            return b""
        if self._memory is not None:
            return b"".join(self._pieces(offset, size))
        assert self._disk is not None and not self._pending, "finish() first"
        return os.pread(self._disk.fileno(), size, offset)

    def _pieces(self, offset: int, size: int) -> Iterator[bytes]:
        """The memory pieces covering ``size`` bytes from ``offset`` (whole ones uncopied)."""
        assert self._memory is not None
        end = offset + size
        index = bisect.bisect_right(self._starts, offset) - 1
        while offset < end and index < len(self._memory):
            piece, start = self._memory[index], self._starts[index]
            if offset == start and end >= start + len(piece):
                yield piece
            else:
                with memoryview(piece) as view:
                    yield bytes(view[offset - start : end - start])
            offset = start + len(piece)
            index += 1

    def pieces(self) -> Iterator[bytes] | None:
        """In memory: the whole upload as it was received, piece by piece (no copy); on disk:
        None (read it with ``read_at`` in a thread)."""
        if self._memory is None:
            return None
        return iter(list(self._memory))

    def close(self) -> None:
        if self._memory is not None:
            self._memory, self._starts = [], []
            self._budget.give_back(self._held)
            self._held = 0
        if self._disk is not None:
            self._disk.close()
            self._disk = None
        super().close()

    async def aclose(self) -> None:
        """``close``; a disk file is closed in a worker thread (it may have to free its pages)."""
        if self._disk is not None:
            await run_in_thread(self.close)
        else:
            self.close()


class SpooledUpload:
    """An uploaded file: its spool, name and type."""

    def __init__(self, file: object, size: int, filename: str, content_type: str) -> None:
        if not isinstance(file, UploadSpool):
            raise TypeError("an upload is spooled by api/forms.py into an UploadSpool")
        self._spool = file
        self.size = size
        self.filename = filename
        self.content_type = content_type

    @classmethod
    def of_bytes(cls, data: bytes, filename: str, content_type: str) -> SpooledUpload:
        """Bytes voxgate made itself, as an upload (see ``UploadSpool.holding``)."""
        return cls(UploadSpool.holding(data), len(data), filename, content_type)

    @property
    def on_disk(self) -> bool:
        return self._spool.on_disk

    def read_at(self, offset: int, size: int) -> bytes:
        return self._spool.read_at(offset, size)

    async def chunks(self, chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
        """The whole upload: from memory as the pieces it arrived in, from disk ``chunk_bytes``
        at a time, each read in a worker thread."""
        pieces = self._spool.pieces()
        if pieces is not None:
            for piece in pieces:
                yield piece
            return
        for offset in range(0, self.size, chunk_bytes):
            yield await run_in_thread(self.read_at, offset, chunk_bytes)

    def reader(self) -> BinaryIO:
        """A file object of its own (own position) for PyAV and the local decoder."""
        return cast(BinaryIO, UploadReader(self))


class UploadReader(_PositionalFile):
    def __init__(self, upload: SpooledUpload) -> None:
        super().__init__()
        self._upload = upload
        self.size = upload.size

    def read_at(self, offset: int, size: int) -> bytes:
        return self._upload.read_at(offset, size)

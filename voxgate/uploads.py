"""A spooled upload, read many times over without ever being held whole in memory.

The multipart parser spools the file once as it streams in (under ``VOXGATE_MAX_UPLOAD_MB``,
enforced while it arrives by ``BodyGuardMiddleware``): up to 1 MiB in memory, past that on
disk. ``SpooledUpload`` then reads it by position only (``os.pread`` on the disk file, a slice
of the memory buffer), so any number of readers (the duration measurement, each upstream
attempt, the local decoder) go over it at once without sharing a file offset, and every
attempt is sent the very same bytes.
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from typing import Any, BinaryIO, cast

from voxgate.concurrency import run_in_thread

# One thread hop per MiB read from disk (a 2 MB upload: two), and an upload kept in memory
# (at most 1 MiB) goes out in one piece.
CHUNK_BYTES = 1024 * 1024


class SpooledUpload:
    def __init__(self, file: Any, size: int, filename: str, content_type: str) -> None:
        self._file = file
        self.size = size
        self.filename = filename
        self.content_type = content_type

    @property
    def on_disk(self) -> bool:
        return bool(getattr(self._file, "_rolled", True))

    def read_at(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset`` (blocking on a disk file: call in a thread)."""
        size = max(0, min(size, self.size - offset))
        if size == 0:
            return b""
        inner = getattr(self._file, "_file", self._file)
        if isinstance(inner, io.BytesIO):
            with inner.getbuffer() as view:
                return bytes(view[offset : offset + size])
        return os.pread(inner.fileno(), size, offset)

    async def chunks(self, chunk_bytes: int = CHUNK_BYTES) -> AsyncIterator[bytes]:
        """The whole upload, chunk by chunk; disk reads run in a worker thread."""
        disk = self.on_disk
        for offset in range(0, self.size, chunk_bytes):
            if disk:
                yield await run_in_thread(self.read_at, offset, chunk_bytes)
            else:
                yield self.read_at(offset, chunk_bytes)

    def reader(self) -> BinaryIO:
        """A file object of its own (own position) for PyAV and the local decoder."""
        return cast(BinaryIO, UploadReader(self))


class UploadReader(io.RawIOBase):
    def __init__(self, upload: SpooledUpload) -> None:
        super().__init__()
        self._upload = upload
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._upload.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        data = self._upload.read_at(self._pos, len(buffer))
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._upload.size - self._pos
        data = self._upload.read_at(self._pos, size)
        self._pos += len(data)
        return data

"""A multipart/form-data body streamed from a spooled upload, with its exact length.

Each attempt gets a fresh body over the same spool, so a retry or the next target receives the
upload byte for byte: from memory as the pieces it arrived in, or from disk a MiB at a time,
never copied whole.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence

from voxgate.uploads import CHUNK_BYTES, SpooledUpload


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class MultipartBody:
    """``fields`` (name, value) in the client's order, then the file part."""

    def __init__(self, fields: Sequence[tuple[str, str]], upload: SpooledUpload) -> None:
        self.boundary = secrets.token_hex(16)
        head = bytearray()
        for name, value in fields:
            head += (
                f"--{self.boundary}\r\n"
                f'Content-Disposition: form-data; name="{_quote(name)}"\r\n\r\n'
            ).encode()
            head += value.encode() + b"\r\n"
        filename = _quote(upload.filename or "audio")
        head += (
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: {upload.content_type or 'application/octet-stream'}\r\n\r\n"
        ).encode()
        self._head = bytes(head)
        self._tail = f"\r\n--{self.boundary}--\r\n".encode()
        self._upload = upload

    @property
    def headers(self) -> dict[str, str]:
        length = len(self._head) + self._upload.size + len(self._tail)
        return {
            "content-type": f"multipart/form-data; boundary={self.boundary}",
            "content-length": str(length),
        }

    async def stream(self) -> AsyncIterator[bytes]:
        if not self._upload.on_disk and self._upload.size <= CHUNK_BYTES:
            # A small upload in memory: one write instead of three.
            yield self._head + self._upload.read_at(0, self._upload.size) + self._tail
            return
        yield self._head
        async for chunk in self._upload.chunks():
            yield chunk
        yield self._tail

"""Multipart forms read strictly: a broken part is named in the error, text parts are UTF-8.

Starlette's parser decodes a text part that is not valid UTF-8 as latin-1, so the handler would
never see the bad bytes, and it reports its limits (part size, file count) without saying which
part broke them. OpenAI names the field in ``param``; so does this parser. A file goes into an
``UploadSpool`` (``voxgate/uploads.py``): memory up to a bound, else disk in large writes, so an
upload never sits whole in memory past that bound and is never written 64 KiB per thread hop.
"""

from __future__ import annotations

from contextlib import aclosing
from typing import BinaryIO, cast

from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from voxgate.concurrency import run_in_thread
from voxgate.errors import InvalidRequest
from voxgate.uploads import UploadSpool

MAX_TEXT_PART_BYTES = 1024 * 1024


class SpooledUploadFile(UploadFile):
    """Starlette's ``UploadFile`` over an ``UploadSpool``: the parser's writes are gathered by
    the spool, so none of them costs a thread hop of its own."""

    def __init__(self, upload: UploadFile) -> None:
        self.spool = UploadSpool()
        file = cast(BinaryIO, self.spool)  # a file object (read, seek) as UploadFile wants
        super().__init__(file, size=0, filename=upload.filename, headers=upload.headers)

    async def write(self, data: bytes) -> None:
        await self.spool.append(data)
        self.size = self.spool.size

    async def seek(self, offset: int) -> None:
        await self.spool.finish()  # the parser seeks to 0 when the part is complete
        self.spool.seek(offset)

    async def read(self, size: int = -1) -> bytes:
        if self.spool.on_disk:
            return await run_in_thread(self.spool.read, size)
        return self.spool.read(size)

    async def close(self) -> None:
        await self.spool.aclose()


class _StrictParser(MultiPartParser):
    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        try:
            super().on_part_data(data, start, end)
        except MultiPartException:
            name = self._current_part.field_name
            raise InvalidRequest(
                f"'{name}' is longer than {self.max_part_size // 1024} KiB.", param=name or None
            ) from None

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            try:
                part.data.decode(self._charset)
            except UnicodeDecodeError:
                raise InvalidRequest(
                    f"'{part.field_name}' is not valid {self._charset} text.",
                    param=part.field_name or None,
                ) from None
        super().on_part_end()

    def on_headers_finished(self) -> None:
        try:
            super().on_headers_finished()
        except MultiPartException as exc:
            raise InvalidRequest(exc.message, param=self._current_part.field_name or None) from None
        part = self._current_part
        if part.file is not None:
            # Starlette's own spool (a SpooledTemporaryFile, still empty) is replaced.
            self._files_to_close_on_error.pop().close()
            part.file = SpooledUploadFile(part.file)
            self._files_to_close_on_error.append(part.file.spool)  # type: ignore[arg-type]


async def read_form(request: Request, *, max_files: int, max_fields: int) -> FormData:
    """The request's form. Multipart is parsed strictly; a URL-encoded form (which cannot carry
    a file) as Starlette does; any other body as an empty form, so that the first required
    field is what the client is told is missing."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
        try:
            return await request.form(max_files=max_files, max_fields=max_fields)
        except HTTPException as exc:
            raise InvalidRequest(f"The form is malformed: {exc.detail}") from None
    async with aclosing(request.stream()) as stream:
        parser = _StrictParser(
            request.headers,
            stream,
            max_files=max_files,
            max_fields=max_fields,
            max_part_size=MAX_TEXT_PART_BYTES,
        )
        try:
            return await parser.parse()
        except MultiPartException as exc:
            raise InvalidRequest(f"The multipart body is malformed: {exc.message}") from None

"""Multipart forms read strictly: a broken part is named in the error, text parts are UTF-8.

Starlette's parser decodes a text part that is not valid UTF-8 as latin-1, so the handler would
never see the bad bytes, and it reports its limits (part size, file count) without saying which
part broke them. OpenAI names the field in ``param``; so does this parser. Files are still
spooled to disk past 1 MB by Starlette, so uploads never sit whole in memory.
"""

from __future__ import annotations

from contextlib import aclosing

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from voxgate.errors import InvalidRequest

MAX_TEXT_PART_BYTES = 1024 * 1024


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

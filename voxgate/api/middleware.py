"""Pure ASGI middleware (no response buffering, so streams stay streams)."""

from __future__ import annotations

import logging
import uuid

from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from voxgate.api.errors import error_response
from voxgate.errors import InternalError, PayloadTooLarge

log = logging.getLogger("voxgate.api")

UPLOAD_PATHS = ("/v1/audio/transcriptions", "/v1/audio/translations")


class RequestIdMiddleware:
    """Give every request an id (``x-request-id`` on every response, in every error message).

    Being outermost, it also answers anything unexpected that escaped the handlers with a 500
    envelope that still carries the id (unless the response had already begun).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"req_{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = request_id

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            if started:
                raise
        except Exception:
            if started:
                raise
            log.exception("unhandled error (request id %s)", request_id)
            error = InternalError("The server had an error while processing your request.")
            await error_response(Request(scope), error)(scope, receive, send_with_id)


class UploadLimitMiddleware:
    """Refuse upload bodies over the limit without reading them into memory.

    A declared ``Content-Length`` over the limit is answered 413 before any byte is read; a
    chunked body is counted as it streams and the request fails with 413 at the first byte over.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") not in UPLOAD_PATHS:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise PayloadTooLarge(self._message(), param="file")
            return message

        await self.app(scope, counting_receive, send)

    def _message(self) -> str:
        return (
            f"Maximum content size limit ({self.max_bytes}) exceeded. Split or compress the audio."
        )

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(Request(scope), PayloadTooLarge(self._message(), param="file"))
        response.headers["connection"] = "close"
        await response(scope, receive, send)

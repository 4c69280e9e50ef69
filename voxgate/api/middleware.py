"""Pure ASGI middleware (no response buffering, so streams stay streams)."""

from __future__ import annotations

import logging
import re
import time
import uuid

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from voxgate.api.errors import error_response
from voxgate.catalog import UPLOAD_ENDPOINTS
from voxgate.errors import InternalError, PayloadTooLarge, RequestTimeout, VoxgateError

log = logging.getLogger("voxgate.api")

UPLOAD_PATHS: tuple[str, ...] = UPLOAD_ENDPOINTS
#: What a client's own request id may look like to be echoed back (OpenAI allows 512 ASCII).
CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIdMiddleware:
    """Give every request an id (``x-request-id`` on every response, in every error message).

    The id is always the server's own (``req_`` + 128 random bits): it keys the ledger, so a
    client cannot choose, collide with or inject into it. A client's ``x-client-request-id``
    (OpenAI's header) is echoed back and logged only if it is 1 to 128 characters of
    ``[A-Za-z0-9._:-]``; anything else is dropped.

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
        extra = [(b"x-request-id", request_id.encode())]
        client_id = _client_request_id(scope)
        if client_id is not None:
            extra.append((b"x-client-request-id", client_id.encode()))
            log.debug("request %s is client request %s", request_id, client_id)

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *extra]
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


def _client_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-client-request-id":
            text = value.decode("latin-1")
            return text if CLIENT_REQUEST_ID.fullmatch(text) else None
    return None


class BodyGuardMiddleware:
    """Bound every request body in size and time while it streams, before a handler sees it.

    Uploads (transcriptions, translations) may be ``max_upload_bytes``; any other body (JSON)
    ``max_json_bytes``. A declared ``Content-Length`` over the limit is answered 413 before any
    byte is read; otherwise bytes are counted as they arrive and the request fails with 413 at
    the first byte over. A body that sends nothing for ``idle_timeout_s``, or is still arriving
    after ``total_timeout_s``, fails with 408. Both close the connection, since the rest of the
    body is never read. A handler may turn the error raised by ``receive`` into some other
    response (FastAPI reports a failed JSON read as 400), so the guard's own error replaces
    whatever the application answers once it has fired.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_upload_bytes: int,
        max_json_bytes: int,
        idle_timeout_s: float,
        total_timeout_s: float,
    ) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        self.max_json_bytes = max_json_bytes
        self.idle_timeout_s = idle_timeout_s
        self.total_timeout_s = total_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["path"] in UPLOAD_PATHS
        limit = self.max_upload_bytes if upload else self.max_json_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._answer(scope, receive, send, self._too_large(limit, upload))
            return
        deadline = time.monotonic() + self.total_timeout_s
        received = 0
        body_done = False
        failure: VoxgateError | None = None
        started = False

        async def guarded_receive() -> Message:
            nonlocal received, body_done, failure
            if body_done or failure is not None:
                return await receive()  # e.g. waiting for a disconnect after the body
            timeout_s = min(self.idle_timeout_s, deadline - time.monotonic())
            with anyio.move_on_after(max(timeout_s, 0)) as waited:
                message = await receive()
            if waited.cancelled_caught:
                failure = RequestTimeout(
                    "The request body arrived too slowly and was cut off. Send it faster."
                )
                raise failure
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    failure = self._too_large(limit, upload)
                    raise failure
                body_done = not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if failure is not None and not started:
                return  # the guard's own error is sent below instead
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except VoxgateError as exc:
            if exc is not failure or started:
                raise
        if failure is not None and not started:
            await self._answer(scope, receive, send, failure)

    def _too_large(self, limit: int, upload: bool) -> PayloadTooLarge:
        if upload:
            return PayloadTooLarge(
                f"Maximum content size limit ({limit}) exceeded. Split or compress the audio.",
                param="file",
            )
        return PayloadTooLarge(f"The request body is larger than {limit} bytes.")

    async def _answer(self, scope: Scope, receive: Receive, send: Send, exc: VoxgateError) -> None:
        response = error_response(Request(scope), exc)
        response.headers["connection"] = "close"
        await response(scope, receive, send)

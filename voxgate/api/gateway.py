"""Authentication and metering around every protected request (pure ASGI, streams untouched).

Auth runs before any body is read, so a caller without a valid key gets 401 whatever it sends.
Only ``POST`` to an audio endpoint's exact path is metered: a wrong method (405), a trailing
slash or any other unknown path (404) costs nothing, writes no ledger row and uses no
requests-per-minute allowance. The admin key is refused on /v1 outside /v1/organization, so it
can never be served as an anonymous, unmetered caller.

On the audio endpoints a request is charged its requests-per-minute before its body is read,
and takes its key's concurrency slot once the whole body has arrived (as the handler reads its
last part, before any work on it), so a slow upload holds no slot while
``BodyGuardMiddleware`` waits to cut it off (``VOXGATE_BODY_IDLE_TIMEOUT_S`` /
``VOXGATE_BODY_TIMEOUT_S``). A refused slot answers 429 in place of whatever the handler made
of the failed read. The ``x-ratelimit-*`` headers are added to the response, and the request's
ticket is finished after the last byte was sent, the client left, or the handler failed. The
caller's key is the request's ``QUEUE_PARTY``, whose turn the engine queues take.
"""

from __future__ import annotations

import asyncio

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from voxgate.api.errors import error_response
from voxgate.catalog import ENDPOINT_FEATURES, Endpoint
from voxgate.concurrency import QUEUE_PARTY
from voxgate.errors import AuthenticationFailed, PermissionDenied, VoxgateError
from voxgate.services.container import Services
from voxgate.services.keys import Caller
from voxgate.services.metering import Outcome, Ticket

_METERED: dict[str, Endpoint] = {endpoint: endpoint for endpoint in ENDPOINT_FEATURES}


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(("/v1/", "/admin")):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        # Exact path and method only: the app serves no redirects, so nothing else can reach
        # an audio handler.
        endpoint = _METERED.get(path) if scope["method"] == "POST" else None
        try:
            caller = await self._authorize(request, path)
            scope["state"]["caller"] = caller
            ticket = None
            if endpoint is not None:
                request_id = scope["state"]["request_id"]
                ticket = await self.services.meter.admit(caller, endpoint, request_id)
        except VoxgateError as exc:
            response = error_response(request, exc)
            await response(scope, receive, send)
            return
        party = QUEUE_PARTY.set(caller.key_id or "anonymous")
        try:
            if ticket is None:
                await self.app(scope, receive, send)
            else:
                scope["state"]["ticket"] = ticket
                await self._metered(ticket, scope, receive, send)
        finally:
            QUEUE_PARTY.reset(party)

    async def _authorize(self, request: Request, path: str) -> Caller:
        auth = self.services.auth
        caller = await auth.authenticate(request.headers.get("authorization"))
        if path.startswith("/admin") and not caller.admin:
            if self.services.settings.admin_key is None:
                raise PermissionDenied("The admin API is off: set VOXGATE_ADMIN_KEY to use it.")
            raise AuthenticationFailed("The admin API needs the admin key (VOXGATE_ADMIN_KEY).")
        if caller.admin and path.startswith("/v1/") and not path.startswith("/v1/organization/"):
            raise PermissionDenied(
                "The admin key (VOXGATE_ADMIN_KEY) is only for /admin and /v1/organization; "
                "call /v1/audio and /v1/models with an API key (create one under /admin/keys)."
            )
        if path.startswith("/v1/organization/") and not (caller.admin or caller.key):
            raise AuthenticationFailed(
                "Usage and costs need the admin key, or an API key to see its own usage."
            )
        return caller

    async def _metered(self, ticket: Ticket, scope: Scope, receive: Receive, send: Send) -> None:
        status: int | None = None
        completed = False
        body_received = False
        refused: VoxgateError | None = None  # the slot, refused once the body was in
        answering = False  # sending the refusal ourselves

        async def receive_admitted() -> Message:
            nonlocal body_received, refused
            message = await receive()
            if message["type"] == "http.request" and not body_received:
                body_received = not message.get("more_body", False)
                if body_received:
                    try:
                        await ticket.take_slot()
                    except VoxgateError as exc:
                        refused = exc
                        raise
            return message

        async def send_metered(message: Message) -> None:
            nonlocal status, completed
            if refused is not None and not answering:
                return  # what the handler made of the refused read: the refusal goes instead
            if message["type"] == "http.response.start":
                status = message["status"]
                extra = [(k.encode(), v.encode()) for k, v in ticket.headers().items()]
                message["headers"] = [*message.get("headers", []), *extra]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                completed = True
                # Free the slot before the client sees the end, or its next request on the
                # same connection can arrive while the slot still looks taken. Best effort:
                # it never raises, so it cannot cut the response it precedes.
                await ticket.release_slot()
                if status is not None and status >= 400:
                    # An error's row is written before its last byte, so a replica killed just
                    # after answering still leaves it. (A success is settled once delivered.)
                    await ticket.finish_shielded(status, "completed")
            await send(message)

        outcome: Outcome = "failed"
        try:
            try:
                await self.app(scope, receive_admitted, send_metered)
            except Exception:
                if refused is None:
                    raise
            if refused is not None:
                answering = True
                await error_response(Request(scope), refused)(scope, receive, send_metered)
            outcome = "completed" if completed else "disconnected"
        except (ClientDisconnect, OSError):
            outcome = "disconnected"
            raise
        except asyncio.CancelledError:
            outcome = "completed" if completed else "cancelled"  # e.g. shutdown past its grace
            raise
        except Exception:
            status = status or 500  # answered by RequestIdMiddleware
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await ticket.finish_shielded(status, outcome)

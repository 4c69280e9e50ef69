"""One access-log line and the request metrics for every HTTP request (pure ASGI).

It sits just inside ``RequestIdMiddleware``, so it sees the request id, and outside the
gateway, so by the time the request is over the gateway has put the caller and the settled
ticket in ``scope["state"]``: the line and the metrics carry the key id (never the secret),
the model, the status, the duration, the time to the first body byte and what was billed.
Nothing from the request's body or headers is logged.
"""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import APIRouter, Request, Response
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from voxgate import metrics
from voxgate.api.deps import ServicesDep
from voxgate.errors import AuthenticationFailed, NotFound
from voxgate.money import micros_to_usd
from voxgate.services.keys import Caller
from voxgate.services.metering import Ticket

access_log = logging.getLogger("voxgate.access")

#: Status recorded when the client left before any response began (nginx's convention).
CLIENT_CLOSED = 499


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrived = time.monotonic()
        status: int | None = None
        first_byte: float | None = None

        async def observed_send(message: Message) -> None:
            nonlocal status, first_byte
            if message["type"] == "http.response.start":
                status = message["status"]
            elif (
                message["type"] == "http.response.body"
                and first_byte is None
                and (message.get("body") or not message.get("more_body"))
            ):
                first_byte = time.monotonic()
            await send(message)

        unanswered = CLIENT_CLOSED  # what a request that never got a response counts as
        try:
            await self.app(scope, receive, observed_send)
        except (ClientDisconnect, OSError, asyncio.CancelledError):
            raise  # the client left, or the server is stopping: still CLIENT_CLOSED
        except Exception:
            unanswered = 500  # RequestIdMiddleware answers it
            raise
        finally:
            _record(scope, status if status is not None else unanswered, arrived, first_byte)


def _record(scope: Scope, status: int, arrived: float, first_byte: float | None) -> None:
    state = scope.get("state", {})
    ticket: Ticket | None = state.get("ticket")
    caller: Caller | None = state.get("caller")
    endpoint = metrics.endpoint_label(scope.get("path", ""))
    model = ticket.entry.id if ticket is not None and ticket.entry is not None else ""
    duration_s = time.monotonic() - arrived
    ttfb_s = first_byte - arrived if first_byte is not None else None
    metrics.observe_request(endpoint, model, status, duration_s, ttfb_s)
    billed = ticket.billed if ticket is not None else None
    fields: dict[str, object] = {
        "request_id": state.get("request_id", ""),
        "key_id": caller.key_id if caller is not None else None,
        "method": scope.get("method", ""),
        "endpoint": endpoint,
        "model": model or None,
        "status": status,
        "duration_ms": round(duration_s * 1000, 1),
        "ttfb_ms": round(ttfb_s * 1000, 1) if ttfb_s is not None else None,
        "audio_seconds": (
            (billed.input_audio_ms + billed.output_audio_ms) / 1000 if billed else None
        ),
        "characters": billed.input_characters if billed else None,
        "cost_usd": micros_to_usd(billed.cost_micros) if billed else None,
    }
    access_log.info(_text(fields), extra={"access": fields})


def _text(fields: dict[str, object]) -> str:
    """The readable form: ``req_… POST /v1/audio/speech 200 tts-1 key=… 812.3ms …``."""
    parts = [
        str(fields["request_id"]),
        str(fields["method"]),
        str(fields["endpoint"]),
        str(fields["status"]),
    ]
    for name in ("model", "key_id", "duration_ms", "ttfb_ms", "audio_seconds", "characters"):
        value = fields[name]
        if value is not None and value != 0:
            parts.append(f"{name}={value}")
    if fields["cost_usd"] is not None:
        parts.append(f"cost_usd={fields['cost_usd']:.6f}")
    return " ".join(parts)


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: Request, services: ServicesDep) -> Response:
    """This process's metrics (``VOXGATE_METRICS``: off → 404, admin → the admin key only)."""
    mode = services.settings.metrics
    if mode == "off":
        raise NotFound("Not found: metrics are off on this server (VOXGATE_METRICS=on enables).")
    if mode == "admin":
        caller = await services.auth.authenticate(request.headers.get("authorization"))
        if not caller.admin:
            raise AuthenticationFailed("/metrics needs the admin key (VOXGATE_METRICS=admin).")
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)

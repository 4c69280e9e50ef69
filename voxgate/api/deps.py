"""What a handler may ask for: the services, the caller, and the request's metering ticket.

Authentication and admission happen in ``api/gateway.py`` before any handler runs; these only
hand over what it found. They are ``async def`` on purpose: FastAPI runs a plain ``def``
dependency in a worker thread, and a thread hop per dependency per request was a large part of a
pass-through request's latency (docs/benchmarks.md, "Where the time goes").
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Annotated, cast

from fastapi import Depends, Request

from voxgate.services.container import Services
from voxgate.services.keys import Caller
from voxgate.services.metering import Ticket


async def get_services(request: Request) -> Services:
    return cast(Services, request.app.state.services)


async def get_caller(request: Request) -> Caller:
    return cast(Caller, request.state.caller)


async def get_ticket(request: Request) -> Ticket:
    return cast(Ticket, request.state.ticket)


ServicesDep = Annotated[Services, Depends(get_services)]
CallerDep = Annotated[Caller, Depends(get_caller)]
TicketDep = Annotated[Ticket, Depends(get_ticket)]


async def request_cleanup() -> AsyncIterator[AsyncExitStack]:
    """An exit stack that closes after the response was sent, or on any failure or cancel.

    FastAPI exits request-scoped dependencies after ``response(...)`` returns or raises, so what
    is pushed here is released on every path: a handler error, a response cancelled before
    its first byte (a client that left), or a normal end. The engine slot must never wait for
    a generator to be garbage-collected.
    """
    async with AsyncExitStack() as stack:
        yield stack


CleanupDep = Annotated[AsyncExitStack, Depends(request_cleanup)]

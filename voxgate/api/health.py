"""Health endpoints (no auth). None of them reports exception text or other internals.

- ``GET /health/live``: 200 whenever the process answers HTTP. Restart the process only if this
  fails; a dependency outage never makes it fail.
- ``GET /health/ready``: 200 when this replica can serve: engines loaded, the database reachable,
  Redis reachable (if configured), and not shutting down; 503 otherwise, with which check
  failed. Route traffic by this. Busy or saturated engines do not make it fail.
- ``GET /health``: the engines' load (running and queued jobs); 200 once they are loaded, 503
  while they load or if loading failed. Kept for existing probes; it does not check the
  database or Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from voxgate.api.deps import ServicesDep

router = APIRouter()
PROBE_TIMEOUT_S = 3.0


@router.get("/health")
async def health(services: ServicesDep) -> JSONResponse:
    engines = {
        name: {"running": gate.running, "queued": gate.waiting}
        for name, gate in services.local.gates.items()
    }
    # Each upstream provider's breaker and recent error rate: informative only, since a
    # provider being down never stops the other targets (or the local engines) serving.
    providers = services.router.health()
    if services.ready:
        body: dict[str, object] = {"status": "ok", "engines": engines}
        if providers:
            body["providers"] = providers
        return JSONResponse(body)
    if services.startup_failed:
        return JSONResponse({"status": "failed"}, status_code=503)
    return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "1"})


@router.get("/health/live")
async def live() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/health/ready")
async def ready(services: ServicesDep) -> JSONResponse:
    engines = "failed" if services.startup_failed else "ok" if services.ready else "loading"
    checks = {"engines": engines, "database": await _probe(services.db.ping())}
    if services.settings.redis_url:
        checks["redis"] = await _probe(services.meter.limiter.ping())
    if services.draining:
        checks["shutdown"] = "draining"
    if all(value == "ok" for value in checks.values()):
        return JSONResponse({"status": "ready", "checks": checks})
    return JSONResponse(
        {"status": "not_ready", "checks": checks}, status_code=503, headers={"Retry-After": "1"}
    )


async def _probe(check: Awaitable[bool]) -> str:
    try:
        return "ok" if await asyncio.wait_for(check, PROBE_TIMEOUT_S) else "unavailable"
    except TimeoutError:
        return "unavailable"

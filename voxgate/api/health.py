"""GET /health: 200 once the engines are loaded and serving, 503 before (no auth)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from voxgate.api.deps import ServicesDep

router = APIRouter()


@router.get("/health")
async def health(services: ServicesDep) -> JSONResponse:
    engines = {
        name: {"running": gate.running, "queued": gate.waiting}
        for name, gate in services.local.gates.items()
    }
    if services.ready:
        return JSONResponse({"status": "ok", "engines": engines})
    if services.startup_error:
        return JSONResponse({"status": "failed", "error": services.startup_error}, status_code=503)
    return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "1"})

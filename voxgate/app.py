"""create_app(settings): the ASGI application. Nothing happens at import time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from voxgate import __version__
from voxgate.api import admin, health, models, observability, speech, transcriptions, usage
from voxgate.api.errors import install_error_handlers
from voxgate.api.gateway import GatewayMiddleware
from voxgate.api.middleware import BodyGuardMiddleware, RequestIdMiddleware
from voxgate.api.observability import ObservabilityMiddleware
from voxgate.api.openapi import install_openapi
from voxgate.services.container import Services
from voxgate.settings import Settings

log = logging.getLogger("voxgate")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    services = Services.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.open()
        if settings.auth == "off":
            log.warning("VOXGATE_AUTH=off: /v1/* serves every request anonymously, no budget")
        elif not settings.api_keys and not await services.keys.any_usable():
            log.warning("no API key exists yet: /v1/* answers 401 until one is created")
        loading = asyncio.create_task(services.load_engines())
        try:
            yield
        finally:
            loading.cancel()
            await services.close()

    # No trailing-slash redirects: a client following one would make a second, metered request.
    app = FastAPI(
        title="voxgate",
        version=__version__,
        lifespan=lifespan,
        redirect_slashes=False,
        docs_url=None,  # served offline by install_openapi
        redoc_url=None,
    )
    app.state.services = services
    install_error_handlers(app)
    for module in (speech, transcriptions, models, usage, admin, health, observability):
        app.include_router(module.router)
    install_openapi(app)
    # Added innermost first: RequestId → Observability (access log, metrics) → CORS → Gateway
    # (auth, admission) → BodyGuard → routes.
    app.add_middleware(
        BodyGuardMiddleware,
        max_upload_bytes=settings.max_upload_bytes,
        max_json_bytes=settings.max_json_bytes,
        idle_timeout_s=settings.body_idle_timeout_s,
        total_timeout_s=settings.body_timeout_s,
    )
    app.add_middleware(GatewayMiddleware, services=services)
    if settings.cors_origins:  # off unless configured: browsers may not call voxgate cross-site
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["authorization", "content-type", "x-client-request-id"],
            expose_headers=["x-request-id", "retry-after", "x-should-retry", "x-voxgate-route"],
        )
    app.add_middleware(ObservabilityMiddleware)
    app.add_middleware(RequestIdMiddleware)
    return app

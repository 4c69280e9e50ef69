"""create_app(settings): the ASGI application. Nothing happens at import time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from voxgate import __version__
from voxgate.api import admin, health, models, speech, transcriptions, usage
from voxgate.api.errors import install_error_handlers
from voxgate.api.gateway import GatewayMiddleware
from voxgate.api.middleware import RequestIdMiddleware, UploadLimitMiddleware
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
        if not settings.api_keys and not await services.keys.any_usable():
            log.warning("no API keys exist yet: /v1/* accepts requests without a key")
        loading = asyncio.create_task(services.load_engines())
        try:
            yield
        finally:
            loading.cancel()
            await services.close()

    app = FastAPI(
        title="voxgate", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.services = services
    install_error_handlers(app)
    for module in (speech, transcriptions, models, usage, admin, health):
        app.include_router(module.router)
    install_openapi(app)
    app.add_middleware(UploadLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(GatewayMiddleware, services=services)
    app.add_middleware(RequestIdMiddleware)
    return app

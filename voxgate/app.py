"""create_app(settings): the ASGI application. Nothing happens at import time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from voxgate import __version__
from voxgate.api import health, models, speech, transcriptions
from voxgate.api.deps import require_api_key
from voxgate.api.errors import install_error_handlers
from voxgate.api.middleware import RequestIdMiddleware, UploadLimitMiddleware
from voxgate.services.container import Services
from voxgate.settings import Settings

log = logging.getLogger("voxgate")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    services = Services.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.api_keys:
            log.warning("VOXGATE_API_KEYS is empty: /v1/* accepts requests without a key")
        loading = asyncio.create_task(services.start())
        yield
        loading.cancel()

    app = FastAPI(title="voxgate", version=__version__, lifespan=lifespan)
    app.state.services = services
    install_error_handlers(app)
    v1 = [Depends(require_api_key)]
    app.include_router(speech.router, dependencies=v1)
    app.include_router(transcriptions.router, dependencies=v1)
    app.include_router(models.authenticated)
    app.include_router(models.router)
    app.include_router(health.router)
    app.add_middleware(UploadLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(RequestIdMiddleware)
    return app

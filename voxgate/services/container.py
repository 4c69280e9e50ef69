"""Build and own everything a running server needs, from one Settings object."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from voxgate.catalog import Catalog
from voxgate.providers.local import LocalProvider
from voxgate.services.routing import Router
from voxgate.settings import Settings

log = logging.getLogger("voxgate")


def api_key_digest(key: str) -> bytes:
    """How bearer keys are held and compared: only their SHA-256 digest is kept."""
    return hashlib.sha256(key.encode()).digest()


@dataclass
class Services:
    settings: Settings
    catalog: Catalog
    local: LocalProvider
    router: Router
    api_key_digests: tuple[bytes, ...] = ()
    startup_error: str | None = None

    @classmethod
    def build(cls, settings: Settings) -> Services:
        catalog = Catalog.load(settings.catalog_file)
        local = LocalProvider(settings, catalog)
        return cls(
            settings=settings,
            catalog=catalog,
            local=local,
            router=Router({"local": local}),
            api_key_digests=tuple(api_key_digest(key) for key in settings.api_keys),
        )

    @property
    def ready(self) -> bool:
        return self.local.ready

    async def start(self) -> None:
        """Load the engines. Runs in the background; /health turns 200 when it is done."""
        try:
            await self.local.start()
        except Exception as exc:
            self.startup_error = f"{type(exc).__name__}: {exc}"
            log.exception("loading the local engines failed")

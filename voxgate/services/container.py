"""Build and own everything a running server (or the CLI) needs, from one Settings object."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from voxgate.catalog import Catalog
from voxgate.providers.local import LocalProvider
from voxgate.services.keys import Authenticator
from voxgate.services.limits import Limiter, MemoryLimiter
from voxgate.services.metering import Meter
from voxgate.services.routing import Router
from voxgate.settings import Settings
from voxgate.storage.db import Database
from voxgate.storage.keys import KeyStore
from voxgate.storage.usage import Ledger

log = logging.getLogger("voxgate")


def build_limiter(settings: Settings) -> Limiter:
    if settings.redis_url:
        from voxgate.storage.redis import RedisLimiter

        return RedisLimiter(settings.redis_url)
    return MemoryLimiter()


@dataclass
class Services:
    settings: Settings
    catalog: Catalog
    local: LocalProvider
    router: Router
    db: Database
    keys: KeyStore
    ledger: Ledger
    auth: Authenticator
    meter: Meter
    startup_error: str | None = None

    @classmethod
    def build(cls, settings: Settings) -> Services:
        catalog = Catalog.load(settings.catalog_file)
        local = LocalProvider(settings, catalog)
        db = Database(settings.database)
        keys = KeyStore(db)
        ledger = Ledger(db, settings.instance)
        return cls(
            settings=settings,
            catalog=catalog,
            local=local,
            router=Router({"local": local}),
            db=db,
            keys=keys,
            ledger=ledger,
            auth=Authenticator(
                keys, settings.bootstrap_secrets, settings.admin_secret, settings.auth
            ),
            meter=Meter(ledger, build_limiter(settings), keys),
        )

    @property
    def ready(self) -> bool:
        return self.local.ready

    async def open(self) -> None:
        """Migrate the database and settle what this replica's last run left open."""
        await self.db.migrate()
        await self.meter.start()

    async def load_engines(self) -> None:
        """Load the engines. Runs in the background; /health turns 200 when it is done."""
        try:
            await self.local.start()
        except Exception as exc:
            self.startup_error = f"{type(exc).__name__}: {exc}"
            log.exception("loading the local engines failed")

    async def close(self) -> None:
        await self.meter.close()
        await self.db.close()

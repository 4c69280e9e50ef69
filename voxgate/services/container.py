"""Build and own everything a running server (or the CLI) needs, from one Settings object."""

from __future__ import annotations

import gc
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from voxgate.catalog import Catalog
from voxgate.providers.config import apply_to_catalog, load_upstream_config
from voxgate.providers.local import LocalProvider
from voxgate.providers.upstream.client import UpstreamClient
from voxgate.services.keys import Authenticator
from voxgate.services.limits import Limiter, MemoryLimiter
from voxgate.services.metering import Meter
from voxgate.services.routing import Router
from voxgate.settings import Settings
from voxgate.storage.db import Database, redacted_url
from voxgate.storage.journal import Journal
from voxgate.storage.keys import KeyStore
from voxgate.storage.usage import Ledger

log = logging.getLogger("voxgate")


def build_limiter(settings: Settings) -> Limiter:
    if settings.redis_url:
        from voxgate.storage.redis import RedisLimiter

        return RedisLimiter(settings.redis_url, on_down=settings.limits_on_redis_down)
    return MemoryLimiter()


def journal_path(settings: Settings) -> Path:
    """This replica's ledger journal: one file per (database, instance id) in the data dir, so
    replicas or test servers sharing a data dir never replay each other's writes."""
    identity = f"{redacted_url(settings.database)}|{settings.instance}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return settings.data_dir / "journal" / f"ledger-{digest}.jsonl"


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
    startup_failed: bool = False
    draining: bool = False  # shutting down: /health/ready answers 503

    @classmethod
    def build(cls, settings: Settings) -> Services:
        catalog = Catalog.load(settings.catalog_file)
        upstream = load_upstream_config(settings.config_file)
        apply_to_catalog(catalog, upstream, local_engines=settings.local_engines == "on")
        local = LocalProvider(settings, catalog)
        clients = {name: UpstreamClient(provider) for name, provider in upstream.providers.items()}
        db = Database(settings.database)
        keys = KeyStore(db)
        ledger = Ledger(db, settings.instance, Journal(journal_path(settings)))
        return cls(
            settings=settings,
            catalog=catalog,
            local=local,
            router=Router(local, clients),
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
        except Exception:
            self.startup_failed = True  # the reason is in the log, not on /health
            log.exception("loading the local engines failed")
            return
        # What start-up allocated lives as long as the process: moved out of the collector's
        # generations, so full GC passes stop walking it (a p99 cost on a busy gateway).
        if self.settings.gc_freeze:
            gc.collect()
            gc.freeze()

    async def close(self) -> None:
        await self.meter.close()
        await self.router.aclose()
        await self.db.close()

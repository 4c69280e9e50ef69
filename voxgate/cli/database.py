"""How every CLI command reaches the database: the server's settings, migrated first."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from voxgate.settings import Settings
from voxgate.storage.db import Database

T = TypeVar("T")


def on_database(work: Callable[[Database], Awaitable[T]], settings: Settings | None = None) -> T:
    """Open the database the server would use, bring its schema to head, run ``work``, close.

    Migrating first lets every command work on a fresh machine, before any server has started.
    """
    settings = settings or Settings()

    async def run() -> T:
        db = Database(settings.database)
        try:
            await db.migrate()
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(run())

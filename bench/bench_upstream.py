"""Pass-through overhead of voxgate in front of an upstream audio API, side by side with LiteLLM.

What and why (issue 7, item 9): an operator who puts a cloud or GPU-box audio API behind voxgate
pays for every millisecond voxgate adds. This script measures it in ONE run, against the same
upstream, three ways:

* ``direct``: the fake upstream (tests/fake_upstream.py) called with no gateway: the floor.
* ``voxgate``: ``voxgate serve`` with only remote models (``VOXGATE_LOCAL_ENGINES=off``) whose
  serve chain is the fake upstream, metering on: a stored key with a budget and every limit set
  (too high to trigger), SQLite ledger, one row per request.
* ``litellm``: the LiteLLM proxy (one worker, a master key, no database), its ``model_list``
  pointed at the same fake upstream. It lives in its own venv (default ``bench/.venv-litellm``),
  created with ``pip install 'litellm[proxy]'`` when missing.

Load comes from ``hey`` (Debian package ``hey``: ``apt-get install hey``), one process per batch,
keep-alive on, every request's latency read from its CSV output. Cases: a 50 KB and a 2 MB WAV
transcription upload (real speech from tests/data/audio, looped to size) and a 20 KB speech
response (WAV), each at concurrency 1 (latency) and 32 (throughput); the three targets run back
to back per case, in rotated order, after a warm-up. Then time to first byte of a streamed
upstream (``drip-300``: four chunks 300 ms apart), measured by a client in this process.

The machine this was written for has 2 cores shared with other people's work, and the load
generator, the fake upstream and the gateway all share them: read ratios measured in one run,
not absolute numbers. Every batch records the CPU the rest of the machine used meanwhile.

Run: ``.venv/bin/python bench/bench_upstream.py [--scale 0.5] [--out bench/results/upstream.json]``
(``make bench-upstream``). ``--profile`` also samples voxgate with py-spy during an extra
concurrency-1 run per case and prints where its time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from harness import (
    REPO,
    free_port,
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
    stop_process,
    stop_server,
    wait_healthy,
)

sys.path.insert(0, str(REPO / "tests"))
from fake_upstream import FakeUpstream

from voxgate.storage.db import Database
from voxgate.storage.keys import KeyStore, Limits

AUDIO = REPO / "tests" / "data" / "audio"
LITELLM_VENV = REPO / "bench" / ".venv-litellm"
UPSTREAM_KEY = "sk-fake-upstream-provider-key"
LITELLM_MASTER_KEY = "sk-litellm-bench-master-key"
SPEECH_MS = 426  # 24 kHz 16-bit mono: 20,448 bytes of samples + 44 of header = 20 KB WAV
DRIP_MS = 300
STARTUP_TIMEOUT_S = 240
HIGH_LIMITS = Limits(
    rpm=10_000_000,
    audio_seconds_per_minute=10_000_000,
    characters_per_minute=100_000_000,
    max_concurrency=10_000,
)
BUDGET_MICROS = 1_000_000 * 1_000_000  # $1,000,000
SPEECH_TEXT = "Hello there, this is the pass-through benchmark speaking."
# Every 2xx answer each target gave, warm-ups included: voxgate's ledger must hold as many rows.
SENT_OK: Counter[str] = Counter()
TARGETS = ("direct", "voxgate", "voxgate-base", "voxgate-nofreeze", "voxgate-bootstrap", "litellm")
DEFAULT_TARGETS = tuple(t for t in TARGETS if t != "voxgate-base")  # that one needs --base-src
FIRST_BYTE_TARGETS = ("direct", "voxgate", "voxgate-base", "litellm")
# Which upstream model each gateway's model name stands for.
MODELS = {
    "whisper": ("bench-whisper", "whisper-1"),
    "tts": ("bench-tts", "tts-1"),
    "drip-tts": ("bench-drip-tts", f"drip-{DRIP_MS}"),
    "drip-whisper": ("bench-drip-whisper", f"drip-{DRIP_MS}"),
}


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # key of MODELS
    path: str
    upload_bytes: int  # 0: a JSON speech request
    requests: dict[int, int]  # concurrency -> requests measured


CASES = (
    Case("transcription 50 KB", "whisper", "/v1/audio/transcriptions", 50_000, {1: 300, 32: 1600}),
    Case("transcription 2 MB", "whisper", "/v1/audio/transcriptions", 2_000_000, {1: 60, 32: 320}),
    Case("speech 20 KB", "tts", "/v1/audio/speech", 0, {1: 300, 32: 1600}),
)


@dataclass(frozen=True)
class Target:
    name: str
    base_url: str  # scheme://host:port, no /v1
    secret: str
    pid: int
    gateway: bool  # model names are the gateway's (bench-*), else the upstream's

    def model(self, kind: str) -> str:
        gateway_name, upstream_name = MODELS[kind]
        return gateway_name if self.gateway else upstream_name


@dataclass
class Batch:
    case: str
    concurrency: int
    target: str
    requests: int
    ok: int
    statuses: dict[str, int]
    wall_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    rps: float
    target_cpu_s: float
    foreign_cpu_s: float


@dataclass
class FirstByte:
    case: str
    target: str
    ttfb_ms: list[float]
    total_ms: list[float]
    complete: int  # responses that ended normally with the whole body
    body_bytes: list[int]


@dataclass
class Results:
    started: str
    scale: float
    machine: dict[str, Any]
    load_before: str
    batches: list[Batch] = field(default_factory=list)
    first_bytes: list[FirstByte] = field(default_factory=list)
    ledger: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    load_after: str = ""
    notes: list[str] = field(default_factory=list)


# --- request bodies -------------------------------------------------------------------------


def speech_pcm_16k() -> bytes:
    """Real speech from the test clips, decoded to 16 kHz mono 16-bit PCM."""
    import av

    pcm = bytearray()
    for name in ("en-jfk.flac", "en-librispeech-1089-134686-0000.flac"):
        with av.open(str(AUDIO / name)) as container:
            resampler = av.AudioResampler(format="s16", layout="mono", rate=16_000)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    pcm.extend(bytes(out.planes[0])[: out.samples * 2])
    return bytes(pcm)


def wav_of_size(pcm: bytes, size: int) -> bytes:
    """A 16 kHz mono WAV of exactly ``size`` bytes: the speech looped to fill it."""
    samples = (size - 44) // 2 * 2
    data = (pcm * (samples // len(pcm) + 1))[:samples]
    header = b"RIFF" + (36 + len(data)).to_bytes(4, "little") + b"WAVEfmt "
    header += (16).to_bytes(4, "little") + (1).to_bytes(2, "little") + (1).to_bytes(2, "little")
    header += (16_000).to_bytes(4, "little") + (32_000).to_bytes(4, "little")
    header += (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
    return header + b"data" + len(data).to_bytes(4, "little") + data


BOUNDARY = "voxgate-bench-boundary-7f3a9c"


def multipart_body(fields: dict[str, str], filename: str, data: bytes) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: audio/wav\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(parts)


@dataclass(frozen=True)
class Body:
    path: Path
    content_type: str


def write_bodies(work: Path, targets: list[Target], uploads: dict[int, bytes]) -> dict[Any, Body]:
    """One request body file per (case, target): hey sends the same bytes every time."""
    bodies: dict[Any, Body] = {}
    for case in CASES:
        for target in targets:
            model = target.model(case.kind)
            path = work / f"body-{target.name}-{case.kind}-{case.upload_bytes}"
            if case.upload_bytes:
                fields = {"model": model, "response_format": "json"}
                path.write_bytes(multipart_body(fields, "speech.wav", uploads[case.upload_bytes]))
                content_type = f"multipart/form-data; boundary={BOUNDARY}"
            else:
                speech = {
                    "model": model,
                    "input": SPEECH_TEXT,
                    "voice": "alloy",
                    "response_format": "wav",
                }
                path.write_text(json.dumps(speech))
                content_type = "application/json"
            bodies[case.name, target.name] = Body(path, content_type)
    return bodies


# --- load with hey --------------------------------------------------------------------------


def hey(target: Target, path: str, body: Body, requests: int, concurrency: int) -> Any:
    """Run hey once; return (per-request latencies in ms of 2xx answers, status counts, wall)."""
    command = [
        *("hey", "-n", str(requests), "-c", str(concurrency), "-m", "POST", "-t", "60"),
        *("-T", body.content_type, "-D", str(body.path)),
        *("-H", f"Authorization: Bearer {target.secret}", "-o", "csv"),
        f"{target.base_url}{path}",
    ]
    started = time.monotonic()
    out = subprocess.run(command, capture_output=True, check=True, text=True).stdout
    wall = time.monotonic() - started
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    ends: list[float] = []
    for row in csv.DictReader(io.StringIO(out)):
        status = row["status-code"]
        statuses[status] += 1
        seconds = float(row["response-time"])
        ends.append(float(row["offset"]) + seconds)
        if status.startswith("2"):
            latencies.append(seconds * 1000)
    SENT_OK[target.name] += len(latencies)
    missing = requests - sum(statuses.values())
    if missing:
        statuses["error"] += missing  # connection errors leave no CSV row
    return latencies, dict(statuses), (max(ends) if ends else wall)


def run_batch(
    case: Case, concurrency: int, target: Target, body: Body, requests: int, all_pids: list[int]
) -> Batch:
    cpu_before = {pid: process_cpu_s(pid) for pid in all_pids}
    machine_before = machine_cpu_s()
    latencies, statuses, wall = hey(target, case.path, body, requests, concurrency)
    machine_after = machine_cpu_s()
    ours = sum(process_cpu_s(pid) - cpu_before[pid] for pid in all_pids)
    target_cpu = process_cpu_s(target.pid) - cpu_before[target.pid]
    ok = len(latencies)
    batch = Batch(
        case=case.name,
        concurrency=concurrency,
        target=target.name,
        requests=requests,
        ok=ok,
        statuses=statuses,
        wall_s=round(wall, 3),
        p50_ms=round(percentile(latencies, 50), 3),
        p90_ms=round(percentile(latencies, 90), 3),
        p99_ms=round(percentile(latencies, 99), 3),
        mean_ms=round(sum(latencies) / ok, 3) if ok else float("nan"),
        rps=round(ok / wall, 1) if wall else 0.0,
        target_cpu_s=round(target_cpu, 2),
        # hey's own CPU is not counted as ours: it is part of "foreign" here, which therefore
        # overstates other people's load (hey runs in its own short-lived process).
        foreign_cpu_s=round(max(0.0, machine_after.busy - machine_before.busy - ours), 2),
    )
    log(
        f"  {case.name:20} c={concurrency:<3} {target.name:8} p50 {batch.p50_ms:8.2f} ms "
        f"p99 {batch.p99_ms:8.2f} ms {batch.rps:8.1f} req/s  {statuses}"
    )
    return batch


# --- time to first byte ---------------------------------------------------------------------


async def first_bytes(
    targets: list[Target], kind: str, repeats: int, upload: bytes
) -> list[FirstByte]:
    """Time to the first body byte and to the end, for a streamed upstream (drip mode).

    The targets take turns request by request (rotated each round), so a burst of load on the
    machine hits them alike: on a busy machine that matters more than anything else here."""
    results = {
        t.name: FirstByte(f"{kind} (drip {DRIP_MS} ms x 4)", t.name, [], [], 0, []) for t in targets
    }
    clients = {
        t.name: httpx.AsyncClient(
            base_url=t.base_url, headers={"Authorization": f"Bearer {t.secret}"}, timeout=30
        )
        for t in targets
    }
    try:
        for turn in range(repeats + 1):  # the first round warms the connections up
            for name in rotated([t.name for t in targets], turn):
                target = next(t for t in targets if t.name == name)
                sample = await first_byte(clients[name], target, kind, upload)
                if turn == 0:
                    continue
                result = results[name]
                ttfb, total, size, ok = sample
                if ttfb is not None:
                    result.ttfb_ms.append(ttfb)
                result.total_ms.append(total)
                result.body_bytes.append(size)
                result.complete += ok
    finally:
        for client in clients.values():
            await client.aclose()
    for result in results.values():
        log(
            f"  first byte {kind:12} {result.target:8} median {median(result.ttfb_ms):8.2f} ms,"
            f" total {median(result.total_ms):8.2f} ms, bytes {result.body_bytes[:1]}"
        )
    return list(results.values())


async def first_byte(
    client: httpx.AsyncClient, target: Target, kind: str, upload: bytes
) -> tuple[float | None, float, int, int]:
    """One streamed request: (ms to the first body byte, ms to the end, bytes, 1 if 200)."""
    if kind == "drip-tts":
        body = {
            "model": target.model(kind),
            "input": SPEECH_TEXT,
            "voice": "alloy",
            "response_format": "pcm",
        }
        request = client.build_request("POST", "/v1/audio/speech", json=body)
    else:
        fields = {"model": target.model(kind), "stream": "true"}
        files = {"file": ("speech.wav", upload, "audio/wav")}
        request = client.build_request("POST", "/v1/audio/transcriptions", data=fields, files=files)
    started = time.perf_counter()
    first: float | None = None
    size = ok = 0
    try:
        response = await client.send(request, stream=True)
        async for chunk in response.aiter_raw():
            if chunk and first is None:
                first = time.perf_counter()
            size += len(chunk)
        await response.aclose()
        if response.status_code == 200:
            ok = 1
            SENT_OK[target.name] += 1
    except httpx.HTTPError as exc:
        log(f"  first byte {target.name}: {type(exc).__name__}: {exc}")
    end = time.perf_counter()
    ttfb = round((first - started) * 1000, 2) if first is not None else None
    return ttfb, round((end - started) * 1000, 2), size, ok


# --- the three targets ----------------------------------------------------------------------


def voxgate_config(upstream_base_url: str) -> str:
    """The config file voxgate runs with: one provider, the fake upstream, and its models."""
    models = []
    for kind, (gateway_name, upstream_name) in MODELS.items():
        speech = kind.endswith("tts")
        features = '["text-to-speech"]' if speech else '["speech-to-text", "translation"]'
        pricing = "{ input = 15.0 }" if speech else "{ per_second = 0.0001 }"
        models.append(
            f'[[models]]\nid = "{gateway_name}"\nfeatures = {features}\n'
            f'pricing = {pricing}\nserve = ["fake:{upstream_name}"]\n'
        )
    provider = (
        f'[providers.fake]\nbase_url = "{upstream_base_url}"\n'
        'api_key_env = "BENCH_UPSTREAM_KEY"\ntimeout_s = 60\n'
    )
    return "\n".join([provider, *models])


async def create_stored_key(database_url: str) -> str:
    db = Database(database_url)
    try:
        await db.migrate()
        _key, secret = await KeyStore(db).create(
            "bench", budget_micros=BUDGET_MICROS, limits=HIGH_LIMITS
        )
    finally:
        await db.close()
    return secret


def litellm_python(venv: Path) -> Path:
    """The LiteLLM venv's python, creating the venv and installing the proxy when missing."""
    python = venv / "bin" / "python"
    if not (venv / "bin" / "litellm").exists():
        log(f"creating {venv} and installing 'litellm[proxy]' (once; a few minutes)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "litellm[proxy]"], check=True
        )
    return python


def litellm_config(upstream_base_url: str) -> str:
    entries = []
    for kind, (gateway_name, upstream_name) in MODELS.items():
        mode = "audio_speech" if kind.endswith("tts") else "audio_transcription"
        entries.append(
            f"  - model_name: {gateway_name}\n"
            "    litellm_params:\n"
            f"      model: openai/{upstream_name}\n"
            f"      api_base: {upstream_base_url}\n"
            f"      api_key: {UPSTREAM_KEY}\n"
            "    model_info:\n"
            f"      mode: {mode}\n"
        )
    return (
        "model_list:\n"
        + "".join(entries)
        + "general_settings:\n"
        + f"  master_key: {LITELLM_MASTER_KEY}\n"
        + "litellm_settings:\n"
        + "  drop_params: true\n"
        + "  telemetry: false\n"
    )


@contextlib.contextmanager
def litellm_proxy(venv: Path, work: Path, upstream_base_url: str) -> Iterator[Target]:
    python = litellm_python(venv)
    config = work / "litellm.yaml"
    config.write_text(litellm_config(upstream_base_url))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LITELLM", "DATABASE"))}
    env.update(
        LITELLM_MASTER_KEY=LITELLM_MASTER_KEY,
        LITELLM_LOCAL_MODEL_COST_MAP="True",  # no network fetch of the price list
        LITELLM_LOG="ERROR",
        LITELLM_TELEMETRY="False",
    )
    log_path = work / "litellm.log"
    command = [
        str(venv / "bin" / "litellm"),
        *("--config", str(config), "--host", "127.0.0.1", "--port", str(port)),
        *("--num_workers", "1"),
    ]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command, cwd=work, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"litellm exited:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base_url}/health/liveliness", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"litellm not up:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        log(f"litellm {litellm_version(python)} on {base_url} (pid {process.pid})")
        yield Target("litellm", base_url, LITELLM_MASTER_KEY, process.pid, gateway=True)
    finally:
        stop_process(process)


def litellm_version(python: Path) -> str:
    command = [
        str(python),
        "-c",
        "from importlib.metadata import version; print(version('litellm'))",
    ]
    return subprocess.run(command, capture_output=True, text=True).stdout.strip()


@dataclass(frozen=True)
class Variant:
    """A voxgate configuration to measure: which key meters the requests, which settings."""

    stored_key: bool  # a key row with a budget and every limit, else a bootstrap key
    env: tuple[tuple[str, str], ...] = ()


VARIANTS = {
    "voxgate": Variant(stored_key=True),
    # The same, running the voxgate package found in --base-src (an export of another commit):
    # before and after measured in one run, on the same load.
    "voxgate-base": Variant(stored_key=True),
    "voxgate-nofreeze": Variant(stored_key=True, env=(("VOXGATE_GC_FREEZE", "false"),)),
    "voxgate-bootstrap": Variant(stored_key=False),
}


@contextlib.contextmanager
def voxgate_gateway(
    work: Path, name: str, upstream_base_url: str, extra_env: dict[str, str]
) -> Iterator[Target]:
    variant = VARIANTS[name]
    data_dir = work / f"{name}-data"
    data_dir.mkdir(exist_ok=True)
    config = work / "voxgate.toml"
    config.write_text(voxgate_config(upstream_base_url))
    settings = {
        "VOXGATE_CONFIG_FILE": str(config),
        "VOXGATE_LOCAL_ENGINES": "off",
        "BENCH_UPSTREAM_KEY": UPSTREAM_KEY,
        **dict(variant.env),
        **extra_env,
    }
    if variant.stored_key:
        secret = asyncio.run(create_stored_key(f"sqlite:///{data_dir / 'voxgate.db'}"))
    else:
        secret = f"sk-bench-bootstrap-{os.urandom(8).hex()}"
        settings["VOXGATE_API_KEYS"] = secret
    # voxgate-base: `python -m voxgate` run from --base-src imports the package found there.
    cwd = Path(settings.pop("VOXGATE_BENCH_SRC", REPO))
    server = start_server(server_env(data_dir, settings), work / f"{name}.log", cwd=cwd)
    try:
        wait_healthy([server], STARTUP_TIMEOUT_S)
        log(f"{name} on {server.base_url} (pid {server.pid})")
        yield Target(name, server.base_url, secret, server.pid, gateway=True)
    finally:
        stop_server(server)


def ledger_summary(work: Path, name: str) -> dict[str, Any]:
    """Rows in voxgate's ledger by status, to check one row per request, none pending."""
    path = work / f"{name}-data" / "voxgate.db"
    if not path.exists():
        return {}
    with contextlib.closing(sqlite3.connect(path)) as connection:
        rows = connection.execute("SELECT status, COUNT(*) FROM usage_records GROUP BY status")
        by_status = {str(k): int(v) for k, v in rows}
        routes = connection.execute("SELECT route, COUNT(*) FROM usage_records GROUP BY route")
        return {"rows_by_status": by_status, "rows_by_route": {str(k): int(v) for k, v in routes}}


# --- profile --------------------------------------------------------------------------------


def profile_voxgate(
    target: Target, cases: list[Case], bodies: dict[Any, Body], work: Path, seconds: int
) -> dict[str, Any]:
    """Sample voxgate with py-spy while hey drives one case at concurrency 1; top frames."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        return {"error": "py-spy not installed (pip install py-spy)"}
    profiles: dict[str, Any] = {}
    for case in cases:
        out = work / f"profile-{case.kind}-{case.upload_bytes}.txt"
        spy = subprocess.Popen(
            [
                *(py_spy, "record", "-p", str(target.pid), "-d", str(seconds), "-r", "200"),
                *("-f", "raw", "-o", str(out), "--nonblocking"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline - 0.5:
            hey(target, case.path, bodies[case.name, target.name], 200, 1)
        spy.wait(timeout=seconds + 30)
        if out.exists():
            profiles[case.name] = summarise_profile(out.read_text())
            shutil.copy(out, REPO / "bench" / "results" / out.name)
    return profiles


# Where a sample's time goes: the component of the leaf-most frame that belongs to one.
COMPONENTS = (
    ("sqlalchemy", "ledger and keys: SQLAlchemy"),
    ("aiosqlite", "ledger and keys: aiosqlite"),
    ("sqlite3", "ledger and keys: aiosqlite"),
    ("httpcore", "upstream client: httpx/httpcore"),
    ("httpx", "upstream client: httpx/httpcore"),
    ("h11", "upstream client: httpx/httpcore"),
    ("multipart", "multipart parsing"),
    ("starlette", "framework: FastAPI/Starlette"),
    ("fastapi", "framework: FastAPI/Starlette"),
    ("pydantic", "validation: pydantic"),
    ("anyio", "anyio (threads, task groups)"),
    ("uvicorn", "HTTP server: uvicorn/httptools"),
    ("voxgate/", "voxgate's own code"),
    ("asyncio", "asyncio"),
    ("threading.py", "thread hand-offs"),
    ("queue.py", "thread hand-offs"),
    ("concurrent/futures", "thread hand-offs"),
)
# Leaves that are waiting, not working: the native event loop (uvloop: epoll and its own
# callbacks), threads parked on a queue or condition (aiosqlite's line 59 is its queue get).
IDLE_LEAVES = (
    "Runner.run (asyncio/runners.py",
    "Condition.wait (threading.py",
    "_connection_worker_thread (aiosqlite/core.py:59)",
    "select (",
    "poll (",
)


# The step of a request a sample belongs to: the innermost frame that names one. A sample whose
# leaf is waking a worker thread (or waiting for the GIL to come back after it) is a thread
# hand-off whatever the step; worker-thread samples count for the step their function serves.
PHASES = (
    ("Authenticator.authenticate (voxgate/", "auth: key lookup"),
    ("KeyStore.find.<locals>.lookup (voxgate/", "auth: key lookup"),
    ("Meter.admit (voxgate/", "admission: slot, requests/min"),
    ("read_form (voxgate/", "multipart parse + spool"),
    ("UploadSpool._write (voxgate/", "multipart parse + spool"),
    ("UploadFile.write (starlette/", "multipart parse + spool"),
    ("SpooledTemporaryFile.", "multipart parse + spool"),
    ("UploadSpool.aclose (voxgate/", "multipart parse + spool"),
    ("Request.json (starlette/", "JSON body parse + validation"),
    ("model_validate (pydantic/", "JSON body parse + validation"),
    ("measure_duration (voxgate/", "measure the upload"),
    ("wav_duration (voxgate/", "measure the upload"),
    ("Ticket.reserve (voxgate/", "ledger: reserve"),
    ("Ledger.reserve.<locals>.hold (voxgate/", "ledger: reserve"),
    ("Ticket.finish (voxgate/", "ledger: settle"),
    ("Ledger._apply.<locals>.settle (voxgate/", "ledger: settle"),
    ("_settle (voxgate/storage/usage.py", "ledger: settle"),
    ("UpstreamClient.open (voxgate/", "upstream: request, response head (httpx)"),
    ("MultipartBody.stream (voxgate/", "upstream: upload body"),
    ("SpooledUpload.read_at (voxgate/", "upstream: upload body"),
    ("Response.aread (httpx/", "upstream: read a small answer"),
    ("_relay (voxgate/", "response: relay the upstream body"),
    ("_record (voxgate/api/observability.py", "access log + metrics"),
    ("Database._transact (voxgate/", "ledger and keys: begin/commit (worker thread)"),
    ("solve_dependencies (fastapi/", "framework: dependencies"),
)
HAND_OFF_LEAVES = (
    "Condition.notify (threading.py",
    "run_sync_in_worker_thread (anyio/",
    "WorkerThread.run (anyio/",
)


def _stacks(collapsed: str) -> Iterator[tuple[int, list[str]]]:
    """py-spy's collapsed output: each stack's sample count and its frames, root first."""
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack:
            yield int(count_text), stack.split(";")


def summarise_phases(collapsed: str) -> dict[str, float]:
    """Share of busy samples (%) per step of a request, from py-spy's collapsed stacks.

    What no step claims is the HTTP server (uvicorn), the middleware and the framework around
    the handler, or asyncio itself."""
    counts: Counter[str] = Counter()
    for count, frames in _stacks(collapsed):
        if any(leaf in frames[-1] for leaf in IDLE_LEAVES):
            continue
        if any(leaf in frames[-1] for leaf in HAND_OFF_LEAVES):
            counts["thread hand-offs (waking a worker, GIL)"] += count
            continue
        phase = next(
            (name for frame in reversed(frames) for key, name in PHASES if key in frame), None
        )
        if phase is None:
            worker = "Thread._bootstrap" in frames[0]
            phase = "worker threads: other" if worker else "HTTP server, middleware, framework"
        counts[phase] += count
    busy = sum(counts.values()) or 1
    return {name: round(100 * n / busy, 1) for name, n in counts.most_common()}


def summarise_profile(collapsed: str) -> dict[str, Any]:
    """Share of busy samples per component, event-loop thread and worker threads apart, from
    py-spy's collapsed stacks. A sample whose leaf is the (native) event loop or a thread
    waiting is idle."""
    threads = {"event loop": Counter[str](), "worker threads": Counter[str]()}
    idle = 0
    for count, frames in _stacks(collapsed):
        if any(leaf in frames[-1] for leaf in IDLE_LEAVES):
            idle += count
            continue
        where = "worker threads" if "Thread._bootstrap" in frames[0] else "event loop"
        component = "other"
        for frame in reversed(frames):
            hit = next((name for key, name in COMPONENTS if key in frame), None)
            if hit is not None:
                component = hit
                break
        threads[where][component] += count
    busy = sum(sum(c.values()) for c in threads.values()) or 1
    return {
        "busy_samples": busy,
        "idle_samples": idle,
        "share_of_busy_pct": {
            where: {name: round(100 * n / busy, 1) for name, n in counter.most_common()}
            for where, counter in threads.items()
        },
        "share_of_busy_by_step_pct": summarise_phases(collapsed),
    }


# --- report ---------------------------------------------------------------------------------


def report(results: Results) -> str:
    by = {(b.case, b.concurrency, b.target): b for b in results.batches}
    lines = [
        "| case | c | target | p50 ms | p99 ms | added p50 ms | req/s | x LiteLLM req/s "
        "| CPU ms/req | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in CASES:
        for concurrency in case.requests:
            direct = by.get((case.name, concurrency, "direct"))
            litellm = by.get((case.name, concurrency, "litellm"))
            for name in TARGETS:
                batch = by.get((case.name, concurrency, name))
                if batch is None:
                    continue
                added = (
                    f"{batch.p50_ms - direct.p50_ms:+.2f}" if direct and name != "direct" else ""
                )
                ratio = f"{batch.rps / litellm.rps:.2f}" if litellm and litellm.rps else ""
                errors = batch.requests - batch.ok
                cpu = 1000 * batch.target_cpu_s / batch.ok if batch.ok else float("nan")
                lines.append(
                    f"| {case.name} | {concurrency} | {name} | {batch.p50_ms:.2f} | "
                    f"{batch.p99_ms:.2f} | {added} | {batch.rps:.0f} | {ratio} | {cpu:.2f} "
                    f"| {errors} |"
                )
    if results.first_bytes:
        lines += [
            "",
            "| streamed upstream | target | first byte ms (median) | vs direct ms | total ms "
            "(median) | complete |",
            "|---|---|---|---|---|---|",
        ]
        direct_ttfb = {
            fb.case: median(fb.ttfb_ms) for fb in results.first_bytes if fb.target == "direct"
        }
        for fb in results.first_bytes:
            ttfb = median(fb.ttfb_ms)
            versus = f"{ttfb - direct_ttfb[fb.case]:+.2f}" if fb.case in direct_ttfb else ""
            lines.append(
                f"| {fb.case} | {fb.target} | {ttfb:.2f} | {versus} | {median(fb.total_ms):.1f} "
                f"| {fb.complete}/{len(fb.total_ms)} |"
            )
    return "\n".join(lines)


def main() -> None:
    # SIGTERM unwinds like Ctrl-C, so every server this started is stopped by its PID.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies request counts")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "upstream.json")
    parser.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma-separated subset of {','.join(TARGETS)}",
    )
    parser.add_argument(
        "--base-src",
        type=Path,
        help="for target voxgate-base: a directory holding another commit's voxgate package "
        "(git archive COMMIT voxgate | tar -x -C DIR)",
    )
    parser.add_argument("--litellm-venv", type=Path, default=LITELLM_VENV)
    parser.add_argument("--first-byte-repeats", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="py-spy voxgate afterwards")
    parser.add_argument("--profile-seconds", type=int, default=8)
    parser.add_argument(
        "--voxgate-env",
        action="append",
        default=[],
        help="extra NAME=VALUE for voxgate serve (repeatable)",
    )
    args = parser.parse_args()
    if shutil.which("hey") is None:
        sys.exit("bench_upstream: the load generator `hey` is missing: apt-get install hey")
    wanted = [t for t in args.targets.split(",") if t]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    extra_env = dict(item.split("=", 1) for item in args.voxgate_env)

    results = Results(
        started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        scale=args.scale,
        machine=machine_info(["httpx", "uvicorn"]),
        load_before=load_average(),
    )
    if extra_env:
        results.notes.append(f"voxgate env: {extra_env}")
    log("preparing uploads from tests/data/audio")
    pcm = speech_pcm_16k()
    uploads = {c.upload_bytes: wav_of_size(pcm, c.upload_bytes) for c in CASES if c.upload_bytes}
    with (
        tempfile.TemporaryDirectory(prefix="bench-upstream-") as tmp,
        FakeUpstream(speech_ms=SPEECH_MS, chunks=4, max_records=1000) as upstream,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        log(f"fake upstream on {upstream.base_url} (pid {upstream.pid})")
        targets = [Target("direct", upstream.url, UPSTREAM_KEY, upstream.pid, gateway=False)]
        for name in VARIANTS:
            if name in wanted:
                env = dict(extra_env)
                if name == "voxgate-base":
                    if args.base_src is None:
                        sys.exit("bench_upstream: target voxgate-base needs --base-src DIR")
                    env["VOXGATE_BENCH_SRC"] = str(args.base_src.resolve())
                gateway = voxgate_gateway(work, name, upstream.base_url, env)
                targets.append(stack.enter_context(gateway))
        if "litellm" in wanted:
            targets.append(
                stack.enter_context(litellm_proxy(args.litellm_venv, work, upstream.base_url))
            )
        targets = [t for t in targets if t.name in wanted]
        pids = [upstream.pid, *(t.pid for t in targets if t.name != "direct")]
        bodies = write_bodies(work, targets, uploads)
        turn = 0
        for case in CASES:
            for concurrency, count in case.requests.items():
                # hey sends requests // concurrency per worker: keep it a whole multiple
                requests = max(4, int(count * args.scale) // concurrency) * concurrency
                for name in rotated([t.name for t in targets], turn):
                    target = next(t for t in targets if t.name == name)
                    body = bodies[case.name, name]
                    warm = max(20, concurrency * 2)
                    hey(target, case.path, body, warm, concurrency)
                    upstream.reset()  # keeps the fake's records small
                    results.batches.append(
                        run_batch(case, concurrency, target, body, requests, pids)
                    )
                turn += 1
        small = uploads[min(uploads)]
        streamed = [t for t in targets if t.name in FIRST_BYTE_TARGETS]
        for kind in ("drip-tts", "drip-whisper"):
            results.first_bytes += asyncio.run(
                first_bytes(streamed, kind, args.first_byte_repeats, small)
            )
        results.ledger = {name: ledger_summary(work, name) for name in VARIANTS if name in wanted}
        results.ledger["sent_2xx"] = dict(SENT_OK)
        voxgate = next((t for t in targets if t.name == "voxgate"), None)
        if args.profile and voxgate is not None:
            (REPO / "bench" / "results").mkdir(exist_ok=True)
            results.profile = profile_voxgate(
                voxgate, list(CASES), bodies, work, args.profile_seconds
            )
        for name in [*(f"{v}.log" for v in VARIANTS), "litellm.log"]:
            if (work / name).exists():
                tail = (work / name).read_text(errors="replace")[-1500:]
                if tail.strip():
                    results.notes.append(f"{name} tail: {tail}")
    results.load_after = load_average()
    args.out.write_text(json.dumps(asdict(results), indent=2))
    print(report(results))
    log(f"load average before {results.load_before}, after {results.load_after}")
    log(f"results in {args.out}")


if __name__ == "__main__":
    main()

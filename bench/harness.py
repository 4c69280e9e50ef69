"""What the benchmarks in this directory share: servers as subprocesses, CPU counters, statistics.

Both benchmarks compare a ``voxgate serve`` process with work done in the benchmark process on a
noisy, shared machine. So they need the same few things: a server on a free loopback port whose
environment holds only the benchmark's ``VOXGATE_*`` settings (a developer's shell must not leak
into the numbers), stopped again by its PID whatever happens; per-process and machine-wide CPU
counters from ``/proc`` to tell our own CPU from everybody else's ("foreign load"); and the
summary statistics. Keeping one copy here keeps the two benchmarks measuring the same way.

The benchmarks run as scripts (``.venv/bin/python bench/bench_core.py``); Python puts the
script's directory on ``sys.path``, so they import this module as ``harness``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import secrets
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

import httpx

REPO = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the result tables."""
    print(message, file=sys.stderr, flush=True)


# --- servers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """A ``voxgate serve`` subprocess; its log file is the only place its errors show."""

    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def server_env(data_dir: Path, settings: Mapping[str, str]) -> dict[str, str]:
    """This environment without inherited ``VOXGATE_*`` variables, plus the server's own.

    Defaults: one engine worker and warning-level logs, so neither the worker count of the
    shell nor per-request log lines change what is measured; ``settings`` may override them.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    env.update(
        VOXGATE_DATA_DIR=str(data_dir), VOXGATE_ENGINE_WORKERS="1", VOXGATE_LOG_LEVEL="warning"
    )
    env.update(settings)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    env: Mapping[str, str], log_path: Path, port: int | None = None, cwd: Path = REPO
) -> Server:
    """Start ``python -m voxgate serve`` on ``port`` (default: a free loopback port); does not
    wait for it. A replica restarted after a crash is given its old port back, as a load
    balancer's configuration would. ``python -m`` imports voxgate from ``cwd`` first: another
    directory holding a ``voxgate`` package runs that code instead."""
    port = port or free_port()
    command = [sys.executable, "-m", "voxgate", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "ab") as log_file:  # a restarted replica appends to its log
        process = subprocess.Popen(
            command, cwd=cwd, env=dict(env), stdout=log_file, stderr=subprocess.STDOUT
        )
    return Server(f"http://127.0.0.1:{port}", process, log_path)


def wait_healthy(servers: Sequence[Server], timeout_s: float) -> None:
    """Wait until every server answers ``GET /health`` with 200 (they load engines meanwhile).

    Raises with the server's log if one exits, or if one is still not healthy after
    ``timeout_s``; servers started together load their engines in parallel.
    """
    deadline = time.monotonic() + timeout_s
    pending = list(servers)
    while pending:
        for server in list(pending):
            if server.process.poll() is not None:
                raise RuntimeError(
                    f"server exited ({server.process.returncode}):\n{server.log_path.read_text()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                    pending.remove(server)
        if pending and time.monotonic() > deadline:
            raise RuntimeError(
                f"server {pending[0].base_url} not healthy after {timeout_s:.0f} s:\n"
                f"{pending[0].log_path.read_text()}"
            )
        if pending:
            time.sleep(0.2)


def stop_server(server: Server) -> None:
    """SIGTERM the server's PID, SIGKILL it if it has not exited after 20 s."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@contextlib.contextmanager
def running_server(env: Mapping[str, str], log_path: Path, timeout_s: float) -> Iterator[Server]:
    """One healthy server for the duration of the ``with`` block, stopped after."""
    server = start_server(env, log_path)
    try:
        wait_healthy([server], timeout_s)
        yield server
    finally:
        stop_server(server)


@contextlib.contextmanager
def fresh_postgres_database(server_url: str, prefix: str) -> Iterator[str]:
    """A new, empty database on the PostgreSQL server at ``server_url``, dropped afterwards
    (``WITH (FORCE)``, so a server that is still connected does not keep it alive)."""
    import psycopg  # only the benchmarks that use PostgreSQL need the driver loaded
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{secrets.token_hex(6)}"
    admin_url = make_url(server_url).set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin_url.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(
            admin_url.render_as_string(hide_password=False), autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        log(f"dropped database {name}")


def start_redis(port: int) -> subprocess.Popen[bytes]:
    """A throwaway ``redis-server`` on loopback ``port``, nothing persisted, so a benchmark can
    stop and restart it (an outage) without touching anybody else's Redis."""
    process = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--daemonize", "no"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server on port {port} exited ({process.returncode})")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return process
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"redis-server on port {port} did not start in 10 s")


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    """SIGTERM a child we started (by its PID), SIGKILL it after ``timeout_s``."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- CPU counters ---------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all threads); 0 if it is gone.

    Read from ``/proc/<pid>/stat`` (utime and stime, fields 14 and 15) rather than timed on the
    wall clock, because CPU time is far less disturbed by other work on a shared machine.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class MachineCpu(NamedTuple):
    """Machine-wide CPU seconds so far: busy (all processes) and stolen by the hypervisor."""

    busy: float
    steal: float


def machine_cpu_s() -> MachineCpu:
    """From the first line of ``/proc/stat``. Busy minus the benchmark's own processes, over a
    run, is the foreign load: how much other people's work may have disturbed that run."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    hz = os.sysconf("SC_CLK_TCK")
    return MachineCpu((user + nice + system + irq + softirq) / hz, steal / hz)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, recorded before and after a run."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine_info(packages: Iterable[str]) -> dict[str, Any]:
    """The machine and the versions of ``packages``, to store next to the results."""
    cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    mem = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu.group(1) if cpu else platform.processor(),
        "cpus": os.cpu_count(),
        "memory_gib": round(int(mem.group(1)) / 1024**2, 1) if mem else None,
        "versions": {name: metadata.version(name) for name in packages},
    }


# --- statistics and scheduling --------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """The median, NaN (not an exception) for no values, so a report still renders."""
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of ``values``; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def rotated(items: Sequence[str], turn: int) -> list[str]:
    """``items`` rotated by ``turn``: each round starts with another variant, so a disturbance
    on the machine does not always land on the same one."""
    shift = turn % len(items)
    return [*items[shift:], *items[:shift]]

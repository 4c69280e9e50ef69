"""Test harness: real voxgate servers on loopback, the official SDK and plain HTTP as clients.

Every server is a separate ``python -m voxgate serve`` process with the real engines, so tests
exercise exactly what a user runs. Audio comes from ``../shared/audio`` (override with
``VOXGATE_TEST_AUDIO``).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

REPO = Path(__file__).resolve().parent.parent
AUDIO_DIR = Path(os.environ.get("VOXGATE_TEST_AUDIO", REPO.parent / "shared" / "audio"))
API_KEY = "sk-voxgate-test-key"
STARTUP_TIMEOUT_S = 120


@dataclass(frozen=True)
class Server:
    base_url: str  # e.g. http://127.0.0.1:PORT (no /v1)
    api_key: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    def sdk(self, **options: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.v1, api_key=self.api_key, max_retries=0, **options)

    def http(self, **options: Any) -> httpx.Client:
        options.setdefault("timeout", 120)
        headers = {"Authorization": f"Bearer {self.api_key}"}
        return httpx.Client(base_url=self.base_url, headers=headers, **options)

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


@pytest.fixture(scope="session")
def start_server(data_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Factory for a server with other settings: ``with start_server(VOXGATE_X="1") as srv:``."""
    log_dir = tmp_path_factory.mktemp("logs-extra")

    def start(**env: str):  # type: ignore[no-untyped-def]
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
    """``../shared/audio/manifest.jsonl``: one dict per clip (file, language, text, english…)."""
    path = AUDIO_DIR / "manifest.jsonl"
    if not path.is_file():
        pytest.fail(f"test audio not found at {AUDIO_DIR} (set VOXGATE_TEST_AUDIO)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def audio_path(name: str) -> Path:
    return AUDIO_DIR / name

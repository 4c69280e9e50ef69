"""Latency of the cheap routes (/health, /v1/models, /api/models) while both engines are busy.

Why: the engines run in threads, but anything done on the event loop (encoding, JSON, the
GIL held by a hot thread) shows up as latency on routes that do no work at all. This keeps
Piper busy with long tts-1 streams and Whisper with a long transcription, polls the three
routes one after another from one client for ``--seconds``, and prints p50 / p99 / max per
route. The same polling with the engines idle comes first: latencies are wall clock, so a
machine busy with other work shows in both, and only the difference is ours.

Run: ``.venv/bin/python bench/cheap_routes.py [--seconds 30] [--audio-dir PATH]``.

``--probe URL --key SECRET --json FILE`` only polls a server that is already running (no
engines kept busy, no idle round) and writes the latencies' p50 / p99 / max as JSON:
``bench/bench_load.py`` runs it beside its flood, so the cheap routes are timed by a process of
their own, one request at a time, rather than by the flood's client, whose event loop is busy
with a hundred streams and adds its own delays to every latency it measures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import httpx
from harness import REPO, load_average, log, percentile, running_server, server_env

ROUTES = ("/health", "/v1/models", "/api/models")
KEY = "sk-bench-cheap-routes"
TEXT = ("It was a bright cold day in April, and the clocks were striking thirteen. " * 60)[:4000]
ENGINES = ("piper", "faster-whisper")
CLIP = "en-ljspeech-LJ001-0001-to-0032-long.flac"


def keep_busy(base_url: str, stop: threading.Event, kind: str, clip: bytes) -> None:
    """Send one long job after another until ``stop``; errors (503s, timeouts) are fine."""
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=600) as client:
        while not stop.is_set():
            try:
                if kind == "speech":
                    body = {"model": "tts-1", "voice": "alloy", "input": TEXT}
                    with client.stream("POST", "/v1/audio/speech", json=body) as response:
                        for _ in response.iter_raw():
                            if stop.is_set():
                                break
                else:
                    client.post(
                        "/v1/audio/transcriptions",
                        files={"file": ("long.flac", clip)},
                        data={"model": "whisper-1"},
                    )
            except httpx.HTTPError:
                time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--audio-dir", type=Path, default=REPO.parent / "shared" / "audio")
    parser.add_argument("--probe", metavar="URL", help="only poll this running server")
    parser.add_argument("--key", default=KEY, help="the API key for /v1/models (--probe)")
    parser.add_argument("--json", type=Path, help="write the probe's figures here (--probe)")
    args = parser.parse_args()
    if args.probe:
        latencies, _ = poll(args.probe, args.seconds, args.key)
        figures = {route: summary(values) for route, values in latencies.items()}
        text = json.dumps(figures)
        if args.json:
            args.json.write_text(text)
        print(text)
        return
    clip = (args.audio_dir / CLIP).read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        env = server_env(Path(tmp), {"VOXGATE_API_KEYS": KEY})
        with running_server(env, Path(tmp) / "server.log", timeout_s=1200) as server:
            idle = poll(server.base_url, args.seconds / 2)  # the same machine, engines idle
            stop = threading.Event()
            workers = [
                threading.Thread(target=keep_busy, args=(server.base_url, stop, kind, clip))
                for kind in ("speech", "speech", "transcription", "transcription")
            ]
            for worker in workers:
                worker.start()
            time.sleep(5)  # let both engines start their first jobs
            busy = poll(server.base_url, args.seconds)
            stop.set()
            for worker in workers:
                worker.join()
    log(f"load average after: {load_average()}")
    for name, (latencies, busy_rounds) in (("engines idle", idle), ("engines busy", busy)):
        rounds = len(latencies["/health"])
        print(f"{name}: {rounds} rounds; Piper and Whisper both running in {busy_rounds}")
        print(f"  {'route':<12} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
        for route, values in latencies.items():
            p50, p99 = percentile(values, 50) * 1000, percentile(values, 99) * 1000
            print(f"  {route:<12} {p50:8.1f} {p99:8.1f} {max(values) * 1000:8.1f}")


def summary(values: list[float]) -> dict[str, float]:
    """Requests, p50, p99 and max in ms."""
    return {
        "requests": len(values),
        "p50_ms": round(percentile(values, 50) * 1000, 1),
        "p99_ms": round(percentile(values, 99) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


def poll(base_url: str, seconds: float, key: str = KEY) -> tuple[dict[str, list[float]], int]:
    """Request each cheap route in turn for ``seconds``: latencies per route, and in how many
    rounds /health showed both engines running."""
    latencies: dict[str, list[float]] = {route: [] for route in ROUTES}
    busy_rounds = 0
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as probe:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for route in ROUTES:
                started = time.perf_counter()
                response = probe.get(route)
                latencies[route].append(time.perf_counter() - started)
                assert response.status_code == 200, (route, response.status_code)
                if route == "/health":
                    load = response.json()["engines"]
                    busy_rounds += all(load[e]["running"] for e in ENGINES)
            time.sleep(0.02)
    return latencies, busy_rounds


if __name__ == "__main__":
    main()

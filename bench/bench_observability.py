"""What the access line and the request metrics cost per request (issue 10).

What and why: ``ObservabilityMiddleware`` runs on every request: it times the response, counts
it in the Prometheus registry and writes one log line. On an audio request that is nothing
beside the engine, so this measures it where it is largest: ``GET /api/models?page=1&
page_size=1``, the cheapest route there is, through the whole ASGI application in this process
(httpx's ASGI transport, no sockets, no engines). Three variants of the same application:

* ``bare``: the application without ``ObservabilityMiddleware``;
* ``text``: with it, the access line formatted as text;
* ``json``: with it, the access line formatted as JSON.

The log goes to ``/dev/null`` through a real ``StreamHandler``, so formatting and writing are
counted. The variants run in rounds in rotated order (the machine has 2 shared cores and other
people's tests run on it); each round's median per-request time is kept, and the report gives
the median over rounds and the ratio to ``bare`` measured in the same run.

Run: ``.venv/bin/python bench/bench_observability.py [--requests 400] [--rounds 7]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from fastapi import FastAPI

from voxgate.api.observability import ObservabilityMiddleware
from voxgate.app import create_app
from voxgate.logs import configure_logging
from voxgate.settings import Settings

PATH = "/api/models?page=1&page_size=1"


def build(data_dir: Path, observed: bool) -> FastAPI:
    app = create_app(Settings(data_dir=data_dir))
    if not observed:
        app.user_middleware = [
            m for m in app.user_middleware if m.cls is not ObservabilityMiddleware
        ]
    return app


async def one_round(app: FastAPI, requests: int) -> float:
    """Median seconds per request over ``requests`` sequential requests."""
    transport = httpx.ASGITransport(app=app)
    times = []
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for _ in range(requests):
            began = time.perf_counter()
            response = await client.get(PATH)
            times.append(time.perf_counter() - began)
            assert response.status_code == 200, response.text
    return statistics.median(times)


def log_to_devnull(log_format: str) -> None:
    configure_logging("info", "json" if log_format == "json" else "text")
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(open("/dev/null", "w"))  # noqa: SIM115  (lives as long as the run)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        apps = {
            "bare": build(Path(tmp), observed=False),
            "text": build(Path(tmp), observed=True),
            "json": build(Path(tmp), observed=True),
        }
        results: dict[str, list[float]] = {name: [] for name in apps}
        names = list(apps)
        for round_ in range(args.rounds + 1):  # round 0 warms up and is not kept
            order = names[round_ % 3 :] + names[: round_ % 3]
            for name in order:
                log_to_devnull(name)
                median = await one_round(apps[name], args.requests)
                if round_:
                    results[name].append(median)
    bare = statistics.median(results["bare"])
    report = {
        name: {
            "median_us": round(statistics.median(values) * 1e6, 1),
            "ratio_to_bare": round(statistics.median(values) / bare, 3),
            "rounds_us": [round(v * 1e6, 1) for v in values],
        }
        for name, values in results.items()
    }
    print(json.dumps({"requests_per_round": args.requests, "results": report}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())

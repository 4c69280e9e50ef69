"""The pass-through benchmark's own parts: its request bodies and its profile summary.

The run itself is too long and too noisy for the suite. But its numbers mean something only if
every target is sent the same valid upload, and if the profile's shares count work rather than
waiting. So those parts are pinned here. The bodies go to the real fake upstream over HTTP.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fake_upstream import FakeUpstream, wav_seconds

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from bench_upstream import (
    BOUNDARY,
    Batch,
    Results,
    multipart_body,
    report,
    speech_pcm_16k,
    summarise_phases,
    summarise_profile,
    wav_of_size,
)


@pytest.fixture(scope="module")
def pcm() -> bytes:
    return speech_pcm_16k()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.mark.parametrize("size", [50_000, 2_000_000])
def test_uploads_are_wavs_of_exactly_the_size_asked(pcm: bytes, size: int) -> None:
    wav = wav_of_size(pcm, size)
    assert len(wav) == size
    assert wav_seconds(wav[:64]) == pytest.approx((size - 44) / 32_000, abs=1e-4)


def test_the_multipart_body_arrives_whole(pcm: bytes, upstream: FakeUpstream) -> None:
    wav = wav_of_size(pcm, 50_000)
    body = multipart_body({"model": "whisper-1", "response_format": "json"}, "speech.wav", wav)
    response = httpx.post(
        f"{upstream.base_url}/audio/transcriptions",
        content=body,
        headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["seconds"] == pytest.approx((50_000 - 44) / 32_000, abs=1e-3)
    (record,) = [r for r in upstream.requests() if r["path"].endswith("transcriptions")]
    assert record["fields"] == {"model": "whisper-1", "response_format": "json"}
    assert record["file"]["sha256"] == hashlib.sha256(wav).hexdigest()
    assert record["file"]["size"] == len(wav)


def test_profile_shares_count_work_not_waiting() -> None:
    collapsed = "\n".join(
        [
            # idle: the native loop, aiosqlite's queue get, a parked worker thread
            "<module> (voxgate/__main__.py:3);Runner.run (asyncio/runners.py:118) 50",
            "Thread._bootstrap (threading.py:1002);_connection_worker_thread "
            "(aiosqlite/core.py:59) 40",
            "Thread._bootstrap (threading.py:1002);Queue.get (queue.py:171);"
            "Condition.wait (threading.py:327) 10",
            # work
            "<module> (voxgate/__main__.py:3);relay (voxgate/services/relay.py:9);"
            "Session.execute (sqlalchemy/orm/session.py:2555) 6",
            "<module> (voxgate/__main__.py:3);UpstreamClient.open (voxgate/providers/x.py:1);"
            "AsyncClient.send (httpx/_client.py:1) 3",
            "Thread._bootstrap (threading.py:1002);_connection_worker_thread "
            "(aiosqlite/core.py:63) 1",
        ]
    )
    summary = summarise_profile(collapsed)
    assert summary["idle_samples"] == 100
    assert summary["busy_samples"] == 10
    shares = summary["share_of_busy_pct"]
    assert shares["event loop"] == {
        "ledger and keys: SQLAlchemy": 60.0,
        "upstream client: httpx/httpcore": 30.0,
    }
    assert shares["worker threads"] == {"ledger and keys: aiosqlite": 10.0}


def test_profile_steps_take_the_innermost_step_and_count_hand_offs_apart() -> None:
    root = "<module> (voxgate/__main__.py:3);GatewayMiddleware.__call__ (voxgate/api/gateway.py:9)"
    collapsed = "\n".join(
        [
            f"{root};Runner.run (asyncio/runners.py:118) 50",  # idle
            # the key lookup waking a worker thread: a hand-off, not the lookup
            f"{root};Authenticator.authenticate (voxgate/services/keys.py:1);"
            "run_sync (anyio/to_thread.py:65);Condition.notify (threading.py:382) 4",
            f"{root};Authenticator.authenticate (voxgate/services/keys.py:1);"
            "secret_digest (voxgate/storage/keys.py:39) 2",
            # settle inside the gateway: the innermost step wins
            f"{root};Ticket.finish (voxgate/services/metering.py:2);"
            "Ledger.settle (voxgate/storage/usage.py:3) 2",
            "Thread._bootstrap (threading.py:1002);"
            "Ledger.reserve.<locals>.hold (voxgate/storage/usage.py:140) 1",
            f"{root};RequestResponseCycle.send (uvicorn/protocols/http/httptools_impl.py:524) 1",
        ]
    )
    assert summarise_phases(collapsed) == {
        "thread hand-offs (waking a worker, GIL)": 40.0,
        "auth: key lookup": 20.0,
        "ledger: settle": 20.0,
        "ledger: reserve": 10.0,
        "HTTP server, middleware, framework": 10.0,
    }


def test_the_report_names_added_latency_and_the_ratio_to_litellm() -> None:
    def batch(target: str, p50: float, rps: float) -> Batch:
        return Batch("speech 20 KB", 1, target, 10, 10, {"200": 10}, 1.0, p50, p50, p50, p50,
                     rps, 0.05, 0.0)  # fmt: skip

    results = Results("now", 1.0, {}, "0 0 0")
    results.batches = [
        batch("direct", 1.0, 900),
        batch("voxgate", 3.5, 300),
        batch("litellm", 9, 100),
    ]
    table = report(results)
    assert "| speech 20 KB | 1 | voxgate | 3.50 | 3.50 | +2.50 | 300 | 3.00 | 5.00 | 0 |" in table

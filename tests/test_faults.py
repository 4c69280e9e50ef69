"""Faults: Redis and PostgreSQL outages, a PostgreSQL restart under load, SIGTERM drains.

Each test that stops a dependency runs its own (``tests/dependencies.py``), never the machine's
shared Redis or PostgreSQL. Real servers, real engines, plain HTTP; the ledger is read straight
from the database.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import conftest
import httpx
import pytest
from conftest import (
    LedgerReader,
    StartServer,
    assert_error_envelope,
    audio_path,
    create_key,
    wait_until,
)
from dependencies import own_postgres, own_redis

from voxgate.storage.keys import Limits

# ~1,100 characters, 15 sentences of Piper speech: streams for several seconds.
LONG_TEXT = "It was a bright cold day in April, and the clocks were striking thirteen. " * 15
# ~4,000 characters (the API's limit is 4,096): on a quiet machine Piper streams LONG_TEXT in
# well under a second, so a stream meant to outlast a 1 s shutdown grace needs this much.
LONGEST_TEXT = (LONG_TEXT * 4)[:4000]
SHORT = {"model": "espeak-ng", "voice": "en-us", "input": "Still here."}
SHORT_CLIP = "en-librispeech-1089-134691-0000.flac"  # 2.08 s
CLEAN_EXIT = (0, -signal.SIGTERM)  # uvicorn re-raises the signal it drained for
INTERNALS = ("psycopg", "redis.", "Traceback", "OperationalError", "ConnectionError")


@pytest.fixture(autouse=True)
def patient_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests start a server or two each; on a busy machine loading the engines can take
    longer than the suite's usual start-up bound, which is a wait, not an assertion."""
    monkeypatch.setattr(conftest, "STARTUP_TIMEOUT_S", 600)


def stream_speech(
    http: httpx.Client,
    on_first_event: Callable[[], None] | None = None,
    text: str = LONG_TEXT,
) -> tuple[str, list[dict[str, Any]]]:
    """Stream ``text`` as SSE; call ``on_first_event`` once audio has started to arrive.

    Returns the request id and every event. A body cut short raises (httpx sees the
    connection end before the last chunk), so a complete list ends with speech.audio.done.
    """
    body = {
        "model": "gpt-4o-mini-tts",
        "voice": "coral",
        "input": text,
        "response_format": "mp3",
        "stream_format": "sse",
    }
    events: list[dict[str, Any]] = []
    with http.stream("POST", "/v1/audio/speech", json=body) as response:
        assert response.status_code == 200, response.read()
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
                if len(events) == 1 and on_first_event is not None:
                    on_first_event()
    return request_id, events


def assert_clean_503(response: httpx.Response, code: str) -> None:
    error = assert_error_envelope(response, 503, None)
    assert error["code"] == code, error
    assert int(response.headers["retry-after"]) >= 1
    assert not any(word in response.text for word in INTERNALS), response.text


def get(base_url: str, path: str) -> httpx.Response:
    return httpx.get(f"{base_url}{path}", timeout=30)


# --- Redis ---


def test_redis_outage_mid_stream_leaves_the_response_whole(
    start_server: StartServer, sqlite_url: str
) -> None:
    """Finding 17: Redis dies while a stream runs. Giving back the concurrency slot (just
    before the last body message) fails, but the client still gets every event and the row
    is billed as succeeded."""
    with own_redis() as redis_server:
        key, secret = create_key(sqlite_url, "slot", limits=Limits(max_concurrency=2))
        env = {"VOXGATE_DATABASE_URL": sqlite_url, "VOXGATE_REDIS_URL": redis_server.url}
        with (
            start_server(**env) as server,
            server.http_for(secret) as http,
            LedgerReader(sqlite_url) as ledger,
        ):
            request_id, events = stream_speech(http, on_first_event=redis_server.stop)
            assert events[-1]["type"] == "speech.audio.done"
            row = ledger.settled([request_id])[request_id]
            assert (row["status"], row["http_status"]) == ("succeeded", 200)
            assert row["cost_micros"] > 0
            assert ledger.key(key.id)["spent_micros"] == row["cost_micros"]


def test_redis_down_fails_closed_with_503_and_recovers(
    start_server: StartServer, sqlite_url: str
) -> None:
    """Finding 14, default VOXGATE_LIMITS_ON_REDIS_DOWN=closed: a limited key gets a clear 503
    limits_unavailable (not 500) while Redis is down, readiness says why, and the next request
    after Redis is back is served without a restart."""
    with own_redis() as redis_server:
        _, secret = create_key(sqlite_url, "closed", limits=Limits(rpm=1000, max_concurrency=4))
        env = {"VOXGATE_DATABASE_URL": sqlite_url, "VOXGATE_REDIS_URL": redis_server.url}
        with (
            start_server(**env) as server,
            server.http_for(secret) as http,
            LedgerReader(sqlite_url) as ledger,
        ):
            assert http.post("/v1/audio/speech", json=SHORT).status_code == 200
            assert get(server.base_url, "/health/ready").status_code == 200

            redis_server.stop()
            refused = http.post("/v1/audio/speech", json=SHORT)
            assert_clean_503(refused, "limits_unavailable")
            ready = get(server.base_url, "/health/ready")
            assert ready.status_code == 503
            assert ready.json()["checks"]["redis"] == "unavailable"
            assert get(server.base_url, "/health/live").status_code == 200
            with server.http() as bootstrap:  # no limits: does not need Redis
                assert bootstrap.post("/v1/audio/speech", json=SHORT).status_code == 200

            redis_server.start()
            assert http.post("/v1/audio/speech", json=SHORT).status_code == 200
            assert get(server.base_url, "/health/ready").status_code == 200
            refused_id = refused.headers["x-request-id"]
            row = ledger.settled([refused_id])[refused_id]
            assert (row["status"], row["http_status"], row["cost_micros"]) == ("failed", 503, 0)


def test_redis_down_fails_open_when_configured(start_server: StartServer, sqlite_url: str) -> None:
    """VOXGATE_LIMITS_ON_REDIS_DOWN=open: while Redis is down a key with rpm=1 is served
    without its limit (one warning logged, not one per request); once Redis is back the limit
    applies again."""
    with own_redis() as redis_server:
        _, secret = create_key(sqlite_url, "open", limits=Limits(rpm=1))
        env = {
            "VOXGATE_DATABASE_URL": sqlite_url,
            "VOXGATE_REDIS_URL": redis_server.url,
            "VOXGATE_LIMITS_ON_REDIS_DOWN": "open",
        }
        with start_server(**env) as server, server.http_for(secret) as http:
            redis_server.stop()
            for _ in range(3):  # rpm=1 would refuse the second
                assert http.post("/v1/audio/speech", json=SHORT).status_code == 200
            assert server.log().count("serving without rate and concurrency limits") == 1

            redis_server.start()  # a fresh, empty Redis
            assert http.post("/v1/audio/speech", json=SHORT).status_code == 200
            limited = http.post("/v1/audio/speech", json=SHORT)
            assert limited.status_code == 429, limited.text


# --- PostgreSQL ---


def test_database_down_answers_503_and_recovers(start_server: StartServer) -> None:
    """Finding 14: with PostgreSQL stopped, requests get 503 database_unavailable (not 500),
    readiness is 503 and liveness 200, without internals; once it is back the pool recovers by
    itself. A request refused at reservation during the outage still gets its ledger row."""
    with own_postgres() as postgres:
        _, secret = create_key(postgres.url, "pg-down")
        env = {"VOXGATE_DATABASE_URL": postgres.url, "VOXGATE_INSTANCE_ID": "pg-down"}
        with (
            start_server(**env) as server,
            server.http_for(secret) as keyed,
            server.http() as bootstrap,
        ):
            assert keyed.post("/v1/audio/speech", json=SHORT).status_code == 200

            postgres.stop()
            assert_clean_503(keyed.post("/v1/audio/speech", json=SHORT), "database_unavailable")
            refused = bootstrap.post("/v1/audio/speech", json=SHORT)  # admitted, then refused
            assert_clean_503(refused, "database_unavailable")
            ready = get(server.base_url, "/health/ready")
            assert ready.status_code == 503, ready.text
            assert ready.json()["checks"]["database"] == "unavailable"
            assert not any(word in ready.text for word in INTERNALS)
            assert get(server.base_url, "/health/live").status_code == 200

            postgres.start()
            assert keyed.post("/v1/audio/speech", json=SHORT).status_code == 200
            assert get(server.base_url, "/health/ready").status_code == 200
            refused_id = refused.headers["x-request-id"]
            with LedgerReader(postgres.url) as ledger:  # replayed from the journal
                row = ledger.settled([refused_id])[refused_id]
            assert (row["status"], row["http_status"]) == ("failed", 503)


def test_settles_lost_in_an_outage_are_billed_live_and_after_a_restart(
    start_server: StartServer,
) -> None:
    """Finding 16: PostgreSQL stops while a stream is sent. The complete response is billed
    once PostgreSQL is back (journal replayed by the live replica); and if the replica is
    SIGKILLed before that, its restart replays the journal before reaping its own rows, so the
    row is billed as succeeded rather than interrupted at cost 0."""
    with own_postgres() as postgres:
        key, secret = create_key(postgres.url, "journal", budget_micros=10_000_000)
        env = {"VOXGATE_DATABASE_URL": postgres.url, "VOXGATE_INSTANCE_ID": "journal"}
        with (
            start_server(**env) as server,
            server.http_for(secret) as http,
            LedgerReader(postgres.url) as ledger,
        ):
            live_id, events = stream_speech(http, on_first_event=postgres.stop)
            assert events[-1]["type"] == "speech.audio.done"
            postgres.start()
            live = ledger.settled([live_id])[live_id]
            assert (live["status"], live["http_status"]) == ("succeeded", 200)
            assert live["cost_micros"] > 0

            killed_id, events = stream_speech(http, on_first_event=postgres.stop)
            assert events[-1]["type"] == "speech.audio.done"
            wait_until(
                lambda: f"ledger write for {killed_id} journaled" in server.log(),
                "the failed settle to be journaled",
            )
            server.process.kill()
            server.process.wait(timeout=30)
        postgres.start()
        with LedgerReader(postgres.url) as ledger:
            rows = {row["request_id"]: row for row in ledger.rows(key.id)}
            assert rows[killed_id]["status"] == "pending"
            with start_server(**env):
                killed = {row["request_id"]: row for row in ledger.rows(key.id)}[killed_id]
                assert (killed["status"], killed["cost_micros"]) == (
                    "succeeded",
                    live["cost_micros"],
                )
                money = ledger.key(key.id)
                assert money["spent_micros"] == 2 * live["cost_micros"]
                assert money["reserved_micros"] == 0


def test_postgres_restart_mid_load_bills_each_request_once(start_server: StartServer) -> None:
    """Task 5: PostgreSQL restarts (connections cut) while several requests run. Each either
    completes and is settled once, or fails cleanly (an error envelope); afterwards no row is
    pending, none is duplicated, and the key's spend is exactly the sum of its rows."""
    with own_postgres() as postgres:
        key, secret = create_key(postgres.url, "restart", budget_micros=100_000_000)
        env = {"VOXGATE_DATABASE_URL": postgres.url, "VOXGATE_INSTANCE_ID": "pg-restart"}
        with (
            start_server(**env) as server,
            server.http_for(secret) as http,
            ThreadPoolExecutor(6) as pool,
        ):
            started = pool.submit(stream_speech, http, postgres.restart)

            def transcribe() -> httpx.Response:
                files = {"file": (SHORT_CLIP, audio_path(SHORT_CLIP).read_bytes())}
                data = {"model": "whisper-1"}
                return http.post("/v1/audio/transcriptions", files=files, data=data)

            others = [pool.submit(stream_speech, http) for _ in range(2)]
            others += [pool.submit(transcribe) for _ in range(2)]
            others += [pool.submit(http.post, "/v1/audio/speech", json=SHORT) for _ in range(2)]
            restarted_id, events = started.result(timeout=600)
            assert events[-1]["type"] == "speech.audio.done"
            outcomes: dict[str, int] = {restarted_id: 200}
            for future in others:
                try:
                    result = future.result(timeout=600)
                except AssertionError:  # a stream refused with 503 before it began
                    continue
                if isinstance(result, httpx.Response):
                    if result.status_code != 200:
                        assert_clean_503(result, "database_unavailable")
                    outcomes[result.headers["x-request-id"]] = result.status_code
                else:
                    request_id, events = result
                    assert events[-1]["type"] == "speech.audio.done"
                    outcomes[request_id] = 200
            with LedgerReader(postgres.url) as ledger:
                wait_until(
                    lambda: all(row["status"] != "pending" for row in ledger.rows()),
                    "no pending row",
                )
                rows = ledger.rows(key.id)
                money = ledger.key(key.id)
        ids = [row["request_id"] for row in rows]
        assert len(ids) == len(set(ids)), "a request has two rows"
        by_id = {row["request_id"]: row for row in rows}
        for request_id, status in outcomes.items():
            if status == 200:
                assert by_id[request_id]["status"] == "succeeded", by_id.get(request_id)
                assert by_id[request_id]["cost_micros"] > 0
        assert money["spent_micros"] == sum(row["cost_micros"] for row in rows)
        assert money["reserved_micros"] == 0


# --- SIGTERM ---


def test_sigterm_drains_in_flight_requests(start_server: StartServer, sqlite_url: str) -> None:
    """Finding 19: SIGTERM while a long speech stream runs: new connections are refused at
    once, the stream still completes, its row is settled, then the process exits cleanly."""
    env = {"VOXGATE_DATABASE_URL": sqlite_url, "VOXGATE_SHUTDOWN_GRACE_S": "600"}
    with (
        start_server(**env) as server,
        server.http(timeout=600) as http,
        LedgerReader(sqlite_url) as ledger,
    ):

        def refused() -> bool:
            try:
                httpx.get(f"{server.base_url}/health/live", timeout=5)
            except httpx.ConnectError:
                return True
            return False

        def terminate() -> None:
            server.process.send_signal(signal.SIGTERM)
            wait_until(refused, "new connections refused")

        request_id, events = stream_speech(http, on_first_event=terminate)
        assert events[-1]["type"] == "speech.audio.done"
        assert server.process.wait(timeout=120) in CLEAN_EXIT
        row = ledger.settled([request_id], timeout=1)[request_id]
        assert (row["status"], row["http_status"]) == ("succeeded", 200)
        assert row["input_characters"] == len(LONG_TEXT)
    assert "draining in-flight requests" in server.log()


def test_sigterm_after_the_grace_period_settles_what_was_cut(
    start_server: StartServer, sqlite_url: str
) -> None:
    """Finding 19: with VOXGATE_SHUTDOWN_GRACE_S=1 a stream still running after the grace
    period is cancelled, and its row is settled as cancelled (billed for what was sent), never
    left pending."""
    env = {"VOXGATE_DATABASE_URL": sqlite_url, "VOXGATE_SHUTDOWN_GRACE_S": "1"}
    with (
        start_server(**env) as server,
        server.http() as http,
        LedgerReader(sqlite_url) as ledger,
    ):
        with pytest.raises(httpx.TransportError):
            stream_speech(
                http,
                on_first_event=lambda: server.process.send_signal(signal.SIGTERM),
                text=LONGEST_TEXT,
            )
        assert server.process.wait(timeout=120) in CLEAN_EXIT
        (row,) = ledger.rows()
        assert row["status"] == "cancelled", row
        assert 0 < row["input_characters"] < len(LONGEST_TEXT)
        assert row["reserved_micros"] == 0


def test_readiness_reports_draining_on_an_open_connection_during_the_delay(
    start_server: StartServer, sqlite_url: str
) -> None:
    """Issue 8 item 5: with VOXGATE_SHUTDOWN_DELAY_S, a SIGTERM leaves the replica serving,
    and a load balancer's keep-alive connection asking /health/ready hears 503 draining (without
    the delay uvicorn closes that connection at once, so nobody can be told). A second SIGTERM
    skips the rest of the delay and the process drains and exits."""
    env = {"VOXGATE_DATABASE_URL": sqlite_url, "VOXGATE_SHUTDOWN_DELAY_S": "600"}
    with start_server(**env) as server, server.http(timeout=60) as http:
        assert http.get("/health/ready").status_code == 200  # the connection is open
        server.process.send_signal(signal.SIGTERM)
        wait_until(lambda: "serving on for" in server.log(), "the stop to be noticed")
        ready = http.get("/health/ready")
        assert ready.status_code == 503, ready.text
        assert ready.json()["checks"]["shutdown"] == "draining"
        assert http.get("/health/live").status_code == 200  # still serving
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=120) in CLEAN_EXIT
    assert "draining in-flight requests" in server.log()

"""The speech engine queue against real servers: clients that leave, bounded waits and jobs.

A "long job" is a 4000-character tts-1 stream. Its client reads the first chunk and then as
it pleases, so the job holds Piper's only worker for as long as the test needs (until it is
closed, or until the server's job timeout stops it), whatever the speed of the machine.
Queued requests are plain HTTP on a raw socket, so a test can close the connection while the
request is still waiting.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import API_KEY, LedgerReader, Server, StartServer, create_key, wait_until
from test_concurrency import engine_load, wait_idle

SENTENCE = "It was a bright cold day in April, and the clocks were striking thirteen. "
LONG_TEXT = (SENTENCE * 60)[:4000]  # about 200 s of audio: minutes of Piper on a busy machine
PER_CHARACTER = 15  # tts-1's catalog price in micro-USD


def speech_body(text: str) -> dict[str, str]:
    return {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"}


@dataclass(frozen=True)
class Queue:
    server: Server
    database_url: str
    ledger: LedgerReader


def start_queue_server(
    start_server: StartServer, tmp_path_factory: pytest.TempPathFactory, **env: str
) -> Iterator[Queue]:
    database_url = f"sqlite:///{tmp_path_factory.mktemp('queue-db') / 'voxgate.db'}"
    with (
        LedgerReader(database_url) as ledger,
        start_server(VOXGATE_DATABASE_URL=database_url, **env) as server,
    ):
        yield Queue(server, database_url, ledger)


@pytest.fixture(scope="module")
def patient(start_server: StartServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Queue]:
    """Waits are not bounded here (so a queued request stays queued until the test acts)."""
    yield from start_queue_server(
        start_server,
        tmp_path_factory,
        VOXGATE_ENGINE_MAX_WAIT_S="3600",
        VOXGATE_ENGINE_QUEUE_TIMEOUT_S="3600",
    )


@pytest.fixture(scope="module")
def bounded(start_server: StartServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Queue]:
    """A 1 s queue timeout and a 10 s job timeout (a long job outlasts the queue timeout)."""
    yield from start_queue_server(
        start_server,
        tmp_path_factory,
        VOXGATE_ENGINE_MAX_WAIT_S="3600",
        VOXGATE_ENGINE_QUEUE_TIMEOUT_S="1",
        VOXGATE_ENGINE_JOB_TIMEOUT_S="10",
    )


@contextmanager
def long_job(server: Server) -> Iterator[tuple[httpx.Response, Iterator[bytes]]]:
    """A running tts-1 stream, its first chunk received, and the rest of its chunks; leaving
    the context abandons it."""
    wait_idle(server, "piper")
    with (
        server.http() as client,
        client.stream("POST", "/v1/audio/speech", json=speech_body(LONG_TEXT)) as response,
    ):
        assert response.status_code == 200
        chunks = response.iter_raw()  # keep a reference: dropping it closes the connection
        assert next(chunks)
        assert engine_load(server, "piper")["running"] == 1
        yield response, chunks


def send_raw(server: Server, body: dict[str, str], secret: str = API_KEY) -> socket.socket:
    """Send a speech request on a new connection and return the socket, unread."""
    url = urlsplit(server.base_url)
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/audio/speech HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Authorization: Bearer {secret}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    sock = socket.create_connection((url.hostname, url.port), timeout=60)
    sock.sendall(head.encode() + payload)
    return sock


def test_leaving_a_queued_speech_request_does_not_stall_piper(patient: Queue) -> None:
    """Issue 8, finding 1: a queued "Hi." whose client leaves neither runs nor keeps Piper's
    slot; once the long job is gone, the engine is idle and a new "Hi." is answered."""
    server = patient.server
    with long_job(server):
        queued = send_raw(server, speech_body("Hi."))
        wait_until(lambda: engine_load(server, "piper")["queued"] == 1, "Hi. to be queued")
        queued.close()
        # It leaves the queue at once, while the long job still runs.
        wait_until(lambda: engine_load(server, "piper")["queued"] == 0, "Hi. to leave", 30)
        assert engine_load(server, "piper")["running"] == 1
    wait_until(
        lambda: engine_load(server, "piper") == {"running": 0, "queued": 0}, "Piper idle", 60
    )
    with server.http(timeout=60) as client:
        response = client.post("/v1/audio/speech", json=speech_body("Hi."))
    assert response.status_code == 200 and response.content
    assert engine_load(server, "piper") == {"running": 0, "queued": 0}


def test_leaving_the_queue_releases_the_reservation_at_once(patient: Queue) -> None:
    """Issue 8, finding 18: the abandoned request's row is settled `cancelled` at cost 0 and
    its reservation given back while the job ahead of it is still running."""
    key, secret = create_key(patient.database_url, "queue-test", budget_micros=1_000_000)
    server = patient.server
    with long_job(server):
        queued = send_raw(server, speech_body("Hi."), secret)
        wait_until(lambda: patient.ledger.key(key.id)["reserved_micros"] > 0, "a reservation")
        assert engine_load(server, "piper")["queued"] == 1
        queued.close()
        wait_until(lambda: patient.ledger.key(key.id)["reserved_micros"] == 0, "release", 30)
        assert engine_load(server, "piper") == {"running": 1, "queued": 0}
        [row] = patient.ledger.rows(key.id)
        assert row["status"] == "cancelled"
        assert (row["cost_micros"], row["output_audio_ms"]) == (0, 0)
    wait_idle(server, "piper")
    [row] = patient.ledger.rows(key.id)
    assert row["status"] == "cancelled"  # and it never ran later
    assert patient.ledger.key(key.id)["spent_micros"] == 0


def test_a_queued_request_gives_up_after_the_queue_timeout(bounded: Queue) -> None:
    """Issue 8, findings 6 and 13: behind a long job, "Hi." waits 1 s, then gets 503
    server_overloaded with Retry-After instead of waiting for minutes."""
    server = bounded.server
    with long_job(server), server.http(timeout=60) as client:
        response = client.post("/v1/audio/speech", json=speech_body("Hi."))
        assert engine_load(server, "piper")["running"] == 1
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "server_overloaded")
    assert "VOXGATE_ENGINE_QUEUE_TIMEOUT_S" in error["message"]
    assert response.headers["retry-after"].isdigit()
    assert int(response.headers["retry-after"]) >= 1


@pytest.fixture(scope="module")
def cut_short(
    start_server: StartServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Queue]:
    """A 1 s job timeout. On a quiet machine Piper reads the 4000 characters in a few seconds
    (not minutes) and the API takes no longer input, so only a limit this small is sure to cut
    the job; its first sentence still comes well within it."""
    yield from start_queue_server(
        start_server,
        tmp_path_factory,
        VOXGATE_ENGINE_MAX_WAIT_S="3600",
        VOXGATE_ENGINE_QUEUE_TIMEOUT_S="3600",
        VOXGATE_ENGINE_JOB_TIMEOUT_S="1",
    )


def test_a_job_over_the_time_limit_ends_its_stream_with_an_error(cut_short: Queue) -> None:
    """Issue 8, finding 6: the 4000-character job is stopped after 1 s of engine time. Its
    stream, already begun, is cut without its end (an error for the client, not a short
    success), the row is not `succeeded`, and the engine is free again."""
    server = cut_short.server
    with long_job(server) as (response, chunks), pytest.raises(httpx.RemoteProtocolError):
        for _ in chunks:
            pass
    request_id = response.headers["x-request-id"]
    row = cut_short.ledger.settled([request_id])[request_id]
    assert row["status"] == "failed" and row["cost_micros"] == 0
    wait_until(
        lambda: engine_load(server, "piper") == {"running": 0, "queued": 0}, "Piper idle", 60
    )
    assert "VOXGATE_ENGINE_JOB_TIMEOUT_S" in server.log()
    with server.http(timeout=60) as client:
        assert client.post("/v1/audio/speech", json=speech_body("Hi.")).status_code == 200


def test_one_key_flooding_the_queue_does_not_starve_another(patient: Queue) -> None:
    """Issue 8 item 2: behind a long job, key A queues eight "Hi." and key B then one. Piper
    serves B's before most of A's (fair queueing between keys; first come first served made
    B's the ninth)."""
    _, other = create_key(patient.database_url, "queue-fair")
    server = patient.server
    done: list[str] = []

    def say(who: str, secret: str) -> None:
        with server.http_for(secret, timeout=600) as client:
            response = client.post("/v1/audio/speech", json=speech_body("Hi."))
        assert response.status_code == 200, response.text
        done.append(who)

    with ThreadPoolExecutor(9) as pool:
        with long_job(server):
            flood = [pool.submit(say, "A", API_KEY) for _ in range(8)]
            wait_until(lambda: engine_load(server, "piper")["queued"] == 8, "A's eight queued")
            single = pool.submit(say, "B", other)
            wait_until(lambda: engine_load(server, "piper")["queued"] == 9, "B's one queued")
        for future in [*flood, single]:
            future.result(timeout=600)  # a guard against a hang, not a speed claim
    assert sorted(done) == ["A"] * 8 + ["B"]
    assert done.index("B") <= 1, done

"""Scale-out: replicas sharing one PostgreSQL database and one Redis act as one gateway.

``TestTwoReplicas`` runs two servers on one database and Redis (started once for the class) and
checks that a key's rate limit and budget are enforced once for both, and that heavy parallel
traffic leaves exactly one correct ledger row per request. The last test SIGKILLs a replica in
the middle of a request and restarts it under the same instance id.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from conftest import (
    LedgerReader,
    Server,
    StartServer,
    audio_path,
    create_key,
    flushed_redis,
    fresh_postgres_database,
    sse_events,
    wait_until,
)

from voxgate.storage.keys import ApiKey, Limits

SHORT_CLIP = "en-librispeech-1089-134691-0000.flac"  # 2.08 s
LONG_CLIP = "en-ljspeech-LJ001-0001-to-0032-long.flac"  # 222 s, ~15 s to transcribe
PER_CHARACTER = 15  # espeak-ng: $15 per million characters, in micro-USD
WHISPER_1_PER_S = 100  # whisper-1: $0.0001 per second, in micro-USD


@dataclass(frozen=True)
class Cluster:
    servers: tuple[Server, Server]
    database_url: str
    ledger: LedgerReader

    def key(self, **options: Any) -> tuple[ApiKey, str]:
        return create_key(self.database_url, "scale-out-test", **options)


@dataclass(frozen=True)
class Outcome:
    """What a client saw: status, x-request-id, the error code of a refusal, Retry-After."""

    status: int
    request_id: str
    code: str | None = None
    retry_after: str | None = None
    kind: str = ""


@pytest.fixture(scope="class")
def cluster(start_server: StartServer) -> Iterator[Cluster]:
    """Replicas scale-a and scale-b on one fresh PostgreSQL database and one Redis."""
    with (
        fresh_postgres_database() as database_url,
        flushed_redis() as redis_url,
        ExitStack() as stack,
    ):
        env = {
            "VOXGATE_DATABASE_URL": database_url,
            "VOXGATE_REDIS_URL": redis_url,
            "VOXGATE_WHISPER_BEAM_SIZE": "1",  # faster; metering does not depend on it
        }
        ledger = stack.enter_context(LedgerReader(database_url))
        with ThreadPoolExecutor(2) as pool:  # start both at once
            starting = [
                pool.submit(stack.enter_context, start_server(VOXGATE_INSTANCE_ID=name, **env))
                for name in ("scale-a", "scale-b")
            ]
            a, b = (future.result() for future in starting)
        yield Cluster((a, b), database_url, ledger)


def sdk_call(client: openai.OpenAI, text: str) -> Outcome:
    """One espeak-ng speech request through the SDK, refusals included."""
    try:
        raw = client.audio.speech.with_raw_response.create(
            model="espeak-ng", voice="en-us", input=text
        )
        assert raw.content
        return Outcome(raw.status_code, raw.headers["x-request-id"])
    except openai.RateLimitError as error:
        headers = error.response.headers
        return Outcome(429, headers["x-request-id"], error.code, headers.get("retry-after"))


class TestTwoReplicas:
    def test_requests_per_minute_are_one_limit_for_both_replicas(self, cluster: Cluster) -> None:
        """rpm=2 and 6 concurrent requests alternating between the replicas: exactly 2
        succeed (not 2 per replica), the other 4 are 429 rate_limit_exceeded with Retry-After,
        one row each. (Exact as long as all are charged within 30 s: a bucket drains one
        request per 60/rpm s, so a higher rpm would make the count depend on machine speed.)"""
        key, secret = cluster.key(limits=Limits(rpm=2))
        clients = [server.sdk_for(secret) for server in cluster.servers]
        with ThreadPoolExecutor(6) as pool:
            outcomes = list(pool.map(lambda i: sdk_call(clients[i % 2], "Shared."), range(6)))
        ok = [o for o in outcomes if o.status == 200]
        refused = [o for o in outcomes if o.status != 200]
        assert len(ok) == 2, outcomes
        for outcome in refused:
            assert (outcome.status, outcome.code) == (429, "rate_limit_exceeded"), outcome
            assert outcome.retry_after is not None
            assert 1 <= int(outcome.retry_after) <= 30  # one request drains in 60/2 s
        rows = cluster.ledger.settled(o.request_id for o in outcomes)
        assert len(cluster.ledger.rows(key.id)) == 6
        assert Counter(row["status"] for row in rows.values()) == {"succeeded": 2, "rejected": 4}

    def test_budget_is_one_budget_for_both_replicas(self, cluster: Cluster) -> None:
        """A budget of exactly 4 requests and 12 parallel requests over both replicas: exactly
        4 succeed, 8 are 429 insufficient_quota; spent is exactly 4 requests, nothing held."""
        text = "Shared budget."
        cost = len(text) * PER_CHARACTER
        key, secret = cluster.key(budget_micros=4 * cost)
        clients = [server.sdk_for(secret) for server in cluster.servers]
        with ThreadPoolExecutor(12) as pool:
            outcomes = list(pool.map(lambda i: sdk_call(clients[i % 2], text), range(12)))
        assert sum(o.status == 200 for o in outcomes) == 4, outcomes
        for outcome in outcomes:
            if outcome.status != 200:
                assert (outcome.status, outcome.code) == (429, "insufficient_quota"), outcome
                assert outcome.retry_after is None
        rows = cluster.ledger.settled(o.request_id for o in outcomes)
        assert sum(row["cost_micros"] for row in rows.values()) == 4 * cost
        money = cluster.ledger.key(key.id)
        assert money["spent_micros"] == 4 * cost <= money["budget_micros"]
        assert money["reserved_micros"] == 0

    def test_fifty_parallel_mixed_requests_each_leave_one_row_and_never_overspend(
        self, cluster: Cluster
    ) -> None:
        """50 concurrent speech (audio and SSE), transcription and translation requests over
        both replicas, with a budget for about half of them: spent <= budget, exactly one row per
        x-request-id (no missing, no extra), rows add up to spent, nothing pending or held."""
        clip = audio_path(SHORT_CLIP).read_bytes()
        jobs: list[tuple[str, dict[str, Any]]] = []
        for i in range(50):
            if i % 10 == 3:
                jobs.append(("transcription", {"files": {"file": (SHORT_CLIP, clip)}}))
            elif i % 25 == 7:
                jobs.append(("translation", {"files": {"file": (SHORT_CLIP, clip)}}))
            else:
                text = f"Request {i} says" + " hello" * (i % 7)
                sse = i % 10 == 9
                jobs.append(("speech-sse" if sse else "speech", {"text": text}))
        estimate = sum(
            len(job["text"]) * PER_CHARACTER if "text" in job else 208 for _, job in jobs
        )
        budget = estimate // 2
        key, secret = cluster.key(budget_micros=budget)

        with ExitStack() as stack:
            clients = [stack.enter_context(s.http_for(secret)) for s in cluster.servers]
            with ThreadPoolExecutor(50) as pool:
                outcomes = list(
                    pool.map(lambda i: _http_call(clients[i % 2], *jobs[i]), range(len(jobs)))
                )

        statuses = [o.status for o in outcomes]
        assert 200 in statuses and 429 in statuses, statuses
        for outcome in outcomes:
            assert outcome.request_id.startswith("req_")
            if outcome.status == 429:
                assert outcome.code == "insufficient_quota", outcome
            elif outcome.status == 503:  # an engine's queue was full: allowed, must cost 0
                assert outcome.code == "server_overloaded", outcome
            else:
                assert outcome.status == 200, outcome
        request_ids = [o.request_id for o in outcomes]
        assert len(set(request_ids)) == 50

        rows = cluster.ledger.settled(request_ids)
        key_rows = cluster.ledger.rows(key.id)
        assert sorted(row["request_id"] for row in key_rows) == sorted(request_ids)
        expected_status = {200: "succeeded", 429: "rejected", 503: "failed"}
        for outcome in outcomes:
            row = rows[outcome.request_id]
            assert row["http_status"] == outcome.status
            assert row["status"] == expected_status[outcome.status], (outcome, row)
            assert row["reserved_micros"] == 0
            if outcome.status != 200:
                assert row["cost_micros"] == 0
            elif outcome.kind.startswith("speech"):
                assert row["cost_micros"] == row["input_characters"] * PER_CHARACTER > 0
            else:
                assert abs(row["cost_micros"] - row["input_audio_ms"] * WHISPER_1_PER_S / 1000) <= 1
        money = cluster.ledger.key(key.id)
        assert money["spent_micros"] <= budget
        assert money["spent_micros"] == sum(row["cost_micros"] for row in key_rows)
        assert money["reserved_micros"] == 0
        assert not [row for row in key_rows if row["status"] == "pending"]


def _http_call(client: httpx.Client, kind: str, job: dict[str, Any]) -> Outcome:
    """One request of ``kind`` over plain HTTP; reads SSE bodies to the end."""
    if kind.startswith("speech"):
        body = {"model": "espeak-ng", "voice": "en-us", "input": job["text"]}
        if kind == "speech-sse":
            body["stream_format"] = "sse"
        request = client.build_request("POST", "/v1/audio/speech", json=body)
    else:
        path = "/v1/audio/transcriptions" if kind == "transcription" else "/v1/audio/translations"
        data = {"model": "whisper-1"}
        request = client.build_request("POST", path, files=job["files"], data=data)
    response = client.send(request)
    request_id = response.headers.get("x-request-id", "")
    if response.status_code != 200:
        error = response.json()["error"]
        retry_after = response.headers.get("retry-after")
        return Outcome(response.status_code, request_id, error["code"], retry_after, kind)
    if kind == "speech-sse":
        assert sse_events(response)[-1]["type"] == "speech.audio.done"
    return Outcome(200, request_id, kind=kind)


@pytest.fixture
def postgres_ledger(postgres_url: str) -> Iterator[LedgerReader]:
    with LedgerReader(postgres_url) as ledger:
        yield ledger


def test_replica_killed_mid_request_settles_its_open_row_when_restarted(
    start_server: StartServer, postgres_url: str, redis_url: str, postgres_ledger: LedgerReader
) -> None:
    """SIGKILL a replica while a long transcription is reserved: its row stays pending. Restarted
    under the same VOXGATE_INSTANCE_ID, it settles that row "interrupted" at cost 0 during
    start-up: nothing held, spent unchanged, and the dead request's Redis concurrency slot freed,
    so the key (max_concurrency=1) works at once rather than when the slot's lease runs out."""
    ledger = postgres_ledger
    key, secret = create_key(
        postgres_url, "killed", budget_micros=1_000_000, limits=Limits(max_concurrency=1)
    )
    env = {
        "VOXGATE_DATABASE_URL": postgres_url,
        "VOXGATE_REDIS_URL": redis_url,
        "VOXGATE_INSTANCE_ID": "scale-killed",
    }
    speech = {"model": "espeak-ng", "voice": "en-us", "input": "Before the crash."}
    cost = len(speech["input"]) * PER_CHARACTER

    with (
        start_server(**env) as doomed,
        doomed.http_for(secret) as http,
        ThreadPoolExecutor(1) as pool,
    ):
        before = http.post("/v1/audio/speech", json=speech)
        assert before.status_code == 200
        ledger.settled([before.headers["x-request-id"]])
        assert ledger.key(key.id)["spent_micros"] == cost
        files = {"file": (LONG_CLIP, audio_path(LONG_CLIP).read_bytes())}
        running = pool.submit(_post_until_dropped, http, files, {"model": "whisper-1"})
        wait_until(
            lambda: any(row["status"] == "pending" for row in ledger.rows(key.id)),
            "the long transcription's pending row",
        )
        doomed.process.kill()  # SIGKILL: no shutdown, nothing settled
        doomed.process.wait(timeout=30)
        assert isinstance(running.result(timeout=60), httpx.TransportError)
    (open_row,) = [row for row in ledger.rows(key.id) if row["status"] == "pending"]
    assert open_row["instance_id"] == "scale-killed"
    assert open_row["reserved_micros"] > 0
    assert ledger.key(key.id)["reserved_micros"] == open_row["reserved_micros"]

    with (
        start_server(**env) as restarted,
        restarted.http_for(secret, timeout=60) as http,
    ):
        # Settled during start-up, before the server reported healthy.
        row = {r["request_id"]: r for r in ledger.rows(key.id)}[open_row["request_id"]]
        assert (row["status"], row["http_status"]) == ("interrupted", None)
        assert row["cost_micros"] == row["reserved_micros"] == 0
        money = ledger.key(key.id)
        assert (money["spent_micros"], money["reserved_micros"]) == (cost, 0)

        # The restart also freed the dead request's concurrency slot: no wait for its lease.
        after = http.post("/v1/audio/speech", json=speech)
        assert after.status_code == 200, after.text
    last = after.headers["x-request-id"]
    assert ledger.settled([last])[last]["status"] == "succeeded"
    money = ledger.key(key.id)
    assert (money["spent_micros"], money["reserved_micros"]) == (2 * cost, 0)


def _post_until_dropped(
    http: httpx.Client, files: dict[str, Any], data: dict[str, str]
) -> httpx.Response | httpx.TransportError:
    """POST a transcription; return the connection error if the server dies under it."""
    try:
        return http.post("/v1/audio/transcriptions", files=files, data=data)
    except httpx.TransportError as error:
        return error

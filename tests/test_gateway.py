"""Metering at the gateway: units and cost, per-key limits, budgets, partial billing, auth.

One server (its own SQLite database, in-memory limits) is shared by the module. Every test
creates its own keys straight in that database, so their limits and budgets never interact, and
reads the outcome from the ledger (``usage_records``, ``api_keys``), not from the usage API.
Rows are written just after a response's last byte, so tests wait for them to settle.
"""

from __future__ import annotations

import math
import re
import socket
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
    revoke_key,
    sse_events,
    wait_until,
)

from voxgate.storage.keys import ApiKey, Limits

SHORT_CLIP = "en-librispeech-1089-134691-0000.flac"  # 2.08 s
MEDIUM_CLIP = "en-librispeech-1089-134691-0001.flac"  # 5.42 s
FOUR_SECOND_CLIP = "en-fleurs-004.ogg"  # 4.33 s
SONNET_CLIP = "en-librivox-shakespeare-sonnet001.mp3"  # 53 s, a few seconds to transcribe
TRANSCRIPT_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
# Catalog prices in micro-USD: whisper-1 $0.0001/s, gpt-4o-mini-transcribe $0.00005/s,
# espeak-ng and tts-1 $15 per million characters.
WHISPER_1_PER_S = 100
MINI_TRANSCRIBE_PER_S = 50
PER_CHARACTER = 15
PCM_BYTES_PER_S = 24_000 * 2  # speech "pcm" is 24 kHz s16le mono


@dataclass(frozen=True)
class Gateway:
    server: Server
    database_url: str
    ledger: LedgerReader

    def key(self, **options: Any) -> tuple[ApiKey, str]:
        return create_key(self.database_url, "gateway-test", **options)


@pytest.fixture(scope="module")
def gateway(
    start_server: StartServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """The module's server, on its own SQLite database, with limits in its memory."""
    database_url = f"sqlite:///{tmp_path_factory.mktemp('gateway-db') / 'voxgate.db'}"
    # Beam size 1 decodes about twice as fast; metering does not depend on it.
    with (
        LedgerReader(database_url) as ledger,
        start_server(VOXGATE_DATABASE_URL=database_url, VOXGATE_WHISPER_BEAM_SIZE="1") as server,
    ):
        yield Gateway(server, database_url, ledger)


def go_duration_s(value: str) -> float:
    """Parse an ``x-ratelimit-reset-*`` value (Go duration: ``24ms``, ``1.2s``, ``6m0s``)."""
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)(ms|s))", value)
    assert match, f"not a Go duration: {value!r}"
    minutes, amount, unit = match.groups()
    seconds = float(amount) / (1000 if unit == "ms" else 1)
    return int(minutes or 0) * 60 + seconds


def retry_after_s(error: openai.APIStatusError) -> int:
    """The integer ``Retry-After`` of a refusal (fails if absent or not an integer)."""
    value = error.response.headers.get("retry-after")
    assert value is not None and value.isdigit(), f"Retry-After {value!r}"
    return int(value)


def speak(sdk: openai.OpenAI, text: str, model: str = "espeak-ng", **options: Any) -> str:
    """One speech request through the SDK; returns its request id (raises on an error)."""
    voice = options.pop("voice", "en-us" if model == "espeak-ng" else "alloy")
    raw = sdk.audio.speech.with_raw_response.create(model=model, voice=voice, input=text, **options)
    assert raw.status_code == 200 and raw.content
    return str(raw.headers["x-request-id"])


# --- units and cost do not depend on how the result is delivered ---------------------------------


@pytest.mark.parametrize("endpoint", ["transcriptions", "translations"])
def test_audio_is_metered_the_same_in_every_response_format_and_when_streamed(
    gateway: Gateway, endpoint: str
) -> None:
    """json, text, srt, vtt, verbose_json and stream=true of one clip give identical rows: the
    decoded duration (verbose_json ``duration``) in ms, billed at whisper-1's price."""
    key, secret = gateway.key()
    clip = audio_path(SHORT_CLIP).read_bytes()
    url = f"/v1/audio/{endpoint}"
    request_ids: dict[str, str] = {}
    duration_s = 0.0
    with gateway.server.http_for(secret) as http:
        for response_format in TRANSCRIPT_FORMATS:
            data = {"model": "whisper-1", "response_format": response_format}
            response = http.post(url, files={"file": (SHORT_CLIP, clip)}, data=data)
            assert response.status_code == 200, response.text
            request_ids[response_format] = response.headers["x-request-id"]
            if response_format == "verbose_json":
                duration_s = response.json()["duration"]
        data = {"model": "whisper-1", "stream": "true"}
        with http.stream("POST", url, files={"file": (SHORT_CLIP, clip)}, data=data) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = sse_events(response)
            request_ids["stream"] = response.headers["x-request-id"]
    assert events and events[-1]["type"] == "transcript.text.done"
    assert duration_s == pytest.approx(2.08, abs=0.05)

    rows = gateway.ledger.settled(request_ids.values())
    by_format = {name: rows[request_id] for name, request_id in request_ids.items()}
    for name, row in by_format.items():
        assert (row["status"], row["http_status"]) == ("succeeded", 200), name
        assert (row["api_key_id"], row["endpoint"], row["model"]) == (key.id, url, "whisper-1")
        assert row["input_characters"] == 0 and row["reserved_micros"] == 0
    units = {name: row["input_audio_ms"] for name, row in by_format.items()}
    costs = {name: row["cost_micros"] for name, row in by_format.items()}
    assert len(set(units.values())) == 1, units
    assert len(set(costs.values())) == 1, costs
    input_audio_ms = units["json"]
    assert abs(input_audio_ms - duration_s * 1000) <= 1
    assert abs(costs["json"] - input_audio_ms * WHISPER_1_PER_S / 1000) <= 1
    money = gateway.ledger.key(key.id)
    assert money["spent_micros"] == sum(costs.values())
    assert money["reserved_micros"] == 0


def test_transcription_is_billed_at_the_price_of_the_requested_model_id(gateway: Gateway) -> None:
    """gpt-4o-mini-transcribe and whisper-1 run the same model on the same clip; the alias'
    own price applies: half of whisper-1's for the same decoded milliseconds."""
    _, secret = gateway.key()
    clip = audio_path(SHORT_CLIP).read_bytes()
    sdk = gateway.server.sdk_for(secret)
    request_ids = {}
    for model in ("whisper-1", "gpt-4o-mini-transcribe"):
        raw = sdk.audio.transcriptions.with_raw_response.create(
            model=model, file=(SHORT_CLIP, clip)
        )
        request_ids[model] = raw.headers["x-request-id"]
    rows = gateway.ledger.settled(request_ids.values())
    full, mini = (rows[request_ids[m]] for m in ("whisper-1", "gpt-4o-mini-transcribe"))
    assert full["input_audio_ms"] == mini["input_audio_ms"] > 0
    assert mini["model"] == "gpt-4o-mini-transcribe"
    assert abs(full["cost_micros"] - full["input_audio_ms"] * WHISPER_1_PER_S / 1000) <= 1
    assert abs(mini["cost_micros"] - mini["input_audio_ms"] * MINI_TRANSCRIBE_PER_S / 1000) <= 1


def test_speech_is_metered_by_input_characters_in_every_format_and_over_sse(
    gateway: Gateway,
) -> None:
    """The six audio formats and stream_format=sse bill the same len(input) characters (code
    points, not UTF-8 bytes) at $15 per million, with the same synthesised duration."""
    key, secret = gateway.key()
    text = "Metering counts characters, not bytes: naïve café, 5 € — ok? 🎉"
    assert len(text.encode()) > len(text)
    sdk = gateway.server.sdk_for(secret)
    request_ids = {fmt: speak(sdk, text, response_format=fmt) for fmt in SPEECH_FORMATS}
    body = {"model": "espeak-ng", "voice": "en-us", "input": text, "stream_format": "sse"}
    with (
        gateway.server.http_for(secret) as http,
        http.stream("POST", "/v1/audio/speech", json=body) as sse,
    ):
        assert sse.status_code == 200
        events = sse_events(sse)
        request_ids["sse"] = sse.headers["x-request-id"]
    assert events[-1]["type"] == "speech.audio.done"
    assert events[-1]["usage"]["input_tokens"] == len(text)

    rows = gateway.ledger.settled(request_ids.values())
    by_format = {name: rows[request_id] for name, request_id in request_ids.items()}
    for name, row in by_format.items():
        assert (row["status"], row["http_status"], row["model"]) == (
            "succeeded",
            200,
            "espeak-ng",
        ), name
        assert row["input_characters"] == len(text), name
        assert row["cost_micros"] == len(text) * PER_CHARACTER, name
        assert row["input_audio_ms"] == 0
    output_ms = {name: row["output_audio_ms"] for name, row in by_format.items()}
    assert output_ms["mp3"] > 0
    assert max(output_ms.values()) - min(output_ms.values()) <= 1, output_ms  # float sums
    money = gateway.ledger.key(key.id)
    assert money["spent_micros"] == 7 * len(text) * PER_CHARACTER
    assert money["reserved_micros"] == 0


# --- per-key limits and their headers ------------------------------------------------------------


# Buckets drain continuously (limit/60 per second), so a test that fills one and then expects a
# refusal depends on time: the refusal comes only while the bucket has not drained enough. These
# tests send the requests that must be charged together at the same time (charges happen at
# admission, before the engines run) and size the bucket so that the refusal holds for most of a
# minute after the first charge. None of them waits for a request before sending the next.


def at_once(calls: list[Any]) -> list[Any]:
    """Run the zero-argument ``calls`` concurrently; their results (or raised API errors)."""

    def attempt(call: Any) -> Any:
        try:
            return call()
        except openai.APIStatusError as error:
            return error

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(attempt, calls))


def test_requests_per_minute_limit_sets_headers_and_refuses_with_retry_after(
    gateway: Gateway,
) -> None:
    """rpm=3 and four requests at once: three carry x-ratelimit-*-requests (remaining 2, 1, 0;
    reset growing, at most a minute); the fourth is 429 rate_limit_exceeded with an integer
    Retry-After. (The fourth is refused as long as all four are charged within 20 s.)"""
    _, secret = gateway.key(limits=Limits(rpm=3))
    sdk = gateway.server.sdk_for(secret)

    def one() -> Any:
        return sdk.audio.speech.with_raw_response.create(
            model="espeak-ng", voice="en-us", input="One."
        )

    outcomes = at_once([one] * 4)
    served = [o for o in outcomes if not isinstance(o, openai.APIStatusError)]
    refused = [o for o in outcomes if isinstance(o, openai.APIStatusError)]
    assert len(served) == 3 and len(refused) == 1, outcomes
    for raw in served:
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
    by_level = sorted(
        served, key=lambda raw: int(raw.headers["x-ratelimit-remaining-requests"]), reverse=True
    )
    remaining = [int(raw.headers["x-ratelimit-remaining-requests"]) for raw in by_level]
    resets = [go_duration_s(raw.headers["x-ratelimit-reset-requests"]) for raw in by_level]
    assert remaining == [2, 1, 0]
    assert 0 < resets[0] < resets[1] < resets[2] <= 60
    (error,) = refused
    assert isinstance(error, openai.RateLimitError)
    assert error.code == "rate_limit_exceeded"
    assert error.type == "requests"
    assert 1 <= retry_after_s(error) <= 20  # one request drains in 60/3 s


def test_audio_seconds_per_minute_limit(gateway: Gateway) -> None:
    """5 audio-seconds/min: a 5.4 s clip can never fit (429, no Retry-After); of two 4.3 s clips
    sent at once one fits and reports x-ratelimit-*-audio-seconds, the other is 429 with
    Retry-After. (It is refused as long as both are charged within 44 s of each other.)"""
    _, secret = gateway.key(limits=Limits(audio_seconds_per_minute=5))
    sdk = gateway.server.sdk_for(secret)
    with pytest.raises(openai.RateLimitError) as never:
        sdk.audio.transcriptions.create(
            model="whisper-1", file=(MEDIUM_CLIP, audio_path(MEDIUM_CLIP).read_bytes())
        )
    assert never.value.code == "rate_limit_exceeded"
    assert "retry-after" not in never.value.response.headers

    clip = (FOUR_SECOND_CLIP, audio_path(FOUR_SECOND_CLIP).read_bytes())

    def one() -> Any:
        return sdk.audio.transcriptions.with_raw_response.create(model="whisper-1", file=clip)

    outcomes = at_once([one] * 2)
    served = [o for o in outcomes if not isinstance(o, openai.APIStatusError)]
    refused = [o for o in outcomes if isinstance(o, openai.APIStatusError)]
    assert len(served) == 1 and len(refused) == 1, outcomes
    (raw,) = served
    assert raw.headers["x-ratelimit-limit-audio-seconds"] == "5"
    assert raw.headers["x-ratelimit-remaining-audio-seconds"] == "0"  # floor(5 - 4.33)
    assert 0 < go_duration_s(raw.headers["x-ratelimit-reset-audio-seconds"]) <= 60
    (full,) = refused
    assert isinstance(full, openai.RateLimitError)
    assert full.code == "rate_limit_exceeded"
    assert 1 <= retry_after_s(full) <= math.ceil(60 * 4.33 / 5)


def test_characters_per_minute_limit(gateway: Gateway) -> None:
    """100 characters/min: 101 characters never fit (429, no Retry-After); of two 90-character
    requests sent at once one fits and reports x-ratelimit-*-characters (10 left), the other is
    refused with Retry-After. (It is refused as long as both are charged within 48 s.)"""
    _, secret = gateway.key(limits=Limits(characters_per_minute=100))
    sdk = gateway.server.sdk_for(secret)
    with pytest.raises(openai.RateLimitError) as never:
        sdk.audio.speech.create(model="espeak-ng", voice="en-us", input="a" * 101)
    assert never.value.code == "rate_limit_exceeded"
    assert "retry-after" not in never.value.response.headers

    text = "A sentence of thirty letters, " * 2 + "and a last one of thirty here."
    assert len(text) == 90

    def one() -> Any:
        return sdk.audio.speech.with_raw_response.create(
            model="espeak-ng", voice="en-us", input=text
        )

    outcomes = at_once([one] * 2)
    served = [o for o in outcomes if not isinstance(o, openai.APIStatusError)]
    refused = [o for o in outcomes if isinstance(o, openai.APIStatusError)]
    assert len(served) == 1 and len(refused) == 1, outcomes
    (raw,) = served
    assert raw.headers["x-ratelimit-limit-characters"] == "100"
    assert raw.headers["x-ratelimit-remaining-characters"] == "10"
    assert 0 < go_duration_s(raw.headers["x-ratelimit-reset-characters"]) <= 60
    (full,) = refused
    assert isinstance(full, openai.RateLimitError)
    assert full.code == "rate_limit_exceeded"
    assert 1 <= retry_after_s(full) <= math.ceil(60 * 90 / 100)


def test_max_concurrency_refuses_a_second_request_while_one_runs(gateway: Gateway) -> None:
    """max_concurrency=1: while a transcription runs, another request gets 429
    concurrency_limit_exceeded (Retry-After 1); once it has finished, requests work again."""
    key, secret = gateway.key(limits=Limits(max_concurrency=1))
    sdk = gateway.server.sdk_for(secret)
    sonnet = (SONNET_CLIP, audio_path(SONNET_CLIP).read_bytes())
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(
            sdk.audio.transcriptions.with_raw_response.create, model="whisper-1", file=sonnet
        )
        wait_until(
            lambda: any(row["status"] == "pending" for row in gateway.ledger.rows(key.id)),
            "the long transcription to be admitted and reserved",
        )
        with pytest.raises(openai.RateLimitError) as refused:
            sdk.audio.speech.create(model="espeak-ng", voice="en-us", input="Me too.")
        first = running.result(timeout=600)  # a guard against a hang, not a speed claim
    assert refused.value.code == "concurrency_limit_exceeded"
    assert retry_after_s(refused.value) == 1
    assert first.status_code == 200
    gateway.ledger.settled([first.headers["x-request-id"]])
    request_id = speak(sdk, "My turn now.")
    assert gateway.ledger.settled([request_id])[request_id]["status"] == "succeeded"


def test_max_concurrency_admits_requests_sent_one_after_another(gateway: Gateway) -> None:
    """max_concurrency=1 limits requests *in flight*: a client that waits for each response
    before sending the next (here on one keep-alive connection) is never refused."""
    _, secret = gateway.key(limits=Limits(max_concurrency=1))
    body = {"model": "espeak-ng", "voice": "en-us", "input": "Next."}
    with gateway.server.http_for(secret) as http:
        statuses = [http.post("/v1/audio/speech", json=body).status_code for _ in range(10)]
    assert statuses == [200] * 10


# --- budgets -------------------------------------------------------------------------------------


def test_budget_is_never_exceeded_and_refusals_are_insufficient_quota(gateway: Gateway) -> None:
    """Budget 1005 µ$: 50 characters (750) fit; 50 more are refused with insufficient_quota
    (openai.RateLimitError, no Retry-After); 17 characters (255) still fit exactly; then even 1
    character is refused. Spent ends at exactly the budget, nothing held."""
    key, secret = gateway.key(budget_micros=1005)
    sdk = gateway.server.sdk_for(secret)
    ids = [speak(sdk, "x" * 50)]
    with pytest.raises(openai.RateLimitError) as refused:
        speak(sdk, "y" * 50)
    error = refused.value
    assert (error.status_code, error.code, error.type) == (
        429,
        "insufficient_quota",
        "insufficient_quota",
    )
    assert isinstance(error.body, dict) and error.body["type"] == "insufficient_quota"
    assert "retry-after" not in error.response.headers
    ids.append(error.response.headers["x-request-id"])
    ids.append(speak(sdk, "z" * 17))
    with pytest.raises(openai.RateLimitError) as refused_again:
        speak(sdk, "z")
    assert refused_again.value.code == "insufficient_quota"
    ids.append(refused_again.value.response.headers["x-request-id"])

    rows = gateway.ledger.settled(ids)
    assert [rows[i]["status"] for i in ids] == ["succeeded", "rejected", "succeeded", "rejected"]
    assert [rows[i]["cost_micros"] for i in ids] == [750, 0, 255, 0]
    money = gateway.ledger.key(key.id)
    assert (money["spent_micros"], money["reserved_micros"]) == (1005, 0)


def test_failed_requests_cost_nothing_and_release_their_reservation(gateway: Gateway) -> None:
    """Invalid audio, an unknown voice and Piper input with nothing to speak (refused after its
    cost was reserved) all fail with 400 and cost 0; the budget, exactly one more request,
    still covers that request afterwards."""
    key, secret = gateway.key(budget_micros=len("Hello.") * PER_CHARACTER)
    sdk = gateway.server.sdk_for(secret)
    ids = []
    with pytest.raises(openai.BadRequestError) as bad_audio:
        sdk.audio.transcriptions.create(model="whisper-1", file=("a.wav", b"RIFF not audio"))
    assert bad_audio.value.code == "invalid_audio"
    with pytest.raises(openai.BadRequestError) as bad_voice:
        speak(sdk, "Hello.", voice="no-such-voice")
    assert bad_voice.value.param == "voice"
    with pytest.raises(openai.BadRequestError) as unspeakable:
        speak(sdk, "...", model="tts-1")
    assert unspeakable.value.param == "input"
    for failure in (bad_audio, bad_voice, unspeakable):
        ids.append(failure.value.response.headers["x-request-id"])
    rows = gateway.ledger.settled(ids)
    for request_id in ids:
        assert (rows[request_id]["status"], rows[request_id]["http_status"]) == ("failed", 400)
        assert rows[request_id]["cost_micros"] == rows[request_id]["reserved_micros"] == 0
    money = gateway.ledger.key(key.id)
    assert (money["spent_micros"], money["reserved_micros"]) == (0, 0)

    ok = speak(sdk, "Hello.")  # the whole budget: nothing may still be held
    assert gateway.ledger.settled([ok])[ok]["cost_micros"] == len("Hello.") * PER_CHARACTER
    money = gateway.ledger.key(key.id)
    assert (money["spent_micros"], money["reserved_micros"]) == (90, 0)


# --- clients that leave --------------------------------------------------------------------------


def test_client_leaving_a_speech_stream_pays_only_for_what_it_received(gateway: Gateway) -> None:
    """A Piper stream of twelve sentences, abandoned after its first seconds of audio, is
    settled "cancelled" with 0 < characters < len(input), billed for those characters only."""
    key, secret = gateway.key()
    text = " ".join(
        f"This is sentence number {n}, which makes the stream last a while." for n in range(12)
    )
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"}
    received = 0
    with (
        gateway.server.http_for(secret) as http,
        http.stream("POST", "/v1/audio/speech", json=body) as r,
    ):
        assert r.status_code == 200
        request_id = r.headers["x-request-id"]
        for chunk in r.iter_raw():
            received += len(chunk)
            if received > 5 * PCM_BYTES_PER_S:  # past the first sentence (about 4 s)
                break
    row = gateway.ledger.settled([request_id])[request_id]
    assert (row["status"], row["http_status"]) == ("cancelled", 200)
    assert 0 < row["input_characters"] < len(text)
    assert row["cost_micros"] == row["input_characters"] * PER_CHARACTER
    assert 0 < row["cost_micros"] < len(text) * PER_CHARACTER
    assert row["output_audio_ms"] > 0
    money = gateway.ledger.key(key.id)
    assert (money["spent_micros"], money["reserved_micros"]) == (row["cost_micros"], 0)


def test_client_leaving_before_a_transcription_is_ready_pays_nothing(gateway: Gateway) -> None:
    """A non-streamed transcription whose client disconnects while it runs is "cancelled"
    (HTTP 499) at cost 0, and its reservation is released."""
    key, secret = gateway.key()
    request = httpx.Request(
        "POST",
        f"{gateway.server.base_url}/v1/audio/transcriptions",
        files={"file": (SONNET_CLIP, audio_path(SONNET_CLIP).read_bytes())},
        data={"model": "whisper-1"},
        headers={"Authorization": f"Bearer {secret}"},
    )
    body = request.read()
    head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items() if k != "host")
    port = int(gateway.server.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode())
        sock.sendall(body)
        wait_until(
            lambda: any(row["status"] == "pending" for row in gateway.ledger.rows(key.id)),
            "the transcription to be reserved",
        )
    (row,) = gateway.ledger.rows(key.id)
    row = gateway.ledger.settled([row["request_id"]])[row["request_id"]]
    assert (row["status"], row["http_status"]) == ("cancelled", 499)
    assert row["cost_micros"] == row["input_audio_ms"] == row["reserved_micros"] == 0
    money = gateway.ledger.key(key.id)
    assert (money["spent_micros"], money["reserved_micros"]) == (0, 0)


# --- one row per request -------------------------------------------------------------------------


def test_every_request_by_a_key_has_exactly_one_row_under_its_request_id(
    gateway: Gateway,
) -> None:
    """Successes, 400s, 403, 404 and a 429 each leave exactly one row whose request_id is the
    response's x-request-id and whose http_status is the response's; 401s leave none."""
    # The 429 comes from a request larger than a whole minute's characters: no refill, however
    # slow the machine, can let it through (an rpm limit could refill between requests).
    key, secret = gateway.key(
        models=["espeak-ng", "whisper-1"], limits=Limits(characters_per_minute=50)
    )
    too_long = "This sentence is far longer than the key's whole minute allows."
    short = {"file": (SHORT_CLIP, audio_path(SHORT_CLIP).read_bytes())}
    speech = "/v1/audio/speech"
    say = {"model": "espeak-ng", "voice": "en-us", "input": "One row each."}
    calls: list[tuple[int, str, dict[str, Any]]] = [
        (200, speech, {"json": say}),
        (200, "/v1/audio/transcriptions", {"files": short, "data": {"model": "whisper-1"}}),
        (400, speech, {"json": {**say, "voice": "no-such-voice"}}),
        (400, speech, {"json": {"model": "espeak-ng", "voice": "en-us"}}),  # no input
        (
            400,
            "/v1/audio/transcriptions",
            {"files": {"file": ("x.mp3", b"not audio")}, "data": {"model": "whisper-1"}},
        ),
        (403, speech, {"json": {**say, "model": "tts-1"}}),
        (404, speech, {"json": {**say, "model": "no-such-model"}}),
        (429, speech, {"json": {**say, "input": too_long}}),
    ]
    statuses: dict[str, int] = {}
    with gateway.server.http_for(secret) as http:
        for expected, path, options in calls:
            response = http.post(path, **options)
            assert response.status_code == expected, (path, options.get("json"), response.text)
            statuses[response.headers["x-request-id"]] = expected
    unauthenticated = []
    for bad_secret in ("sk-vg-not-a-key", key.redacted):
        with gateway.server.http_for(bad_secret) as http:
            response = http.post(speech, json=say)
        assert response.status_code == 401
        unauthenticated.append(response.headers["x-request-id"])

    rows = gateway.ledger.settled(statuses)
    assert sorted(row["request_id"] for row in gateway.ledger.rows(key.id)) == sorted(statuses)
    expected_status = {200: "succeeded", 400: "failed", 404: "failed", 403: "rejected"}
    expected_status[429] = "rejected"
    for request_id, http_status in statuses.items():
        assert rows[request_id]["http_status"] == http_status
        assert rows[request_id]["status"] == expected_status[http_status], http_status
    all_ids = {row["request_id"] for row in gateway.ledger.rows()}
    assert not all_ids & set(unauthenticated)


# --- authentication and the model allowlist ------------------------------------------------------


def test_revoked_and_expired_keys_get_401_and_leave_no_row(gateway: Gateway) -> None:
    """A key that worked gets 401 invalid_api_key once revoked; so does a key past expires_at."""
    revoked, revoked_secret = gateway.key()
    expired, expired_secret = gateway.key(expires_at=int(time.time()) - 1)
    worked = speak(gateway.server.sdk_for(revoked_secret), "Still valid.")
    gateway.ledger.settled([worked])
    revoke_key(gateway.database_url, revoked.id)
    refused_ids = []
    for secret, reason in ((revoked_secret, "revoked"), (expired_secret, "expired")):
        with pytest.raises(openai.AuthenticationError) as refused:
            speak(gateway.server.sdk_for(secret), "Let me in.")
        assert refused.value.code == "invalid_api_key"
        assert reason in refused.value.message
        refused_ids.append(refused.value.response.headers["x-request-id"])
    all_ids = {row["request_id"] for row in gateway.ledger.rows()}
    assert not all_ids & set(refused_ids)
    assert [row["request_id"] for row in gateway.ledger.rows(revoked.id)] == [worked]
    assert gateway.ledger.rows(expired.id) == []


def test_a_key_changed_by_any_writer_is_refused_on_its_next_request(gateway: Gateway) -> None:
    """The server keeps no copy of a key: a plain SQL write by another program (no KeyStore, so
    no cache hook could see it) that expires a key or revokes it takes effect at once, and a key
    given back its validity works again at once."""
    key, secret = gateway.key()
    sdk = gateway.server.sdk_for(secret)
    path = gateway.database_url.removeprefix("sqlite:///")
    for column, reason in (("expires_at", "expired"), ("revoked_at", "revoked")):
        speak(sdk, "Valid.")
        with sqlite3.connect(path) as conn:
            conn.execute(f"UPDATE api_keys SET {column} = ? WHERE id = ?", (1, key.id))
        with pytest.raises(openai.AuthenticationError) as refused:
            speak(sdk, "Let me in.")
        assert reason in refused.value.message
        with sqlite3.connect(path) as conn:
            conn.execute(f"UPDATE api_keys SET {column} = NULL WHERE id = ?", (key.id,))
    speak(sdk, "Valid again.")


def test_model_allowlist_refuses_other_models_with_403_model_not_allowed(
    gateway: Gateway,
) -> None:
    """A key allowed only espeak-ng may use it, but tts-1 and whisper-1 are 403
    model_not_allowed with param "model", refused before any work and at no cost."""
    key, secret = gateway.key(models=["espeak-ng"])
    sdk = gateway.server.sdk_for(secret)
    allowed = speak(sdk, "Allowed.")
    refused_ids = []
    with pytest.raises(openai.PermissionDeniedError) as speech_refused:
        speak(sdk, "Not allowed.", model="tts-1")
    with pytest.raises(openai.PermissionDeniedError) as transcription_refused:
        sdk.audio.transcriptions.create(
            model="whisper-1", file=(SHORT_CLIP, audio_path(SHORT_CLIP).read_bytes())
        )
    for refused in (speech_refused, transcription_refused):
        assert (refused.value.code, refused.value.param) == ("model_not_allowed", "model")
        refused_ids.append(refused.value.response.headers["x-request-id"])
    rows = gateway.ledger.settled([allowed, *refused_ids])
    assert rows[allowed]["status"] == "succeeded"
    for request_id in refused_ids:
        assert (rows[request_id]["status"], rows[request_id]["http_status"]) == ("rejected", 403)
        assert rows[request_id]["cost_micros"] == rows[request_id]["input_audio_ms"] == 0
    assert gateway.ledger.key(key.id)["spent_micros"] == len("Allowed.") * PER_CHARACTER


# --- a dependency that fails -------------------------------------------------------------------


def test_an_unreachable_redis_is_a_503_with_the_request_id_not_a_refusal(
    start_server: StartServer, sqlite_url: str
) -> None:
    """With Redis down (and the default VOXGATE_LIMITS_ON_REDIS_DOWN=closed), a limited key's
    request fails cleanly: a retryable 503 ``limits_unavailable`` envelope that names the request
    id in its header and message, and a "failed" row (not a "rejected" 429), so operators are not
    told that their customers hit a limit."""
    with start_server(
        VOXGATE_DATABASE_URL=sqlite_url, VOXGATE_REDIS_URL="redis://127.0.0.1:1/0"
    ) as server:
        _, secret = create_key(sqlite_url, "no-redis", limits=Limits(rpm=100))
        with server.http_for(secret, timeout=60) as http:
            response = http.post(
                "/v1/audio/speech",
                json={"model": "espeak-ng", "voice": "en-us", "input": "Hello."},
            )
    assert response.status_code == 503, response.text
    assert response.headers["x-should-retry"] == "true"
    assert "retry-after" in response.headers
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "limits_unavailable")
    request_id = response.headers["x-request-id"]
    assert request_id in error["message"]
    with LedgerReader(sqlite_url) as ledger:
        row = ledger.settled([request_id])[request_id]
    assert (row["status"], row["http_status"], row["cost_micros"]) == ("failed", 503, 0)

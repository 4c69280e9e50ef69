"""Upstream providers (issue 7), end to end: real voxgate servers in front of the fake upstream
(tests/fake_upstream.py, a real HTTP server that misbehaves by model name), called with the
official SDK and httpx; fallback goes to the real local engines with real audio.

One gateway serves every routed model below; each test names the models it needs and resets
the fake first. A second voxgate, with no local engine, is chained in front of the first.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import (
    API_KEY,
    LedgerReader,
    Server,
    StartServer,
    assert_error_envelope,
    audio_path,
    create_key,
    free_port,
    sse_events,
    wait_until,
)
from fake_upstream import DEFAULT_TEXT, FakeUpstream

UPSTREAM_KEY = "sk-upstream-provider-secret"
SHORT_CLIP = "en-librispeech-1089-134686-0001.flac"  # 3.27 s, "STUFF IT INTO YOU HIS BELLY…"
SHORT_CLIP_S = 3.27
LONG_CLIP = "en-ljspeech-LJ001-0001-to-0032-long.flac"  # 5.7 MB FLAC
LONG_CLIP_S = 221.75
PER_SECOND = 0.0001  # $ per second for every routed speech-to-text model below
PER_M_CHARS = 15.0


def _stt(model_id: str, *serve: str) -> str:
    targets = ", ".join(f'"{target}"' for target in serve)
    return (
        f'[[models]]\nid = "{model_id}"\nfeatures = ["speech-to-text", "translation"]\n'
        f"pricing = {{ per_second = {PER_SECOND} }}\nserve = [{targets}]\n\n"
    )


def _tts(model_id: str, *serve: str) -> str:
    targets = ", ".join(f'"{target}"' for target in serve)
    return (
        f'[[models]]\nid = "{model_id}"\nfeatures = ["text-to-speech"]\n'
        f"pricing = {{ input = {PER_M_CHARS} }}\nserve = [{targets}]\n\n"
    )


def gateway_config(up: FakeUpstream) -> str:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    providers = f"""
[providers.fake]
base_url = "{up.base_url}"
api_key_env = "FAKE_UPSTREAM_KEY"
backoff_base_s = 0.01

[providers.dead]
base_url = "{dead}"
backoff_base_s = 0.01

[providers.slowp]
base_url = "{up.base_url}"
api_key_env = "FAKE_UPSTREAM_KEY"
timeout_s = 0.5
max_retries = 0

[providers.authp]
base_url = "{up.base_url}"
api_key_env = "FAKE_UPSTREAM_KEY"

[providers.brk]
base_url = "{up.base_url}"
api_key_env = "FAKE_UPSTREAM_KEY"
max_retries = 0
breaker_failures = 2
breaker_cooldown_s = 1.5

"""
    return providers + "".join(
        [
            _stt("up-whisper", "fake:whisper-1"),
            _stt("up-503", "fake:fail-503", "fake:whisper-1"),
            _stt("up-flaky", "fake:flaky-1"),
            _stt("up-reset", "fake:reset", "fake:whisper-1"),
            _stt("up-429-local", "fake:fail-429", "local:whisper-base"),
            _stt("up-local-first", "local:whisper-base", "fake:whisper-1"),
            _stt("up-bad", "fake:bad-request", "local:whisper-base"),
            _stt("up-auth", "authp:auth-fail"),
            _stt("up-inflate", "fake:inflate"),
            _stt("up-500", "fake:fail-500"),
            _tts("up-tts", "fake:tts-1"),
            _tts("up-drip", "fake:drip-400"),
            _tts("up-cut", "fake:cut"),
            _tts("up-slow", "slowp:slow-3", "fake:tts-1"),
            _tts("up-dead-local", "dead:tts-1", "local:piper-joe"),
            _tts("up-brk", "brk:fail-500", "fake:tts-1"),
            _tts("up-brk-ok", "brk:tts-1"),
            # An operator re-routing OpenAI's own name.
            _tts("tts-1", "fake:tts-1", "local:piper-joe"),
        ]
    )


@pytest.fixture(scope="module")
def up() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('upstream-db') / 'voxgate.db'}"


@pytest.fixture(scope="module")
def gateway(
    up: FakeUpstream,
    gateway_db: str,
    start_server: StartServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    config = tmp_path_factory.mktemp("upstream-config") / "voxgate.toml"
    config.write_text(gateway_config(up))
    with start_server(
        VOXGATE_CONFIG_FILE=str(config),
        VOXGATE_DATABASE_URL=gateway_db,
        FAKE_UPSTREAM_KEY=UPSTREAM_KEY,  # the provider's key, read from the environment
    ) as server:
        yield server


@pytest.fixture
def fake(up: FakeUpstream, gateway: Server) -> FakeUpstream:
    up.reset()
    return up


def _clip() -> bytes:
    return audio_path(SHORT_CLIP).read_bytes()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _transcribe(server: Server, model: str, data: bytes, **fields: str) -> httpx.Response:
    with server.http() as http:
        return http.post(
            "/v1/audio/transcriptions",
            data={"model": model, **fields},
            files={"file": ("clip.flac", data, "audio/flac")},
        )


def _speak(server: Server, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "voice": "alloy", "input": "Hello there.", **extra}
    with server.http() as http:
        return http.post("/v1/audio/speech", json=body)


# --- routing and the catalog ---------------------------------------------------------------


def test_routed_models_are_listed_with_their_provider(gateway: Server) -> None:
    ids = {model.id for model in gateway.sdk().models.list().data}
    assert {"up-whisper", "up-tts", "whisper-base", "piper-joe"} <= ids
    records = httpx.get(f"{gateway.base_url}/api/models").json()["data"]
    by_id = {record["id"]: record for record in records}
    assert by_id["up-whisper"]["provider_code"] == "fake"
    assert by_id["up-whisper"]["pricing"]["per_second"] == pytest.approx(PER_SECOND)
    assert by_id["tts-1"]["provider_code"] == "fake"  # re-routed by the config file
    assert by_id["tts-1"]["alias_of"] is None
    assert by_id["whisper-base"]["provider_code"] == "local"


def test_transcription_is_routed_with_the_providers_key_only(
    gateway: Server, fake: FakeUpstream
) -> None:
    data = _clip()
    response = gateway.sdk().audio.transcriptions.with_raw_response.create(
        model="up-whisper", file=("clip.flac", data)
    )
    assert response.headers["x-voxgate-route"] == "fake:whisper-1"
    assert response.parse().text == DEFAULT_TEXT
    (record,) = fake.requests()
    assert record["path"] == "/v1/audio/transcriptions"
    assert record["model"] == "whisper-1"
    assert record["file"]["sha256"] == _sha(data)
    assert record["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert all(API_KEY not in value for value in record["headers"].values())


def test_fields_are_passed_on_as_sent_even_unknown_ones(
    gateway: Server, fake: FakeUpstream
) -> None:
    response = _transcribe(
        gateway,
        "up-whisper",
        _clip(),
        language="en",
        prompt="Stew and turnips.",
        response_format="verbose_json",
        temperature="0.2",
        keywords="turnips",  # a field this server does not know
    )
    assert response.status_code == 200, response.text
    (record,) = fake.requests()
    fields = record["fields"]
    assert fields["model"] == "whisper-1"
    assert fields["language"] == "en"
    assert fields["prompt"] == "Stew and turnips."
    assert fields["response_format"] == "verbose_json"
    assert fields["temperature"] == "0.2"
    assert fields["keywords"] == "turnips"


def test_translation_is_routed(gateway: Server, fake: FakeUpstream) -> None:
    response = gateway.sdk().audio.translations.with_raw_response.create(
        model="up-whisper", file=("clip.flac", _clip())
    )
    assert response.headers["x-voxgate-route"] == "fake:whisper-1"
    assert response.parse().text == DEFAULT_TEXT
    assert [r["path"] for r in fake.requests()] == ["/v1/audio/translations"]


def test_speech_passes_through_every_option(gateway: Server, fake: FakeUpstream) -> None:
    with gateway.sdk().audio.speech.with_streaming_response.create(
        model="up-tts",
        voice="nova",
        input="Hello there.",
        response_format="wav",
        speed=1.25,
        instructions="Cheerfully.",
    ) as response:
        audio = response.read()
        assert response.headers["x-voxgate-route"] == "fake:tts-1"
        assert response.headers["content-type"] == "audio/wav"
    assert audio[:4] == b"RIFF"
    (record,) = fake.requests()
    assert record["json"] == {
        "model": "tts-1",
        "voice": "nova",
        "input": "Hello there.",
        "response_format": "wav",
        "speed": 1.25,
        "instructions": "Cheerfully.",
    }
    assert record["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_a_shipped_local_model_names_its_route_too(
    gateway: Server, gateway_db: str, metered_key: str
) -> None:
    with gateway.http_for(metered_key) as http:
        response = http.post(
            "/v1/audio/speech", json={"model": "piper-joe", "voice": "joe", "input": "Hi."}
        )
    assert response.status_code == 200
    assert response.headers["x-voxgate-route"] == "local:piper-joe"
    assert _row(gateway_db, response.headers["x-request-id"])["route"] == "local:piper-joe"


def test_a_shipped_local_transcription_model_takes_the_same_path(
    gateway: Server, gateway_db: str, metered_key: str
) -> None:
    """whisper-1 (an alias of the local whisper-base) walks its implicit chain like any model."""
    with gateway.http_for(metered_key) as http:
        response = http.post(
            "/v1/audio/transcriptions",
            data={"model": "whisper-1"},
            files={"file": ("clip.flac", _clip(), "audio/flac")},
        )
    assert response.status_code == 200, response.text
    assert "belly" in response.json()["text"].lower()
    assert response.headers["x-voxgate-route"] == "local:whisper-base"
    assert response.headers["x-voxgate-model"] == "whisper-base"
    row = _row(gateway_db, response.headers["x-request-id"])
    assert row["route"] == "local:whisper-base"
    assert row["input_audio_ms"] == pytest.approx(SHORT_CLIP_S * 1000, abs=20)


def test_a_chain_that_starts_with_the_local_engines_is_served_there(
    gateway: Server, fake: FakeUpstream
) -> None:
    """A config-file model whose first target is local (start-up used to refuse it, taking
    it for a local model without an engine)."""
    response = _transcribe(gateway, "up-local-first", _clip())
    assert response.status_code == 200, response.text
    assert response.headers["x-voxgate-route"] == "local:whisper-base"
    assert "belly" in response.json()["text"].lower()
    assert fake.requests() == []


def test_the_local_engines_checks_are_the_same_on_every_chain(
    gateway: Server, fake: FakeUpstream
) -> None:
    """One local path: a language outside the candidates is refused for a shipped alias and a
    routed model alike (the routed path used to skip this check and transcribe)."""
    for model in ("whisper-1", "up-local-first"):
        with gateway.http() as http:
            refused = http.post(
                "/v1/audio/transcriptions",
                data={"model": model, "language": "en", "languages[]": "de"},
                files={"file": ("clip.flac", _clip(), "audio/flac")},
            )
        assert_error_envelope(refused, 400, "languages")
    assert fake.requests() == []


# --- retries, fallback, breaker ------------------------------------------------------------


def test_503_is_retried_then_falls_back_replaying_the_same_bytes(
    gateway: Server, fake: FakeUpstream
) -> None:
    data = _clip()
    response = _transcribe(gateway, "up-503", data)
    assert response.status_code == 200, response.text
    assert response.headers["x-voxgate-route"] == "fake:whisper-1"
    records = fake.requests()
    assert [r["model"] for r in records] == ["fail-503", "fail-503", "whisper-1"]
    assert {r["file"]["sha256"] for r in records} == {_sha(data)}
    assert {r["file"]["size"] for r in records} == {len(data)}


def test_a_large_upload_is_replayed_from_disk_and_billed_on_its_real_length(
    gateway: Server, fake: FakeUpstream, gateway_db: str, metered_key: str
) -> None:
    """5.7 MB (past the 4 MiB kept in memory, so spooled to disk): three attempts, one row."""
    data = audio_path(LONG_CLIP).read_bytes()
    with gateway.http_for(metered_key) as http:
        response = http.post(
            "/v1/audio/transcriptions",
            data={"model": "up-503"},
            files={"file": ("long.flac", data, "audio/flac")},
        )
    assert response.status_code == 200, response.text
    records = fake.requests()
    assert len(records) == 3
    assert {(r["file"]["sha256"], r["file"]["size"]) for r in records} == {(_sha(data), len(data))}
    row = _row(gateway_db, response.headers["x-request-id"])
    assert row["input_audio_ms"] == pytest.approx(LONG_CLIP_S * 1000, rel=0.01)


def test_flaky_upstream_succeeds_on_the_retry(gateway: Server, fake: FakeUpstream) -> None:
    response = _transcribe(gateway, "up-flaky", _clip())
    assert response.status_code == 200, response.text
    assert response.headers["x-voxgate-route"] == "fake:flaky-1"
    assert len(fake.requests()) == 2


def test_connection_reset_falls_back(gateway: Server, fake: FakeUpstream) -> None:
    data = _clip()
    response = _transcribe(gateway, "up-reset", data)
    assert response.status_code == 200, response.text
    assert response.headers["x-voxgate-route"] == "fake:whisper-1"
    records = fake.requests()
    assert [r["model"] for r in records] == ["reset", "reset", "whisper-1"]
    assert {r["file"]["sha256"] for r in records} == {_sha(data)}


def test_429_honours_retry_after_then_falls_back_to_local_whisper(
    gateway: Server, fake: FakeUpstream
) -> None:
    started = time.monotonic()
    response = gateway.sdk().audio.transcriptions.with_raw_response.create(
        model="up-429-local", file=("clip.flac", _clip())
    )
    elapsed = time.monotonic() - started
    assert response.headers["x-voxgate-route"] == "local:whisper-base"
    assert "belly" in response.parse().text.lower()  # the real local engine's transcript
    assert [r["model"] for r in fake.requests()] == ["fail-429", "fail-429"]
    assert elapsed >= 1.0  # the retry waited for Retry-After: 1


def test_speech_falls_back_to_local_piper_when_the_provider_is_unreachable(
    gateway: Server, fake: FakeUpstream
) -> None:
    with gateway.sdk().audio.speech.with_streaming_response.create(
        model="up-dead-local",
        voice="alloy",
        input="Hello from the fallback.",
        response_format="wav",
    ) as response:
        audio = response.read()
        assert response.headers["x-voxgate-route"] == "local:piper-joe"
    assert audio[:4] == b"RIFF" and len(audio) > 20_000  # about a second of Piper's speech
    assert fake.requests() == []


def test_slow_first_byte_past_the_timeout_falls_back(gateway: Server, fake: FakeUpstream) -> None:
    started = time.monotonic()
    response = _speak(gateway, "up-slow")
    assert response.status_code == 200, response.text
    assert response.headers["x-voxgate-route"] == "fake:tts-1"
    assert time.monotonic() - started < 2.5  # not the upstream's 3 s
    assert [r["model"] for r in fake.requests()] == ["slow-3", "tts-1"]


def test_bad_request_upstream_is_the_clients_4xx_without_fallback(
    gateway: Server, fake: FakeUpstream
) -> None:
    response = _transcribe(gateway, "up-bad", _clip())
    error = assert_error_envelope(response, 400, response.json()["error"]["param"])
    assert "fake upstream" in error["message"]  # the upstream's own message
    assert response.headers["x-request-id"]
    assert [r["model"] for r in fake.requests()] == ["bad-request"]  # no retry, no fallback


def test_upstream_auth_failure_is_a_502_and_opens_the_breaker(
    gateway: Server, fake: FakeUpstream
) -> None:
    response = _transcribe(gateway, "up-auth", _clip())
    error = assert_error_envelope(response, 502, None)
    assert error["code"] == "upstream_auth_failed"
    assert error["type"] == "server_error"
    assert len(fake.requests()) == 1  # never retried
    providers = httpx.get(f"{gateway.base_url}/health").json()["providers"]
    assert providers["authp"]["state"] == "open"
    assert providers["fake"]["state"] == "closed"


def test_breaker_opens_after_consecutive_failures_and_closes_after_a_probe(
    gateway: Server, fake: FakeUpstream
) -> None:
    for _ in range(2):
        response = _speak(gateway, "up-brk")
        assert response.headers["x-voxgate-route"] == "fake:tts-1"
    health = httpx.get(f"{gateway.base_url}/health")
    assert health.status_code == 200  # one provider down never fails /health
    assert health.json()["providers"]["brk"]["state"] == "open"
    assert health.json()["providers"]["brk"]["error_rate"] > 0
    fake.reset()
    response = _speak(gateway, "up-brk")  # brk is skipped at once
    assert response.headers["x-voxgate-route"] == "fake:tts-1"
    assert [r["model"] for r in fake.requests()] == ["tts-1"]
    refused = _speak(gateway, "up-brk-ok")
    assert_error_envelope(refused, 503, None)
    assert refused.json()["error"]["code"] == "upstream_unavailable"
    time.sleep(1.6)  # the cool-down: the next request is the half-open probe
    probe = _speak(gateway, "up-brk-ok")
    assert probe.status_code == 200
    assert probe.headers["x-voxgate-route"] == "brk:tts-1"
    health = httpx.get(f"{gateway.base_url}/health").json()
    assert health["providers"]["brk"]["state"] == "closed"


# --- streaming -----------------------------------------------------------------------------


def test_speech_sse_is_passed_through(gateway: Server, fake: FakeUpstream) -> None:
    with (
        gateway.http() as http,
        http.stream(
            "POST",
            "/v1/audio/speech",
            json={"model": "up-tts", "voice": "alloy", "input": "Hi.", "stream_format": "sse"},
        ) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done"
    assert fake.requests()[0]["json"]["stream_format"] == "sse"


def test_transcription_stream_is_passed_through(gateway: Server, fake: FakeUpstream) -> None:
    stream = gateway.sdk().audio.transcriptions.create(
        model="up-whisper", file=("clip.flac", _clip()), stream=True
    )
    events = list(stream)
    assert events[-1].type == "transcript.text.done"
    assert events[-1].text == DEFAULT_TEXT
    assert any(event.type == "transcript.text.delta" for event in events)
    assert fake.requests()[0]["fields"]["stream"] == "true"


def test_each_chunk_leaves_as_it_arrives(gateway: Server, fake: FakeUpstream) -> None:
    """drip-400: chunks 400 ms apart upstream reach the client 400 ms apart (no buffering)."""
    arrivals: list[float] = []
    with (
        gateway.http() as http,
        http.stream(
            "POST", "/v1/audio/speech", json={"model": "up-drip", "voice": "a", "input": "Hi."}
        ) as response,
    ):
        assert response.status_code == 200
        for _ in response.iter_raw():
            arrivals.append(time.monotonic())
    assert len(arrivals) >= 3
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert max(gaps) > 0.3  # chunks were not held back and sent together


def test_client_disconnect_closes_the_upstream_request(gateway: Server, fake: FakeUpstream) -> None:
    with (
        gateway.http() as http,
        http.stream(
            "POST", "/v1/audio/speech", json={"model": "up-drip", "voice": "a", "input": "Hi."}
        ) as response,
    ):
        next(response.iter_raw())  # the first chunk, then leave
    wait_until(lambda: fake.requests()[0]["disconnected"], "the fake to see the close", 10)


def test_upstream_cut_midway_ends_the_clients_stream_as_an_error(
    gateway: Server, fake: FakeUpstream
) -> None:
    with (
        gateway.http() as http,
        http.stream(
            "POST", "/v1/audio/speech", json={"model": "up-cut", "voice": "a", "input": "Hi."}
        ) as response,
    ):
        assert response.status_code == 200  # the first chunk had left
        with pytest.raises(httpx.RemoteProtocolError):
            response.read()


# --- metering ------------------------------------------------------------------------------


@pytest.fixture
def metered_key(gateway_db: str, gateway: Server) -> str:
    _, secret = create_key(gateway_db, "upstream-metering", budget_micros=1_000_000)
    return secret


def _row(db: str, request_id: str) -> dict[str, Any]:
    with LedgerReader(db) as ledger:
        return ledger.settled([request_id], timeout=30)[request_id]


def test_billed_on_measured_seconds_not_the_upstreams_inflated_usage(
    gateway: Server, fake: FakeUpstream, gateway_db: str, metered_key: str
) -> None:
    with gateway.http_for(metered_key) as http:
        response = http.post(
            "/v1/audio/transcriptions",
            data={"model": "up-inflate", "response_format": "verbose_json"},
            files={"file": ("clip.flac", _clip(), "audio/flac")},
        )
    assert response.status_code == 200, response.text
    assert response.json()["duration"] > 100 * SHORT_CLIP_S * 0.9  # the upstream's claim
    row = _row(gateway_db, response.headers["x-request-id"])
    assert row["status"] == "succeeded"
    assert row["route"] == "fake:inflate"
    assert row["input_audio_ms"] == pytest.approx(SHORT_CLIP_S * 1000, abs=30)
    assert row["cost_micros"] == round(PER_SECOND * row["input_audio_ms"] / 1000 * 1_000_000)


def test_one_row_per_request_whatever_the_attempts(
    gateway: Server, fake: FakeUpstream, gateway_db: str, metered_key: str
) -> None:
    with gateway.http_for(metered_key) as http:
        response = http.post(
            "/v1/audio/transcriptions",
            data={"model": "up-503"},
            files={"file": ("clip.flac", _clip(), "audio/flac")},
        )
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    with LedgerReader(gateway_db) as ledger:
        ledger.settled([request_id], timeout=30)
        rows = [row for row in ledger.rows() if row["request_id"] == request_id]
    assert len(rows) == 1
    assert rows[0]["route"] == "fake:whisper-1"
    assert rows[0]["cost_micros"] > 0
    assert len(fake.requests()) == 3


def test_a_request_that_failed_everywhere_costs_nothing(
    gateway: Server, fake: FakeUpstream, gateway_db: str, metered_key: str
) -> None:
    with gateway.http_for(metered_key) as http:
        response = http.post(
            "/v1/audio/transcriptions",
            data={"model": "up-500"},
            files={"file": ("clip.flac", _clip(), "audio/flac")},
        )
    assert_error_envelope(response, 502, None)
    row = _row(gateway_db, response.headers["x-request-id"])
    assert row["status"] == "failed"
    assert row["cost_micros"] == 0


def test_speech_is_billed_by_input_characters(
    gateway: Server, fake: FakeUpstream, gateway_db: str, metered_key: str
) -> None:
    text = "Twenty-nine characters here."
    with gateway.http_for(metered_key) as http:
        response = http.post(
            "/v1/audio/speech", json={"model": "up-tts", "voice": "alloy", "input": text}
        )
    assert response.status_code == 200
    row = _row(gateway_db, response.headers["x-request-id"])
    assert row["input_characters"] == len(text)
    assert row["cost_micros"] == round(PER_M_CHARS * len(text))
    assert row["route"] == "fake:tts-1"


def test_a_stream_the_upstream_cut_costs_nothing(
    gateway: Server, fake: FakeUpstream, gateway_db: str, metered_key: str
) -> None:
    with (
        gateway.http_for(metered_key) as http,
        http.stream(
            "POST", "/v1/audio/speech", json={"model": "up-cut", "voice": "a", "input": "Hi."}
        ) as response,
    ):
        request_id = response.headers["x-request-id"]
        with pytest.raises(httpx.RemoteProtocolError):
            response.read()
    row = _row(gateway_db, request_id)
    assert row["status"] == "failed"
    assert row["cost_micros"] == 0


# --- voxgate in front of voxgate; a pure gateway -------------------------------------------


@pytest.fixture(scope="module")
def front(
    gateway: Server, start_server: StartServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, float]]:
    """A second voxgate, with no local engine, whose only provider is the first voxgate."""
    config = tmp_path_factory.mktemp("front-config") / "voxgate.toml"
    config.write_text(
        f'[providers.gw]\nbase_url = "{gateway.v1}"\napi_key_env = "GW_KEY"\n\n'
        + _stt("chain-whisper", "gw:up-whisper")
        + _tts("chain-tts", "gw:up-tts")
    )
    started = time.monotonic()
    with start_server(
        VOXGATE_CONFIG_FILE=str(config),
        VOXGATE_LOCAL_ENGINES="off",
        VOXGATE_API_KEYS="sk-front-client-key",
        VOXGATE_INSTANCE_ID="front",
        VOXGATE_DATABASE_URL=f"sqlite:///{config.parent / 'front.db'}",
        GW_KEY=API_KEY,  # the first voxgate's key, as the front's provider key
    ) as server:
        yield server, time.monotonic() - started


def test_voxgate_chained_in_front_of_voxgate(
    front: tuple[Server, float], fake: FakeUpstream
) -> None:
    server, _ = front
    client = openai.OpenAI(base_url=server.v1, api_key="sk-front-client-key", max_retries=0)
    response = client.audio.transcriptions.with_raw_response.create(
        model="chain-whisper", file=("clip.flac", _clip())
    )
    assert response.headers["x-voxgate-route"] == "gw:up-whisper"
    assert response.parse().text == DEFAULT_TEXT
    with client.audio.speech.with_streaming_response.create(
        model="chain-tts", voice="alloy", input="Hi.", response_format="wav"
    ) as speech:
        assert speech.read()[:4] == b"RIFF"
    records = fake.requests()
    assert [r["model"] for r in records] == ["whisper-1", "tts-1"]
    for record in records:  # neither the front's client key nor the gateway's key goes on
        assert record["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert all("sk-front-client-key" not in v for v in record["headers"].values())


def test_a_pure_gateway_loads_no_engine_and_stays_small(front: tuple[Server, float]) -> None:
    server, startup_s = front
    client = openai.OpenAI(base_url=server.v1, api_key="sk-front-client-key", max_retries=0)
    assert {model.id for model in client.models.list().data} == {"chain-whisper", "chain-tts"}
    health = httpx.get(f"{server.base_url}/health").json()
    assert health["engines"] == {}
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    rss_kb = int(status.split("VmRSS:")[1].split()[0])
    assert rss_kb < 150 * 1024, f"{rss_kb} kB"
    print(f"pure gateway: healthy after {startup_s:.1f} s, RSS {rss_kb / 1024:.0f} MB")


# --- start-up validation -------------------------------------------------------------------


def test_bad_config_stops_serve_at_start_up_naming_the_line(tmp_path: Path) -> None:
    config = tmp_path / "voxgate.toml"
    config.write_text(
        '[providers.acme]\nbase_url = "https://api.example.com/v1"\n\n'
        + _stt("acme-whisper", "acme:whisper-1", "nowhere:whisper-1")
    )
    env = {
        **os.environ,
        "VOXGATE_CONFIG_FILE": str(config),
        "VOXGATE_DATA_DIR": str(tmp_path),
        "VOXGATE_PORT": str(free_port()),
    }
    result = subprocess.run(
        [sys.executable, "-m", "voxgate", "serve"], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{config}:4" in result.stderr  # the [[models]] line
    assert "'nowhere'" in result.stderr and "not configured" in result.stderr

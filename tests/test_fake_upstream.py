"""The fake upstream answers every mode as specified, and records what it received.

Other tests trust it to misbehave exactly as asked, so each mode is checked here through the
official SDK or plain httpx, against the real subprocess.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import httpx
import openai
import pytest
from fake_upstream import DEFAULT_TEXT, FakeUpstream

AUDIO = Path(__file__).resolve().parent / "data" / "audio"
WAV = AUDIO / "en-ami-ES2011a-headset0-40s-46s.wav"  # 6.0 s
FLAC = AUDIO / "en-jfk.flac"  # 11.0 s
UPSTREAM_KEY = "sk-upstream-provider-key"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(speech_ms=400, chunks=4) as server:
        yield server


@pytest.fixture()
def up(upstream: FakeUpstream) -> FakeUpstream:
    upstream.reset()
    return upstream


@pytest.fixture()
def sdk(up: FakeUpstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=up.base_url, api_key=UPSTREAM_KEY, max_retries=0)


def speech(up: FakeUpstream, model: str, **body: Any) -> httpx.Response:
    payload = {"model": model, "input": "Hello there.", "voice": "alloy", **body}
    return httpx.post(f"{up.base_url}/audio/speech", json=payload, timeout=30)


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    lines = raw.decode().split("\n\n")
    return [json.loads(line.removeprefix("data: ")) for line in lines if line.strip()]


def decoded_seconds(data: bytes) -> float:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / (stream.rate or 1)


@pytest.mark.parametrize("response_format", ["mp3", "opus", "aac", "flac", "wav"])
def test_speech_is_real_audio_of_the_requested_format(
    sdk: openai.OpenAI, up: FakeUpstream, response_format: str
) -> None:
    audio = sdk.audio.speech.create(
        model="tts-1", voice="alloy", input="Hi.", response_format=response_format
    )
    assert decoded_seconds(audio.content) == pytest.approx(0.4, abs=0.1)
    (record,) = up.requests()
    assert record["path"] == "/v1/audio/speech"
    assert record["json"]["response_format"] == response_format
    assert record["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_speech_pcm_is_24khz_16bit_mono(up: FakeUpstream) -> None:
    response = speech(up, "tts-1", response_format="pcm", speed=1.5, instructions="calm")
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/pcm"
    assert len(response.content) == 24_000 * 2 * 400 // 1000
    (record,) = up.requests()
    assert record["json"]["speed"] == 1.5
    assert record["json"]["instructions"] == "calm"
    assert record["first_byte_at"] >= record["received_at"]


def test_speech_sse_sends_deltas_then_done_with_usage(up: FakeUpstream) -> None:
    plain = speech(up, "tts-1", response_format="wav").content
    response = speech(up, "tts-1", response_format="wav", stream_format="sse")
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.content)
    assert [e["type"] for e in events] == ["speech.audio.delta"] * 4 + ["speech.audio.done"]
    assert b"".join(base64.b64decode(e["audio"]) for e in events[:-1]) == plain
    usage = events[-1]["usage"]
    assert usage["input_tokens"] == len("Hello there.")
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_transcription_records_every_field_and_the_upload_digest(
    sdk: openai.OpenAI, up: FakeUpstream
) -> None:
    result = sdk.audio.transcriptions.create(
        model="whisper-1",
        file=FLAC.open("rb"),
        language="en",
        prompt="a speech",
        temperature=0.2,
        timestamp_granularities=["word", "segment"],
        response_format="verbose_json",
    )
    assert result.text == DEFAULT_TEXT
    assert result.duration == pytest.approx(11.0, abs=0.05)
    assert result.words is not None and [w.word for w in result.words] == DEFAULT_TEXT.split()
    (record,) = up.requests()
    assert record["model"] == "whisper-1"
    assert record["fields"] == {
        "model": "whisper-1",
        "language": "en",
        "prompt": "a speech",
        "temperature": "0.2",
        "timestamp_granularities[]": ["word", "segment"],
        "response_format": "verbose_json",
    }
    data = FLAC.read_bytes()
    assert record["file"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["file"]["size"] == len(data)
    assert record["file"]["filename"] == FLAC.name
    assert record["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ("text", f"{DEFAULT_TEXT}\n"),
        ("srt", f"1\n00:00:00,000 --> 00:00:06,000\n{DEFAULT_TEXT}\n\n"),
        ("vtt", f"WEBVTT\n\n00:00:00.000 --> 00:00:06.000\n{DEFAULT_TEXT}\n\n"),
    ],
)
def test_transcription_text_formats(
    sdk: openai.OpenAI, response_format: str, expected: str
) -> None:
    result = sdk.audio.transcriptions.create(
        model="whisper-1", file=WAV.open("rb"), response_format=response_format
    )
    assert result == expected


def test_transcription_json_usage_is_the_real_length(sdk: openai.OpenAI) -> None:
    result = sdk.audio.transcriptions.create(model="whisper-1", file=WAV.open("rb"))
    assert result.text == DEFAULT_TEXT
    assert result.usage is not None and result.usage.type == "duration"
    assert result.usage.seconds == pytest.approx(6.0)


def test_inflate_claims_a_hundred_times_the_length(sdk: openai.OpenAI) -> None:
    result = sdk.audio.transcriptions.create(model="inflate", file=WAV.open("rb"))
    assert result.usage is not None and result.usage.type == "duration"
    assert result.usage.seconds == pytest.approx(600.0)


def test_translation_answers_in_english(sdk: openai.OpenAI, up: FakeUpstream) -> None:
    result = sdk.audio.translations.create(
        model="whisper-1", file=FLAC.open("rb"), response_format="verbose_json"
    )
    assert result.text == DEFAULT_TEXT
    assert result.language == "english"
    assert up.requests()[0]["path"] == "/v1/audio/translations"


def test_streamed_transcription_sends_deltas_then_done(sdk: openai.OpenAI) -> None:
    events = list(
        sdk.audio.transcriptions.create(model="gpt-4o-transcribe", file=WAV.open("rb"), stream=True)
    )
    assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * len(DEFAULT_TEXT.split())
    assert "".join(e.delta for e in events[:-1]) == DEFAULT_TEXT  # type: ignore[union-attr]
    done = events[-1]
    assert done.type == "transcript.text.done"
    assert done.text == DEFAULT_TEXT


def test_models_list(sdk: openai.OpenAI) -> None:
    assert "whisper-1" in {m.id for m in sdk.models.list()}


def test_fail_429_says_when_to_retry(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.audio.speech.create(model="fail-429", voice="alloy", input="Hi.")
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.response.headers["retry-after-ms"] == "1000"
    assert caught.value.code == "rate_limit_exceeded"


@pytest.mark.parametrize("status", [500, 502, 503])
def test_fail_5xx(up: FakeUpstream, status: int) -> None:
    response = speech(up, f"fail-{status}")
    assert response.status_code == status
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_bad_request_names_the_param(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.audio.transcriptions.create(model="bad-request", file=WAV.open("rb"))
    assert caught.value.param == "language"
    assert "fake upstream" in caught.value.message


def test_auth_fail_is_401(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.AuthenticationError):
        sdk.audio.speech.create(model="auth-fail", voice="alloy", input="Hi.")


def test_flaky_fails_n_times_per_model_until_reset(up: FakeUpstream) -> None:
    assert [speech(up, "flaky-2").status_code for _ in range(3)] == [503, 503, 200]
    assert speech(up, "flaky-1").status_code == 503  # counted per model name
    assert speech(up, "flaky-2").status_code == 200
    up.reset()
    assert speech(up, "flaky-2").status_code == 503


def test_flaky500_and_failfrom_count_per_model(up: FakeUpstream) -> None:
    assert [speech(up, "flaky500-1").status_code for _ in range(3)] == [500, 200, 200]
    assert [speech(up, "failfrom-2").status_code for _ in range(3)] == [200, 500, 500]


def transcribe(up: FakeUpstream, model: str, path: Path) -> httpx.Response:
    return httpx.post(
        f"{up.base_url}/audio/transcriptions",
        data={"model": model},
        files={"file": (path.name, path.read_bytes(), "audio/flac")},
        timeout=30,
    )


def test_caps_refuse_larger_or_longer_uploads_with_413(up: FakeUpstream) -> None:
    size_kb = FLAC.stat().st_size / 1024
    assert transcribe(up, f"whisper-1@{size_kb + 1:.0f}kb", FLAC).status_code == 200
    too_large = transcribe(up, f"whisper-1@{size_kb - 1:.0f}kb", FLAC)
    assert too_large.status_code == 413
    assert too_large.json()["error"]["param"] == "file"
    assert transcribe(up, "whisper-1@10s", FLAC).status_code == 413  # 11 s
    within = transcribe(up, "flaky500-1@12s", FLAC)
    assert within.status_code == 500  # the mode before the cap
    within = transcribe(up, "flaky500-1@12s", FLAC)
    assert within.json()["text"] == f"{DEFAULT_TEXT} [11.00 s]"  # names what it got
    measured = [r["file"].get("seconds") for r in up.requests()]
    assert measured[3] is None  # the 500 came first
    del measured[3]
    assert measured == pytest.approx([11.0] * 4, abs=0.05)


def test_reset_drops_the_connection_without_a_response(up: FakeUpstream) -> None:
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        speech(up, "reset")
    files = {"file": (WAV.name, WAV.read_bytes(), "audio/wav")}
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.post(f"{up.base_url}/audio/transcriptions", data={"model": "reset"}, files=files)
    records = up.requests()
    assert [r["model"] for r in records] == ["reset", "reset"]
    assert records[1]["file"]["size"] == WAV.stat().st_size  # the request was read first


def test_slow_waits_before_the_headers(up: FakeUpstream) -> None:
    started = time.monotonic()
    assert speech(up, "slow-0.5").status_code == 200
    assert time.monotonic() - started >= 0.5


def test_slow_records_a_client_that_gave_up(up: FakeUpstream) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{up.base_url}/audio/speech",
            json={"model": "slow-5", "input": "x", "voice": "alloy"},
            timeout=0.3,
        )
    assert wait_for(lambda: up.requests()[0]["disconnected"])
    assert up.requests()[0]["first_byte_at"] is None


def test_drip_spaces_the_chunks(up: FakeUpstream) -> None:
    arrivals: list[float] = []
    payload = {"model": "drip-150", "input": "x", "voice": "alloy", "response_format": "pcm"}
    started = time.monotonic()
    with httpx.stream("POST", f"{up.base_url}/audio/speech", json=payload) as response:
        for _ in response.iter_raw():
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 4
    assert arrivals[-1] >= 0.45  # three pauses of 150 ms: sleeps never run short
    assert arrivals[0] < arrivals[-1] - 0.3  # the first chunk was not held back (busy-safe)


def test_drip_records_a_disconnect_midway(up: FakeUpstream) -> None:
    payload = {"model": "drip-300", "input": "x", "voice": "alloy"}
    with httpx.stream("POST", f"{up.base_url}/audio/speech", json=payload) as response:
        next(response.iter_raw())
    assert wait_for(lambda: up.requests()[0]["disconnected"])
    assert up.requests()[0]["finished_at"] is None


def test_streamed_transcription_drips_events(up: FakeUpstream) -> None:
    files = {"file": (WAV.name, WAV.read_bytes(), "audio/wav")}
    data = {"model": "drip-100", "stream": "true"}
    started = time.monotonic()
    response = httpx.post(f"{up.base_url}/audio/transcriptions", data=data, files=files)
    events = sse_events(response.content)
    assert events[-1]["type"] == "transcript.text.done"
    assert time.monotonic() - started >= 0.1 * (len(events) - 1)


def test_cut_breaks_speech_after_the_first_chunk(up: FakeUpstream) -> None:
    received = bytearray()
    payload = {"model": "cut", "input": "x", "voice": "alloy", "response_format": "pcm"}
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", f"{up.base_url}/audio/speech", json=payload) as response,
    ):
        assert response.status_code == 200
        for chunk in response.iter_raw():
            received.extend(chunk)
    assert 0 < len(received) < 24_000 * 2 * 400 // 1000


def test_cut_breaks_a_transcription_stream(sdk: openai.OpenAI) -> None:
    stream = sdk.audio.transcriptions.create(model="cut", file=WAV.open("rb"), stream=True)
    with pytest.raises(openai.APIConnectionError) as caught:
        list(stream)
    # the SDK bundles its own httpx fork: compare by name
    assert type(caught.value.__cause__).__name__ == "RemoteProtocolError"


def test_cut_breaks_a_json_transcription(up: FakeUpstream) -> None:
    files = {"file": (WAV.name, WAV.read_bytes(), "audio/wav")}
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.post(f"{up.base_url}/audio/transcriptions", data={"model": "cut"}, files=files)


def test_reset_endpoint_clears_the_records(up: FakeUpstream) -> None:
    speech(up, "tts-1")
    assert len(up.requests()) == 1
    up.reset()
    assert up.requests() == []


def test_configurable_text() -> None:
    with FakeUpstream(text="another text") as other:
        client = openai.OpenAI(base_url=other.base_url, api_key=UPSTREAM_KEY, max_retries=0)
        result = client.audio.transcriptions.create(model="whisper-1", file=WAV.open("rb"))
    assert result.text == "another text"


def wait_for(condition: Any, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False

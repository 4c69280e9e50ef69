"""Limits: the upload size cap (413) and engine saturation (503 with Retry-After).

Each limit gets its own server (``start_server``), shared by the tests of that limit.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import time
import wave
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import av
import httpx
import numpy as np
import openai
import pytest
from conftest import Server, audio_path

LIMIT_MB = 1
LIMIT = LIMIT_MB * 1024 * 1024
LONG_CLIP = "en-ljspeech-LJ001-0001-to-0032-long.flac"  # 222 s
SHORT_CLIP = "en-librispeech-1089-134686-0001.flac"  # 3 s
UPLOAD = "/v1/audio/transcriptions"


@pytest.fixture(scope="module")
def limited(start_server) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    """A server that accepts uploads of at most 1 MiB."""
    with start_server(VOXGATE_MAX_UPLOAD_MB=str(LIMIT_MB)) as srv:
        yield srv


@pytest.fixture(scope="module")
def saturated(start_server) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    """A server whose engines run one job each and queue none."""
    with start_server(VOXGATE_ENGINE_WORKERS="1", VOXGATE_ENGINE_QUEUE_SIZE="0") as srv:
        yield srv


def multipart(file_bytes: bytes, filename: str = "a.mp3") -> tuple[bytes, str]:
    """Encode a transcription form exactly as httpx would: (body, content-type)."""
    request = httpx.Request(
        "POST", "http://x/", files={"file": (filename, file_bytes)}, data={"model": "whisper-1"}
    )
    return request.read(), request.headers["content-type"]


def assert_too_large(headers: Mapping[str, str], body: bytes) -> None:
    """A 413 body: payload_too_large naming ``file``, with the request id in the message."""
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "payload_too_large",
        "file",
    )
    request_id = headers["x-request-id"]
    assert request_id.startswith("req_")
    assert error["message"].endswith(f"(request id: {request_id})")


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def raw_request(server: Server, head: str, body_start: bytes) -> RawResponse:
    """Send a request head and only the start of its body on a raw socket; read the answer.

    The rest of the body is never sent, so a server that waited for it would never answer:
    the socket timeout turns that into a test failure instead of a hang. (Generous: a busy
    machine must not pass for a server that waits.)
    """
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=120) as sock:
        sock.sendall(head.encode() + body_start)
        response = http.client.HTTPResponse(sock)
        response.begin()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return RawResponse(response.status, headers, response.read())


def request_head(server: Server, content_type: str, framing: str) -> str:
    return (
        f"POST {UPLOAD} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {server.api_key}\r\nContent-Type: {content_type}\r\n"
        f"{framing}\r\n\r\n"
    )


def wav_of_size(total_bytes: int) -> bytes:
    """en-jfk.flac as 16-bit mono WAV at 44.1 kHz, padded with silence to ``total_bytes``."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=44_100)
    pieces: list[np.ndarray] = []
    with av.open(str(audio_path("en-jfk.flac"))) as container:
        for frame in container.decode(audio=0):
            pieces.extend(f.to_ndarray()[0] for f in resampler.resample(frame))
    samples = np.concatenate(pieces)
    wanted = (total_bytes - 44) // 2  # a canonical WAV header is 44 bytes
    assert len(samples) <= wanted, "the clip alone is already over the target size"
    samples = np.pad(samples, (0, wanted - len(samples)))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(44_100)
        out.writeframes(samples.astype("<i2").tobytes())
    return buffer.getvalue()


# --- upload size ----------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["transcriptions", "translations"])
def test_upload_over_limit_with_content_length(limited: Server, endpoint: str) -> None:
    """A 2 MB upload with a declared Content-Length: 413 payload_too_large, param file."""
    with limited.http() as client:
        response = client.post(
            f"/v1/audio/{endpoint}",
            files={"file": ("big.mp3", b"\0" * (2 * LIMIT))},
            data={"model": "whisper-1"},
        )
    assert response.status_code == 413, response.text
    assert_too_large(response.headers, response.content)


def test_upload_over_limit_sdk(limited: Server) -> None:
    """Through the SDK: an APIStatusError with status 413 and code payload_too_large."""
    with pytest.raises(openai.APIStatusError) as caught:
        limited.sdk().audio.transcriptions.create(
            model="whisper-1", file=("big.mp3", b"\0" * (2 * LIMIT))
        )
    exc = caught.value
    assert exc.status_code == 413
    assert (exc.code, exc.param, exc.type) == ("payload_too_large", "file", "invalid_request_error")
    assert exc.request_id and exc.request_id.startswith("req_")


def test_declared_size_is_refused_before_the_body_is_read(limited: Server) -> None:
    """Content-Length 50 MB but only 1 KB sent: the 413 arrives anyway.

    The server answers from the headers alone; waiting for the other 49.99 MB would hang.
    """
    body, content_type = multipart(b"\0" * 4096)
    head = request_head(limited, content_type, f"Content-Length: {50 * 1024 * 1024}")
    response = raw_request(limited, head, body[:1024])
    assert response.status == 413
    assert_too_large(response.headers, response.body)
    # The refusal closes the connection rather than draining 50 MB.
    assert response.headers.get("connection", "").lower() == "close"


def test_chunked_upload_over_limit_raw(limited: Server) -> None:
    """A chunked body (no Content-Length) is cut off at the limit, before it ends."""
    body, content_type = multipart(b"\0" * (3 * LIMIT))
    head = request_head(limited, content_type, "Transfer-Encoding: chunked")
    sent = LIMIT + LIMIT // 2  # over the limit, well short of the end, never terminated
    chunks = b"".join(
        b"%x\r\n%b\r\n" % (len(piece), piece)
        for piece in (body[i : i + 65536] for i in range(0, sent, 65536))
    )
    response = raw_request(limited, head, chunks)
    assert response.status == 413
    assert_too_large(response.headers, response.body)


def test_chunked_upload_over_limit_httpx(limited: Server) -> None:
    """httpx with a generator body (chunked transfer encoding) over the limit: 413."""
    body, content_type = multipart(b"\0" * (3 * LIMIT))

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    with limited.http() as client:
        response = client.post(UPLOAD, content=chunks(), headers={"content-type": content_type})
    assert "content-length" not in response.request.headers
    assert response.status_code == 413, response.text
    assert_too_large(response.headers, response.content)


def test_limit_boundary_is_exact(limited: Server) -> None:
    """A body of exactly the limit is read (and then refused as audio); one byte more is 413."""
    overhead = len(multipart(b"")[0])
    with limited.http() as client:
        for extra, status, code in ((0, 400, "invalid_audio"), (1, 413, "payload_too_large")):
            body, content_type = multipart(b"\0" * (LIMIT - overhead + extra))
            assert len(body) == LIMIT + extra
            response = client.post(UPLOAD, content=body, headers={"content-type": content_type})
            assert response.status_code == status, response.text
            assert response.json()["error"]["code"] == code


def test_valid_audio_just_under_limit(limited: Server) -> None:
    """A WAV just under the limit (with the form around it) is transcribed normally."""
    wav = wav_of_size(LIMIT - 2048)
    body, _ = multipart(wav, "jfk.wav")
    assert LIMIT - 4096 < len(body) <= LIMIT
    with limited.http() as client:
        response = client.post(
            UPLOAD, files={"file": ("jfk.wav", wav)}, data={"model": "whisper-1"}
        )
    assert response.status_code == 200, response.text
    assert "country" in response.json()["text"].lower()
    result = limited.sdk().audio.transcriptions.create(model="whisper-1", file=("jfk.wav", wav))
    assert "country" in result.text.lower()


def test_speech_is_not_an_upload(limited: Server) -> None:
    """The upload cap applies to audio uploads, not to speech requests."""
    with limited.http() as client:
        response = client.post(
            "/v1/audio/speech",
            json={"model": "tts-1", "input": "Short.", "voice": "alloy", "response_format": "wav"},
        )
    assert response.status_code == 200
    assert response.content[:4] == b"RIFF"


# --- saturation -----------------------------------------------------------------------------


def whisper_load(server: Server) -> dict[str, int]:
    engines = httpx.get(f"{server.base_url}/health", timeout=10).json()["engines"]
    return engines["faster-whisper"]  # type: ignore[no-any-return]


def wait_until(predicate: Callable[[], bool], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_saturated_engine_answers_503(saturated: Server) -> None:
    """One long job holds the only Whisper slot; meanwhile others get 503 + Retry-After."""
    long_clip = audio_path(LONG_CLIP).read_bytes()
    short_clip = audio_path(SHORT_CLIP).read_bytes()
    first_done = threading.Event()

    def long_job() -> httpx.Response:
        try:
            with saturated.http() as client:
                return client.post(
                    UPLOAD,
                    files={"file": ("long.flac", long_clip)},
                    data={"model": "whisper-1"},
                    timeout=1800,
                )
        finally:
            first_done.set()

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(long_job)
        wait_until(lambda: whisper_load(saturated)["running"] == 1 or first_done.is_set())
        assert not first_done.is_set(), "the long job ended before the test could overlap it"

        # Raw HTTP: the envelope and the header.
        with saturated.http() as client:
            busy = client.post(
                UPLOAD, files={"file": ("short.flac", short_clip)}, data={"model": "whisper-1"}
            )
        assert busy.status_code == 503, busy.text
        error = busy.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["type"], error["code"], error["param"]) == (
            "server_error",
            "server_overloaded",
            None,
        )
        assert error["message"].endswith(f"(request id: {busy.headers['x-request-id']})")
        retry_after = busy.headers["retry-after"]
        assert retry_after.isdigit() and int(retry_after) >= 1

        # The SDK: a 503 is an InternalServerError carrying the code and the header.
        with pytest.raises(openai.InternalServerError) as caught:
            saturated.sdk().audio.translations.create(
                model="whisper-1", file=("short.flac", short_clip)
            )
        exc = caught.value
        assert (exc.status_code, exc.code, exc.type) == (503, "server_overloaded", "server_error")
        assert int(exc.response.headers["retry-after"]) >= 1
        assert exc.request_id and exc.request_id.startswith("req_")

        # Another engine is not affected by Whisper being full.
        with saturated.http() as client:
            speech = client.post(
                "/v1/audio/speech",
                json={
                    "model": "tts-1",
                    "input": "Still here.",
                    "voice": "alloy",
                    "response_format": "wav",
                },
            )
        assert speech.status_code == 200

        response = first.result(timeout=1800)
    assert response.status_code == 200, response.text
    assert "printing" in response.json()["text"].lower()

    # The slot is free again: the next job is admitted and succeeds.
    assert whisper_load(saturated) == {"running": 0, "queued": 0}
    result = saturated.sdk().audio.transcriptions.create(
        model="whisper-1", file=("short.flac", short_clip)
    )
    assert "belly" in result.text.lower()

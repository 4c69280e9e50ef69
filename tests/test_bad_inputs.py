"""A bad-input corpus, generated from the real test audio, against a real server.

Every case is something a broken or hostile client sends: cut or overwritten recordings, empty
and non-audio uploads, a video with no sound, broken multipart, broken or oversized JSON, wrong
types, control characters and invalid UTF-8 in text fields, absurd usage queries. Each must come
back as a 4xx in OpenAI's envelope, naming the field in ``param`` and carrying the request id in
the message, and come back at all (the client gives up after ``TIMEOUT_S``; no timed assertion).
"""

from __future__ import annotations

import io
import json
import random
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import av
import httpx
import numpy as np
import pytest

from tests.conftest import Server, assert_error_envelope, audio_path

#: Generous: a bad input must be refused at once, but the machine may be busy.
TIMEOUT_S = 30
#: For the cases that may reach an engine before (or without) being refused.
ENGINE_TIMEOUT_S = 180
FORMATS = ("flac", "wav", "ogg", "mp3")
TRANSCRIBE = "/v1/audio/transcriptions"
SPEECH = "/v1/audio/speech"
SPEECH_OK = {"model": "tts-1", "input": "Hello.", "voice": "alloy"}
MAX_TIME = 253_402_300_799


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with server.http(timeout=TIMEOUT_S) as http:
        yield http


@pytest.fixture(scope="module")
def clips(manifest: list[dict[str, Any]]) -> dict[str, bytes]:
    """The shortest real recording of each format (mp3 has only long ones: its first 64 KiB)."""
    chosen: dict[str, bytes] = {}
    for fmt in FORMATS:
        files = [clip for clip in manifest if str(clip["file"]).endswith(f".{fmt}")]
        shortest = min(files, key=lambda clip: float(clip["duration_s"]))
        data = audio_path(str(shortest["file"])).read_bytes()
        chosen[fmt] = data[: 64 * 1024] if fmt == "mp3" else data
    return chosen


@pytest.fixture(scope="module")
def speakable(clips: dict[str, bytes]) -> bytes:
    """A short, whole recording for the cases whose fault is in a text field, not the audio."""
    return clips["wav"]


def assert_refused(response: httpx.Response, param: str | None, status: int = 400) -> None:
    """A 4xx in OpenAI's envelope naming ``param``, with this request's id in the message."""
    error = assert_error_envelope(response, status, param)
    request_id = response.headers["x-request-id"]
    assert f"(request id: {request_id})" in error["message"], error


def transcribe(client: httpx.Client, name: str, data: bytes, **fields: str) -> httpx.Response:
    return client.post(
        TRANSCRIBE, files={"file": (name, data)}, data={"model": "whisper-1", **fields}
    )


# --- uploads: broken audio ---------------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 16])
@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_inside_header(
    client: httpx.Client, clips: dict[str, bytes], fmt: str, cut: int
) -> None:
    assert_refused(transcribe(client, f"cut.{fmt}", clips[fmt][:cut]), "file")


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_mid_stream_is_transcribed_as_far_as_it_decodes(
    server: Server, clips: dict[str, bytes], fmt: str
) -> None:
    """Issue 8 finding 8: one rule for every format. A recording cut after its header is
    transcribed up to the cut (as FFmpeg decodes it), never refused whole for one format only."""
    data = clips[fmt]
    with server.http(timeout=ENGINE_TIMEOUT_S) as client:
        response = transcribe(client, f"cut.{fmt}", data[: min(len(data) // 2, 32 * 1024)])
    assert response.status_code == 200, response.text
    assert isinstance(response.json()["text"], str)


@pytest.mark.parametrize("fmt", ["flac", "wav", "ogg"])
def test_corrupt_header(client: httpx.Client, clips: dict[str, bytes], fmt: str) -> None:
    data = bytearray(clips[fmt])
    data[:64] = random.Random(fmt).randbytes(64)
    assert_refused(transcribe(client, f"corrupt.{fmt}", bytes(data)), "file")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("where", ["head", "middle"])
def test_corrupt_bytes_get_a_clean_answer(
    server: Server, clips: dict[str, bytes], fmt: str, where: str
) -> None:
    """Overwritten bytes: decoders may resync past them (MP3 frames do), so a transcript is as
    good an answer as a 400; a 5xx, a cut response or no answer is not."""
    data = bytearray(clips[fmt])
    start = 0 if where == "head" else len(data) // 2
    data[start : start + 2048] = random.Random(f"{fmt}{where}").randbytes(2048)
    with server.http(timeout=ENGINE_TIMEOUT_S) as client:
        response = transcribe(client, f"corrupt.{fmt}", bytes(data))
    if response.status_code == 200:
        assert isinstance(response.json()["text"], str)
    else:
        assert_refused(response, "file")


@pytest.mark.parametrize("fmt", FORMATS)
def test_zero_length(client: httpx.Client, fmt: str) -> None:
    assert_refused(transcribe(client, f"empty.{fmt}", b""), "file")


def _png() -> bytes:
    """A valid 8x8 grey PNG, written by hand (no imaging library needed)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    rows = b"".join(b"\x00" + b"\x80" * 8 for _ in range(8))
    header = struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


NON_AUDIO = {
    "text": ("notes.txt", b"This is not a recording.\n" * 200),
    "png": ("picture.png", _png()),
    "png-named-wav": ("picture.wav", _png()),
    "random": ("noise.mp3", random.Random(8).randbytes(64 * 1024)),
    "json": ("data.ogg", json.dumps({"text": "hello"}).encode()),
}


@pytest.mark.parametrize("kind", sorted(NON_AUDIO))
def test_not_audio(client: httpx.Client, kind: str) -> None:
    name, data = NON_AUDIO[kind]
    assert_refused(transcribe(client, name, data), "file")


def _video_without_audio() -> bytes:
    """One second of MPEG-4 video in an mp4 container, with no audio stream at all."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(10):
            picture = np.full((48, 64, 3), index * 20, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


@pytest.mark.parametrize("path", [TRANSCRIBE, "/v1/audio/translations"])
def test_video_without_audio(client: httpx.Client, path: str) -> None:
    video = _video_without_audio()
    with av.open(io.BytesIO(video)) as container:  # the corpus really is a video-only file
        assert container.streams.video and not container.streams.audio
    response = client.post(path, files={"file": ("clip.mp4", video)}, data={"model": "whisper-1"})
    assert_refused(response, "file")


# --- uploads: broken multipart -----------------------------------------------------------------


def _multipart(
    boundary: str, parts: list[tuple[str, bytes]], filename: str | None = "a.wav"
) -> bytes:
    """A multipart body by hand, so that it can be broken; ``file`` gets ``filename``."""
    body = b""
    for name, value in parts:
        disposition = f'form-data; name="{name}"'
        if name == "file" and filename is not None:
            disposition += f'; filename="{filename}"'
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += value + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def _post_multipart(client: httpx.Client, body: bytes, content_type: str) -> httpx.Response:
    return client.post(TRANSCRIBE, content=body, headers={"content-type": content_type})


def test_multipart_wrong_boundary(client: httpx.Client, speakable: bytes) -> None:
    body = _multipart("right", [("model", b"whisper-1"), ("file", speakable)])
    response = _post_multipart(client, body, "multipart/form-data; boundary=wrong")
    assert_refused(response, None)


def test_multipart_no_boundary(client: httpx.Client, speakable: bytes) -> None:
    body = _multipart("right", [("model", b"whisper-1"), ("file", speakable)])
    assert_refused(_post_multipart(client, body, "multipart/form-data"), None)


def test_multipart_garbage(client: httpx.Client) -> None:
    body = random.Random(3).randbytes(4096)
    assert_refused(_post_multipart(client, body, "multipart/form-data; boundary=x"), None)


def test_multipart_cut_off(client: httpx.Client, speakable: bytes) -> None:
    """Cut inside the file part: what arrived has no complete file."""
    body = _multipart("b", [("model", b"whisper-1"), ("file", speakable)])
    response = _post_multipart(client, body[: len(body) // 2], "multipart/form-data; boundary=b")
    assert_refused(response, "file")


def test_missing_file_part(client: httpx.Client) -> None:
    assert_refused(client.post(TRANSCRIBE, data={"model": "whisper-1"}), "file")


def test_file_sent_as_text_field(client: httpx.Client) -> None:
    body = _multipart("b", [("model", b"whisper-1"), ("file", b"not a file")], filename=None)
    assert_refused(_post_multipart(client, body, "multipart/form-data; boundary=b"), "file")


def test_not_multipart(client: httpx.Client) -> None:
    """JSON where a form belongs: no form fields arrive, so the first required one is named."""
    response = client.post(TRANSCRIBE, json={"model": "whisper-1", "file": "aGVsbG8="})
    assert_refused(response, "model")


def test_duplicate_file(client: httpx.Client, speakable: bytes) -> None:
    files = [("file", ("a.wav", speakable)), ("file", ("b.wav", speakable))]
    response = client.post(TRANSCRIBE, files=files, data={"model": "whisper-1"})
    assert_refused(response, "file")


def test_huge_field(client: httpx.Client, speakable: bytes) -> None:
    """A 2 MiB text part: over the multipart parser's per-field limit."""
    response = transcribe(client, "a.wav", speakable, prompt="a" * (2 * 1024 * 1024))
    assert_refused(response, "prompt")


def test_prompt_too_long(server: Server, speakable: bytes) -> None:
    """Issue 8 finding 8: a 100,000-character prompt was accepted and sent to Whisper."""
    with server.http(timeout=ENGINE_TIMEOUT_S) as client:
        response = transcribe(client, "a.wav", speakable, prompt="word " * 20_000)
    assert_refused(response, "prompt")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", "hot"),
        ("temperature", "7"),
        ("response_format", "mp3"),
        ("timestamp_granularities[]", "paragraph"),
        ("include[]", "everything"),
        ("stream", "maybe"),
        ("language", "e\x07n"),
        ("language", "x" * 500),
    ],
)
def test_bad_form_field(client: httpx.Client, speakable: bytes, field: str, value: str) -> None:
    response = transcribe(client, "a.wav", speakable, **{field: value})
    assert_refused(response, field.removesuffix("[]"))


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"Hi\x00there", id="nul"),
        pytest.param(b"Hi\x1b[2Jthere", id="escape"),
        pytest.param(b"Hi \xff\xfe there", id="invalid-utf8"),
    ],
)
def test_bad_characters_in_prompt(server: Server, speakable: bytes, value: bytes) -> None:
    body = _multipart("b", [("model", b"whisper-1"), ("prompt", value), ("file", speakable)])
    with server.http(timeout=ENGINE_TIMEOUT_S) as client:
        response = _post_multipart(client, body, "multipart/form-data; boundary=b")
    assert_refused(response, "prompt")


def test_invalid_utf8_in_language(client: httpx.Client, speakable: bytes) -> None:
    body = _multipart(
        "b", [("model", b"whisper-1"), ("language", b"\xff\xfe"), ("file", speakable)]
    )
    assert_refused(_post_multipart(client, body, "multipart/form-data; boundary=b"), "language")


# --- speech: broken JSON -----------------------------------------------------------------------


def _speech(client: httpx.Client, body: bytes) -> httpx.Response:
    return client.post(SPEECH, content=body, headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b'{"model": "tts-1", "input":', id="cut-off"),
        pytest.param(b"{'model': 'tts-1'}", id="single-quotes"),
        pytest.param(b"[1, 2, 3]", id="array"),
        pytest.param(b'"just a string"', id="string"),
        pytest.param(b"null", id="null"),
        pytest.param(b'{"model":"tts-1","input":"\xff\xfe hi","voice":"alloy"}', id="bad-utf8"),
        pytest.param(b"\xef\xbb\xbf" + json.dumps(SPEECH_OK).encode()[:-1], id="bom-cut"),
    ],
)
def test_invalid_json(client: httpx.Client, body: bytes) -> None:
    assert_refused(_speech(client, body), None)


def test_oversized_json(client: httpx.Client) -> None:
    """5 MiB of input: refused as too long (400, ``input``) or too large (413)."""
    body = json.dumps({**SPEECH_OK, "input": "a" * (5 * 1024 * 1024)}).encode()
    response = _speech(client, body)
    if response.status_code == 413:
        assert_refused(response, None, status=413)
    else:
        assert_refused(response, "input")


def test_oversized_unknown_field(client: httpx.Client) -> None:
    body = json.dumps({**SPEECH_OK, "padding": "a" * (5 * 1024 * 1024)}).encode()
    response = _speech(client, body)
    if response.status_code == 413:
        assert_refused(response, None, status=413)
    else:
        assert_refused(response, "padding")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", None),
        ("model", 7),
        ("model", ""),
        ("input", 5),
        ("input", ["Hello."]),
        ("input", ""),
        ("voice", 5),
        ("voice", {"name": "alloy"}),
        ("response_format", "mp4"),
        ("stream_format", 1),
        ("speed", 0),
        ("speed", 1e308),
        ("speed", "fast"),
        pytest.param("speed", True),
        pytest.param("speed", "2"),
        ("instructions", "x" * 5000),
    ],
)
def test_wrong_type(client: httpx.Client, field: str, value: Any) -> None:
    body = json.dumps({**SPEECH_OK, field: value}).encode()
    assert_refused(_speech(client, body), field)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("\u0000", id="nul-only"),
        pytest.param("Hello. World\u0000.", id="nul-inside"),
        pytest.param("Hello\u0007 world\u001b.", id="bell-escape"),
    ],
)
def test_control_characters_in_input(server: Server, text: str) -> None:
    with server.http(timeout=ENGINE_TIMEOUT_S) as client:
        response = client.post(SPEECH, json={**SPEECH_OK, "input": text})
    assert_refused(response, "input")


def test_ordinary_whitespace_is_spoken(server: Server) -> None:
    """The other side of the control-character rule: newlines and tabs are ordinary text."""
    with server.http(timeout=ENGINE_TIMEOUT_S) as client:
        response = client.post(SPEECH, json={**SPEECH_OK, "input": "Hello.\n\tWorld.\r\n"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/mpeg"
    assert len(response.content) > 1000


def test_lone_surrogate_in_input(client: httpx.Client) -> None:
    body = b'{"model": "tts-1", "input": "\\ud800 hello", "voice": "alloy"}'
    assert_refused(_speech(client, body), "input")


# --- usage API: absurd queries -----------------------------------------------------------------


USAGE_PATHS = (
    "/v1/organization/usage/audio_speeches",
    "/v1/organization/usage/audio_transcriptions",
    "/v1/organization/costs",
)
ABSURD_QUERIES: list[tuple[dict[str, Any], str]] = [
    ({}, "start_time"),
    ({"start_time": MAX_TIME * 1000}, "start_time"),
    ({"start_time": -1}, "start_time"),
    ({"start_time": "1e9"}, "start_time"),
    ({"start_time": "9" * 400}, "start_time"),
    ({"start_time": 0, "end_time": "10" * 30}, "end_time"),
    ({"start_time": 1_700_000_000, "end_time": 1_600_000_000}, "end_time"),
    ({"start_time": MAX_TIME - 10}, "start_time"),  # in the future: no end_time given
    ({"start_time": 0, "limit": 10**9}, "limit"),
    ({"start_time": 0, "limit": 0}, "limit"),
    ({"start_time": 0, "limit": "ten"}, "limit"),
    ({"start_time": 0, "bucket_width": "1s"}, "bucket_width"),
    ({"start_time": 0, "bucket_width": "1d" * 1000}, "bucket_width"),
    ({"start_time": 0, "page": "page_" + "A" * 5000}, "page"),
    ({"start_time": 0, "page": "page_eyJidWNrZXRfc3RhcnQiOiAiMCJ9"}, "page"),  # a string inside
    ({"start_time": 0, "page": "page_eyJidWNrZXRfc3RhcnQiOjF9"}, "page"),  # not a bucket start
    ({"start_time": 0, "page": "\x00\x01"}, "page"),
    ({"start_time": 0, "group_by": "everything"}, "group_by"),
]


@pytest.mark.parametrize("path", USAGE_PATHS)
@pytest.mark.parametrize(("query", "param"), ABSURD_QUERIES, ids=str)
def test_absurd_usage_query(server: Server, path: str, query: dict[str, Any], param: str) -> None:
    with server.admin(timeout=TIMEOUT_S) as admin:
        assert_refused(admin.get(path, params=query), param)


@pytest.mark.parametrize("path", USAGE_PATHS)
def test_widest_usage_range_is_one_bounded_page(server: Server, path: str) -> None:
    """All of time in minute buckets is 13 billion buckets: one page of at most ``limit``."""
    query = {"start_time": 0, "end_time": MAX_TIME, "bucket_width": "1m", "limit": 1440}
    with server.admin(timeout=TIMEOUT_S) as admin:
        response = admin.get(path, params=query)
    assert response.status_code == 200, response.text
    page = response.json()
    assert len(page["data"]) == 1440 and page["has_more"] is True
    with server.admin(timeout=TIMEOUT_S) as admin:
        last = admin.get(path, params={**query, "start_time": MAX_TIME - 90})
    assert last.status_code == 200 and len(last.json()["data"]) == 2


def test_catalog_absurd_page(client: httpx.Client) -> None:
    assert_refused(client.get("/api/models", params={"page": -1}), "page")
    assert_refused(client.get("/api/models", params={"page_size": 10**9}), "page_size")
    assert_refused(client.get("/api/models", params={"page": "1e3"}), "page")

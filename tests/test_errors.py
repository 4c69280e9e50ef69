"""Every bad input gets OpenAI's error envelope with the right status, type, code and param.

Each case is checked twice where the SDK can express it: with plain HTTP (the wire format) and
with the official SDK (the exception class and attributes a client programs against). The
request id at the end of every message must equal the ``x-request-id`` header, and no bad input
may ever produce a 500.
"""

from __future__ import annotations

import io
import json
from typing import Any

import av
import httpx
import numpy as np
import openai
import pytest
from conftest import Server, audio_path

ENVELOPE_KEYS = {"message", "type", "param", "code"}
SPEECH = {"model": "tts-1", "input": "Hello there.", "voice": "alloy"}
SHORT_CLIP = "en-librispeech-1089-134686-0001.flac"  # 3 s, so valid uploads stay cheap


# --- helpers --------------------------------------------------------------------------------


def assert_error(
    response: httpx.Response,
    status: int,
    code: str | None,
    param: str | None,
    type_: str = "invalid_request_error",
) -> dict[str, Any]:
    """Assert the envelope, its values and the request id; return the ``error`` object."""
    assert response.status_code < 500, response.text
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == ENVELOPE_KEYS, error
    assert (error["type"], error["code"], error["param"]) == (type_, code, param), error
    request_id = response.headers["x-request-id"]
    assert request_id.startswith("req_")
    assert error["message"].endswith(f"(request id: {request_id})"), error["message"]
    return error  # type: ignore[no-any-return]


def assert_sdk_error(
    exc: openai.APIStatusError,
    cls: type[openai.APIStatusError],
    status: int,
    code: str | None,
    param: str | None,
    type_: str = "invalid_request_error",
) -> None:
    """The SDK raised ``cls`` and exposes code, param, type and the request id."""
    assert type(exc) is cls, f"{type(exc).__name__}: {exc}"
    assert exc.status_code == status
    assert (exc.type, exc.code, exc.param) == (type_, code, param)
    assert isinstance(exc.body, dict) and set(exc.body) == ENVELOPE_KEYS
    assert exc.request_id and exc.request_id.startswith("req_")
    assert exc.request_id == exc.response.headers["x-request-id"]
    assert exc.body["message"].endswith(f"(request id: {exc.request_id})")


def video_without_audio() -> bytes:
    """A tiny valid MP4 with one H.264 (or MPEG-4) video stream and no audio stream."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for shade in range(0, 200, 20):
            pixels = np.full((64, 64, 3), shade, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def short_clip() -> bytes:
    return audio_path(SHORT_CLIP).read_bytes()


BAD_FILES: dict[str, tuple[str, bytes]] = {
    "random-bytes": ("x.mp3", np.random.default_rng(7).bytes(20_000)),
    "empty": ("empty.wav", b""),
    "text": ("notes.txt", b"This is a text file, not audio.\n" * 50),
    "video-only": ("silent.mp4", video_without_audio()),
}


# --- speech ---------------------------------------------------------------------------------

MISSING = "missing_required_parameter"
INVALID = "invalid_value"
UNSUPPORTED = "unsupported_value"
SPEECH_CASES = [
    # body, status, code, param
    pytest.param({"input": "Hi.", "voice": "alloy"}, 400, MISSING, "model", id="missing-model"),
    pytest.param({"model": "tts-1", "voice": "alloy"}, 400, MISSING, "input", id="missing-input"),
    pytest.param({"model": "tts-1", "input": "Hi."}, 400, MISSING, "voice", id="missing-voice"),
    pytest.param({**SPEECH, "input": ""}, 400, INVALID, "input", id="empty-input"),
    pytest.param({**SPEECH, "input": "a" * 4097}, 400, INVALID, "input", id="input-4097"),
    pytest.param({**SPEECH, "speed": 0.1}, 400, INVALID, "speed", id="speed-0.1"),
    pytest.param({**SPEECH, "speed": 5}, 400, INVALID, "speed", id="speed-5"),
    pytest.param(
        {**SPEECH, "response_format": "ogg"}, 400, INVALID, "response_format", id="format-ogg"
    ),
    pytest.param(
        {**SPEECH, "stream_format": "chunks"}, 400, INVALID, "stream_format", id="stream-format"
    ),
    pytest.param(
        {**SPEECH, "model": "piper-joe", "voice": "nobody"},
        400,
        UNSUPPORTED,
        "voice",
        id="unknown-voice",
    ),
    pytest.param(
        {**SPEECH, "colour": "blue"}, 400, "unknown_parameter", "colour", id="unknown-field"
    ),
    pytest.param(
        {**SPEECH, "model": "whisper-1"}, 400, "model_not_supported", "model", id="whisper-model"
    ),
    pytest.param(
        {**SPEECH, "model": "tts-9000"}, 404, "model_not_found", "model", id="unknown-model"
    ),
    # Control characters, NUL and lone surrogates: refused before any engine sees them (Piper
    # raised "embedded null character" → 500; eSpeak stopped reading at a NUL).
    pytest.param({**SPEECH, "input": "\u0000"}, 400, INVALID, "input", id="nul-only"),
    pytest.param(
        {**SPEECH, "input": "Hello. World\u0000."}, 400, INVALID, "input", id="nul-inside"
    ),
    pytest.param(
        {**SPEECH, "model": "espeak-ng", "voice": "de", "input": "Guten\u0000 Tag."},
        400,
        INVALID,
        "input",
        id="nul-espeak",
    ),
    pytest.param({**SPEECH, "input": "bell\u0007"}, 400, INVALID, "input", id="control-bel"),
    pytest.param({**SPEECH, "input": "c1\u0085"}, 400, INVALID, "input", id="control-c1"),
    pytest.param({**SPEECH, "input": "x\ud800y"}, 400, INVALID, "input", id="lone-surrogate"),
    pytest.param(
        {**SPEECH, "instructions": "calm\u0000"}, 400, INVALID, "instructions", id="nul-instr"
    ),
    pytest.param({**SPEECH, "voice": "alloy\u0000"}, 400, INVALID, "voice", id="nul-voice"),
    pytest.param({**SPEECH, "voice": {"id": "v\u001b"}}, 400, INVALID, "voice", id="esc-voice-id"),
    pytest.param({**SPEECH, "model": "tts-1\u0000"}, 400, INVALID, "model", id="nul-model"),
    # Strict types, as OpenAI's spec says "number": no boolean or numeric string as a speed.
    pytest.param({**SPEECH, "speed": True}, 400, INVALID, "speed", id="speed-true"),
    pytest.param({**SPEECH, "speed": "2"}, 400, INVALID, "speed", id="speed-string"),
]


@pytest.mark.parametrize(("body", "status", "code", "param"), SPEECH_CASES)
def test_speech_bad_input_http(
    http: httpx.Client, body: dict[str, Any], status: int, code: str, param: str
) -> None:
    """Each invalid speech request: the right status, code and param on the wire."""
    content = json.dumps(body).encode()  # ASCII with escapes: "\ud800" survives as sent
    response = http.post(
        "/v1/audio/speech", content=content, headers={"content-type": "application/json"}
    )
    assert_error(response, status, code, param)


SDK_SPEECH_CASES = [
    case
    for case in SPEECH_CASES
    if not str(case.id).startswith("missing-") and case.id != "lone-surrogate"  # not encodable
]


@pytest.mark.parametrize(("body", "status", "code", "param"), SDK_SPEECH_CASES)
def test_speech_bad_input_sdk(
    sdk: openai.OpenAI, body: dict[str, Any], status: int, code: str, param: str
) -> None:
    """The same requests through the SDK raise the matching exception class."""
    known = {"model", "input", "voice", "instructions", "response_format", "speed", "stream_format"}
    kwargs = {key: value for key, value in body.items() if key in known}
    extra = {key: value for key, value in body.items() if key not in known}
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.audio.speech.create(**kwargs, extra_body=extra or None)
    cls = openai.NotFoundError if status == 404 else openai.BadRequestError
    assert_sdk_error(caught.value, cls, status, code, param)


@pytest.mark.parametrize(
    "content",
    [
        b'{"model": "tts-1", "input": "Hi", ',
        b"not json at all",
        b"",
        b'{"model": "tts-1", "voice": "alloy", "input": "\xff\xfe caf\xe9"}',
    ],
    ids=["truncated", "not-json", "empty", "invalid-utf8"],
)
def test_speech_malformed_json(http: httpx.Client, content: bytes) -> None:
    """A body that is not JSON is a 400 naming no field (not a 422, not a 500)."""
    response = http.post(
        "/v1/audio/speech", content=content, headers={"content-type": "application/json"}
    )
    error = assert_error(response, 400, "invalid_request", None)
    assert "body" in error["message"]


@pytest.mark.parametrize("content", [b"[]", b'"hello"', b"42"], ids=["array", "string", "number"])
def test_speech_body_not_an_object(http: httpx.Client, content: bytes) -> None:
    """Valid JSON that is not an object is a 400 naming no field."""
    response = http.post(
        "/v1/audio/speech", content=content, headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "invalid_request", None)


# --- transcriptions and translations --------------------------------------------------------

W = "whisper-1"
FORM_CASES = [
    # form fields, status, code, param
    pytest.param({}, 400, MISSING, "model", id="missing-model"),
    pytest.param({"model": "whisper-9000"}, 404, "model_not_found", "model", id="unknown-model"),
    pytest.param({"model": "tts-1"}, 400, "model_not_supported", "model", id="tts-model"),
    pytest.param(
        {"model": W, "response_format": "xml"}, 400, INVALID, "response_format", id="format-xml"
    ),
    pytest.param({"model": W, "temperature": "2"}, 400, INVALID, "temperature", id="temp-2"),
    pytest.param({"model": W, "temperature": "hot"}, 400, INVALID, "temperature", id="temp-text"),
    pytest.param(
        {"model": W, "language": "klingon"}, 400, UNSUPPORTED, "language", id="language-klingon"
    ),
    pytest.param(
        {"model": W, "timestamp_granularities[]": "word"},
        400,
        UNSUPPORTED,
        "timestamp_granularities",
        id="word-with-json",
    ),
    pytest.param(
        {"model": W, "timestamp_granularities[]": "char"},
        400,
        INVALID,
        "timestamp_granularities",
        id="granularity-char",
    ),
    pytest.param(
        {"model": W, "response_format": "text", "include[]": "logprobs"},
        400,
        UNSUPPORTED,
        "include",
        id="logprobs-with-text",
    ),
    pytest.param(
        {"model": W, "colour": "blue"}, 400, "unknown_parameter", "colour", id="unknown-field"
    ),
    pytest.param({"model": W, "prompt": "a\u0000b"}, 400, INVALID, "prompt", id="nul-prompt"),
    pytest.param({"model": W, "prompt": "\u001b[2J"}, 400, INVALID, "prompt", id="esc-prompt"),
    pytest.param({"model": W, "language": "en\u0000"}, 400, INVALID, "language", id="nul-lang"),
    pytest.param({"model": "whisper-1\u0007"}, 400, INVALID, "model", id="bel-model"),
    pytest.param(
        {"model": W, "prompt": "word " * 1000}, 400, INVALID, "prompt", id="prompt-too-long"
    ),
]


@pytest.mark.parametrize("endpoint", ["transcriptions", "translations"])
@pytest.mark.parametrize(("fields", "status", "code", "param"), FORM_CASES)
def test_form_bad_input_http(
    http: httpx.Client,
    short_clip: bytes,
    endpoint: str,
    fields: dict[str, Any],
    status: int,
    code: str,
    param: str,
) -> None:
    """Each invalid transcription/translation form: the right status, code and param."""
    response = http.post(
        f"/v1/audio/{endpoint}", data=fields, files={"file": ("clip.flac", short_clip)}
    )
    assert_error(response, status, code, param)


BAD = openai.BadRequestError
SDK_FORM_CASES = [
    # options, exception class, status, code, param
    pytest.param(
        {"model": "whisper-9000"},
        openai.NotFoundError,
        404,
        "model_not_found",
        "model",
        id="unknown-model",
    ),
    pytest.param(
        {"model": "gpt-4o-mini-tts"}, BAD, 400, "model_not_supported", "model", id="tts-model"
    ),
    pytest.param({"response_format": "xml"}, BAD, 400, INVALID, "response_format", id="format-xml"),
    pytest.param({"temperature": 2}, BAD, 400, INVALID, "temperature", id="temp-2"),
    pytest.param({"language": "klingon"}, BAD, 400, UNSUPPORTED, "language", id="language-klingon"),
    pytest.param(
        {"timestamp_granularities": ["word"]},
        BAD,
        400,
        UNSUPPORTED,
        "timestamp_granularities",
        id="word-with-json",
    ),
    pytest.param(
        {"response_format": "text", "include": ["logprobs"]},
        BAD,
        400,
        UNSUPPORTED,
        "include",
        id="logprobs-with-text",
    ),
]


@pytest.mark.parametrize("field", ["prompt", "language", "model"])
def test_form_field_with_invalid_utf8(http: httpx.Client, short_clip: bytes, field: str) -> None:
    """A form field whose bytes are not UTF-8 (here a lone continuation byte) is refused."""
    fields = {"model": "whisper-1", field: "\x80abc"}
    body, content_type = _multipart(fields, short_clip, raw=field)
    response = http.post(
        "/v1/audio/transcriptions", content=body, headers={"content-type": content_type}
    )
    assert_error(response, 400, INVALID, field)


def _multipart(fields: dict[str, str], clip: bytes, raw: str) -> tuple[bytes, str]:
    """A multipart body built by hand, so field ``raw`` carries its bytes as latin-1 encodes
    them (httpx would encode it as UTF-8)."""
    parts = []
    for name, value in fields.items():
        data = value.encode("latin-1" if name == raw else "utf-8")
        head = f'--xyz\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        parts.append(head + data + b"\r\n")
    head = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="c.flac"\r\n\r\n'
    parts.append(head + clip + b"\r\n--xyz--\r\n")
    return b"".join(parts), "multipart/form-data; boundary=xyz"


@pytest.mark.parametrize(("options", "cls", "status", "code", "param"), SDK_FORM_CASES)
def test_transcription_bad_input_sdk(
    sdk: openai.OpenAI,
    short_clip: bytes,
    options: dict[str, Any],
    cls: type[openai.APIStatusError],
    status: int,
    code: str,
    param: str,
) -> None:
    """The same through ``client.audio.transcriptions.create``."""
    kwargs: dict[str, Any] = {"model": "whisper-1", **options}
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.audio.transcriptions.create(file=("clip.flac", short_clip), **kwargs)
    assert_sdk_error(caught.value, cls, status, code, param)


def test_translation_tts_model_sdk(sdk: openai.OpenAI, short_clip: bytes) -> None:
    """A speech model on translations is model_not_supported through the SDK too."""
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.audio.translations.create(model="tts-1", file=("clip.flac", short_clip))
    assert_sdk_error(caught.value, openai.BadRequestError, 400, "model_not_supported", "model")


@pytest.mark.parametrize("endpoint", ["transcriptions", "translations"])
def test_missing_file(http: httpx.Client, endpoint: str) -> None:
    """No file at all, or ``file`` sent as a text field: missing parameter ``file``."""
    response = http.post(f"/v1/audio/{endpoint}", data={"model": "whisper-1"})
    assert_error(response, 400, "missing_required_parameter", "file")
    response = http.post(f"/v1/audio/{endpoint}", data={"model": "whisper-1", "file": "a.mp3"})
    assert_error(response, 400, "missing_required_parameter", "file")


def test_not_multipart(http: httpx.Client) -> None:
    """A JSON body on an upload endpoint is a clean 400, not a 500."""
    response = http.post("/v1/audio/transcriptions", json={"model": "whisper-1"})
    assert response.status_code == 400, response.text
    assert set(response.json()["error"]) == ENVELOPE_KEYS


@pytest.mark.parametrize("kind", list(BAD_FILES))
@pytest.mark.parametrize("endpoint", ["transcriptions", "translations"])
def test_invalid_audio_http(http: httpx.Client, endpoint: str, kind: str) -> None:
    """Undecodable bytes, an empty file, text and a video without sound: invalid_audio."""
    response = http.post(
        f"/v1/audio/{endpoint}", data={"model": "whisper-1"}, files={"file": BAD_FILES[kind]}
    )
    assert_error(response, 400, "invalid_audio", "file")


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_invalid_audio_sdk(sdk: openai.OpenAI, kind: str) -> None:
    """The same through the SDK: BadRequestError with code invalid_audio, param file."""
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.audio.transcriptions.create(model="whisper-1", file=BAD_FILES[kind])
    assert_sdk_error(caught.value, openai.BadRequestError, 400, "invalid_audio", "file")


def test_server_still_transcribes_after_bad_input(sdk: openai.OpenAI, short_clip: bytes) -> None:
    """After all the bad requests above, a good one still works (no poisoned engine state)."""
    result = sdk.audio.transcriptions.create(model="whisper-1", file=("clip.flac", short_clip))
    assert "belly" in result.text.lower()


# --- authentication -------------------------------------------------------------------------

AUTH_HEADERS = {
    "no-header": {},
    "scheme-only": {"Authorization": "Bearer"},
    "wrong-key": {"Authorization": "Bearer sk-not-the-key"},
    "basic-scheme": {"Authorization": "Basic c2stdm94Z2F0ZS10ZXN0LWtleQ=="},
    "key-without-scheme": {"Authorization": "sk-voxgate-test-key"},
    "token-scheme": {"Authorization": "Token sk-voxgate-test-key"},
}
AUTH_REQUESTS: dict[str, dict[str, Any]] = {
    "models": {"method": "GET", "url": "/v1/models"},
    "model": {"method": "GET", "url": "/v1/models/whisper-1"},
    "speech": {"method": "POST", "url": "/v1/audio/speech", "json": SPEECH},
    "speech-invalid-body": {"method": "POST", "url": "/v1/audio/speech", "json": {"speed": 9}},
    "speech-malformed-json": {"method": "POST", "url": "/v1/audio/speech", "content": b"{oops"},
    "transcriptions": {
        "method": "POST",
        "url": "/v1/audio/transcriptions",
        "data": {"model": "whisper-1"},
        "files": {"file": ("x.wav", b"RIFF")},
    },
    "translations": {
        "method": "POST",
        "url": "/v1/audio/translations",
        "data": {"model": "whisper-1"},
        "files": {"file": ("x.wav", b"RIFF")},
    },
}


@pytest.mark.parametrize("request_kind", list(AUTH_REQUESTS))
@pytest.mark.parametrize("header_kind", list(AUTH_HEADERS))
def test_auth_required_http(server: Server, header_kind: str, request_kind: str) -> None:
    """Every /v1 route answers 401 invalid_api_key without a valid Bearer key."""
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        spec = AUTH_REQUESTS[request_kind]
        response = client.request(**spec, headers=AUTH_HEADERS[header_kind])
    assert_error(response, 401, "invalid_api_key", None)


def test_auth_wrong_key_sdk(server: Server) -> None:
    """A wrong key through the SDK: AuthenticationError, code invalid_api_key."""
    client = openai.OpenAI(base_url=server.v1, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.models.list()
    assert_sdk_error(caught.value, openai.AuthenticationError, 401, "invalid_api_key", None)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.audio.speech.create(model="tts-1", input="Hi.", voice="alloy")
    assert_sdk_error(caught.value, openai.AuthenticationError, 401, "invalid_api_key", None)


@pytest.mark.parametrize(
    "authorization", [f"Basic {'x' * 8}", "sk-voxgate-test-key"], ids=["basic", "no-scheme"]
)
def test_auth_non_bearer_sdk(server: Server, authorization: str) -> None:
    """The right key under another scheme is still refused (SDK with an overridden header)."""
    client = server.sdk(default_headers={"Authorization": authorization})
    with pytest.raises(openai.AuthenticationError) as caught:
        client.models.retrieve("whisper-1")
    assert_sdk_error(caught.value, openai.AuthenticationError, 401, "invalid_api_key", None)


def test_auth_bearer_is_case_insensitive(server: Server) -> None:
    """``bearer`` in lower case is the same scheme (RFC 9110: schemes are case-insensitive)."""
    response = httpx.get(
        f"{server.base_url}/v1/models", headers={"Authorization": f"bearer {server.api_key}"}
    )
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/health", "/api/models", "/api/models?page=1&page_size=2"])
def test_public_routes_need_no_key(server: Server, path: str) -> None:
    """/health and the public catalog answer without any Authorization header."""
    response = httpx.get(f"{server.base_url}{path}", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"].startswith("req_")


def test_public_routes_ignore_a_wrong_key(server: Server) -> None:
    """A wrong key on a public route is not an error either."""
    response = httpx.get(
        f"{server.base_url}/api/models", headers={"Authorization": "Bearer nope"}, timeout=30
    )
    assert response.status_code == 200


# --- routing --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/nope", "/v1/audio/nope", "/nope", "/v1/audio/speech/x"])
def test_unknown_route(http: httpx.Client, path: str) -> None:
    """Unknown routes are 404 in the envelope; under /v1 the key is checked first."""
    assert_error(http.get(path), 404, "not_found", None)
    anonymous = httpx.post(f"{http.base_url}{path}", timeout=30)
    if path.startswith("/v1/"):
        assert_error(anonymous, 401, "invalid_api_key", None)
    else:
        assert_error(anonymous, 404, "not_found", None)


def test_wrong_method(http: httpx.Client) -> None:
    """A GET on a POST-only route is 405 in the envelope."""
    assert_error(http.get("/v1/audio/speech"), 405, "method_not_allowed", None)
    assert_error(http.get("/v1/audio/transcriptions"), 405, "method_not_allowed", None)


def test_unknown_model_retrieve(http: httpx.Client, sdk: openai.OpenAI) -> None:
    """GET /v1/models/{unknown}: 404 model_not_found naming ``model``."""
    assert_error(http.get("/v1/models/whisper-9000"), 404, "model_not_found", "model")
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.models.retrieve("whisper-9000")
    assert_sdk_error(caught.value, openai.NotFoundError, 404, "model_not_found", "model")


def test_request_ids_are_unique(http: httpx.Client) -> None:
    """Each response has its own request id, on success and on error."""
    ids = {http.get("/v1/models").headers["x-request-id"] for _ in range(3)}
    ids |= {http.get("/v1/nope").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 6

"""Security: auth never switches off by itself, the admin key stays out of /v1/audio, only the
intended routes are metered, start-up refuses weak settings, slow clients are cut off.

Each server here has its own SQLite database, so keys created in one test never open or close
another's server. Slow-client tests talk raw HTTP/1.1 over sockets, on a server whose body and
header timeouts are set to a few seconds.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import conftest
import httpx
import pytest
from conftest import (
    ADMIN_KEY,
    LedgerReader,
    Server,
    StartServer,
    assert_error_envelope,
    create_key,
    revoke_key,
)
from pydantic import SecretStr

from voxgate.settings import Settings, serve_refusal
from voxgate.storage.keys import Limits

# This module starts three servers of its own; on a machine shared with other test runs their
# start-up (loading three engines) has taken over 120 s.
conftest.STARTUP_TIMEOUT_S = max(conftest.STARTUP_TIMEOUT_S, 600)

SPEECH = {"model": "espeak-ng", "voice": "en-us", "input": "Hi.", "response_format": "pcm"}


@dataclass(frozen=True)
class Keyless:
    """A server with auth on and no bootstrap key: only stored keys can get in."""

    server: Server
    database_url: str

    def get(self, path: str, secret: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return httpx.get(f"{self.server.base_url}{path}", headers=headers, timeout=60)


@pytest.fixture(scope="module")
def keyless(
    start_server: StartServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Keyless]:
    database_url = f"sqlite:///{tmp_path_factory.mktemp('keyless-db') / 'voxgate.db'}"
    with start_server(VOXGATE_DATABASE_URL=database_url, VOXGATE_API_KEYS="") as server:
        yield Keyless(server, database_url)


@dataclass(frozen=True)
class Guarded:
    """A server with short body and header timeouts, CORS for one origin, its own ledger."""

    server: Server
    database_url: str
    ledger: LedgerReader


GUARDED_ORIGIN = "https://app.example"
BODY_IDLE_TIMEOUT_S = 2
BODY_TIMEOUT_S = 6
HEADER_TIMEOUT_S = 2


@pytest.fixture(scope="module")
def guarded(
    start_server: StartServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Guarded]:
    database_url = f"sqlite:///{tmp_path_factory.mktemp('guarded-db') / 'voxgate.db'}"
    with (
        LedgerReader(database_url) as ledger,
        start_server(
            VOXGATE_DATABASE_URL=database_url,
            VOXGATE_BODY_IDLE_TIMEOUT_S=str(BODY_IDLE_TIMEOUT_S),
            VOXGATE_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
            VOXGATE_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
            VOXGATE_CORS_ORIGINS=GUARDED_ORIGIN,
        ) as server,
    ):
        yield Guarded(server, database_url, ledger)


# --- finding 2: auth is a setting, not a side effect of key management ----------------------


def test_auth_on_with_no_key_yet_is_401_saying_how_to_create_one(keyless: Keyless) -> None:
    """A fresh install is closed, not open: 401 naming `voxgate keys create`, VOXGATE_API_KEYS."""
    for secret in (None, "sk-anything"):
        error = assert_error_envelope(keyless.get("/v1/models", secret), 401, None)
        assert error["code"] == "invalid_api_key"
        assert "voxgate keys create" in error["message"], error
        assert "VOXGATE_API_KEYS" in error["message"], error
    speech = httpx.post(f"{keyless.server.base_url}/v1/audio/speech", json=SPEECH, timeout=60)
    assert_error_envelope(speech, 401, None)


def test_revoking_or_expiring_the_last_key_does_not_open_the_server(keyless: Keyless) -> None:
    """Revoking the only key, or letting it expire, leaves every /v1 request refused."""
    key, secret = create_key(keyless.database_url, "only")
    assert keyless.get("/v1/models", secret).status_code == 200
    assert_error_envelope(keyless.get("/v1/models"), 401, None)
    revoke_key(keyless.database_url, key.id)
    for presented in (None, secret, "sk-anything"):
        assert_error_envelope(keyless.get("/v1/models", presented), 401, None)
    create_key(keyless.database_url, "expired", expires_at=int(time.time()) - 1)
    for presented in (None, "sk-anything"):
        assert_error_envelope(keyless.get("/v1/models", presented), 401, None)


def test_auth_off_is_explicit_and_serves_anonymously(start_server: StartServer) -> None:
    """VOXGATE_AUTH=off: /v1 answers without a key; /admin still needs the admin key."""
    with start_server(VOXGATE_AUTH="off", VOXGATE_API_KEYS="") as server:
        assert httpx.get(f"{server.v1}/models", timeout=60).status_code == 200
        speech = httpx.post(f"{server.v1}/audio/speech", json=SPEECH, timeout=120)
        assert speech.status_code == 200, speech.text
        admin = httpx.get(f"{server.base_url}/admin/keys", timeout=60)
        assert_error_envelope(admin, 401, None)
        assert "VOXGATE_AUTH=off" in server.log()


# --- start-up refusals and secrets ----------------------------------------------------------


def serve_refused(**env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("VOXGATE_")}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "voxgate", "serve", "--port", "1"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "env",
    [
        {"VOXGATE_ADMIN_KEY": "change-me"},
        {"VOXGATE_ADMIN_KEY": "change-me-change-me-change-me-change-me"},
        {"VOXGATE_ADMIN_KEY": "x" * 31},
        {"VOXGATE_AUTH": "off", "VOXGATE_HOST": "0.0.0.0"},
    ],
    ids=["placeholder", "padded-placeholder", "short", "open-on-network"],
)
def test_serve_refuses_weak_settings_with_one_line(env: dict[str, str], tmp_path: Any) -> None:
    """Exit code 2 and one line on stderr, before anything is loaded or bound."""
    result = serve_refused(VOXGATE_DATA_DIR=str(tmp_path), **env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("voxgate: refusing to start:"), lines


def test_serve_refusal_allows_what_is_safe() -> None:
    strong = "a" * 32
    assert serve_refusal(Settings(admin_key=SecretStr(strong))) is None
    assert serve_refusal(Settings(auth="off", host="127.0.0.1")) is None
    assert serve_refusal(Settings(auth="off", host="::1")) is None
    assert serve_refusal(Settings(auth="off", host="0.0.0.0", allow_open_bind=True)) is None
    assert serve_refusal(Settings(auth="keys", host="0.0.0.0")) is None


def test_secrets_never_show_in_settings_repr() -> None:
    settings = Settings(api_keys="sk-boot-secret-1,sk-boot-secret-2", admin_key="a" * 40)
    text = f"{settings!r} {settings} {settings.model_dump()}"
    assert "sk-boot-secret" not in text and "a" * 40 not in text
    assert settings.bootstrap_secrets == ["sk-boot-secret-1", "sk-boot-secret-2"]
    assert settings.admin_secret == "a" * 40


# --- finding 7: only the intended routes are metered; the admin key stays out of /v1/audio --


def test_wrong_methods_and_trailing_slashes_cost_nothing(guarded: Guarded) -> None:
    """405 and 404 write no ledger row and use none of the key's requests per minute."""
    key, secret = create_key(guarded.database_url, "rpm-1", limits=Limits(rpm=1))
    with guarded.server.http_for(secret, follow_redirects=True) as client:
        for method in ("GET", "PUT", "DELETE"):
            response = client.request(method, "/v1/audio/speech")
            assert_error_envelope(response, 405, None)
        for path in ("/v1/audio/speech/", "/v1/audio/transcriptions/", "/v1/audio/translations/"):
            response = client.post(path, json=SPEECH)
            assert_error_envelope(response, 404, None)
            assert not response.history, "no redirect into a second, metered request"
        assert guarded.ledger.rows(key.id) == []
        response = client.post("/v1/audio/speech", json=SPEECH)  # the one request of the minute
        assert response.status_code == 200, response.text
    rows = guarded.ledger.settled([response.headers["x-request-id"]])
    assert [row["model"] for row in rows.values()] == ["espeak-ng"]
    assert len(guarded.ledger.rows(key.id)) == 1


def test_admin_key_is_refused_on_v1_audio_but_not_on_usage(guarded: Guarded) -> None:
    with guarded.server.admin() as admin:
        error = assert_error_envelope(admin.post("/v1/audio/speech", json=SPEECH), 403, None)
        assert "API key" in error["message"]
        assert_error_envelope(admin.get("/v1/models"), 403, None)
        usage = admin.get("/v1/organization/usage/audio_speeches", params={"start_time": 0})
        assert usage.status_code == 200, usage.text
    assert all(row["api_key_id"] is not None for row in guarded.ledger.rows())


# --- finding 8: body size limits, before the body is read -----------------------------------


def test_oversized_json_is_413_by_content_length(guarded: Guarded) -> None:
    body = json.dumps({**SPEECH, "input": "a" * (2 * 1024 * 1024)}).encode()
    with guarded.server.http() as client:
        response = client.post(
            "/v1/audio/speech", content=body, headers={"content-type": "application/json"}
        )
    error = assert_error_envelope(response, 413, None)
    assert error["code"] == "payload_too_large"


def test_oversized_json_is_413_while_streaming(guarded: Guarded) -> None:
    """A chunked body (no Content-Length) is counted as it arrives."""

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "espeak-ng", "voice": "en-us", "input": "'
        for _ in range(64):
            yield b"a" * 65536

    with guarded.server.http() as client:
        response = client.post(
            "/v1/audio/speech", content=chunks(), headers={"content-type": "application/json"}
        )
    assert_error_envelope(response, 413, None)


# --- finding 5: slow clients ----------------------------------------------------------------


def raw_connection(server: Server) -> socket.socket:
    host, port = server.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (fails on a 60 s stall)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_slow_headers_are_cut_off(guarded: Guarded) -> None:
    """Request line and headers that never complete: the server closes the connection."""
    with raw_connection(guarded.server) as sock:
        sock.sendall(b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n")
        for _ in range(3):
            sock.sendall(b"X")  # one header byte, then nothing
            time.sleep(0.2)
        assert read_until_closed(sock) == b""
    with raw_connection(guarded.server) as sock:  # connected, never sends a byte
        assert read_until_closed(sock) == b""


def multipart_head(secret: str, length: int) -> bytes:
    return (
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {secret}\r\n"
        "Content-Type: multipart/form-data; boundary=b0undary\r\n"
        f"Content-Length: {length}\r\n\r\n"
        '--b0undary\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        '--b0undary\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\nRIFF"
    ).encode()


@pytest.mark.parametrize("style", ["stalled", "trickling"])
def test_slow_upload_is_408_and_frees_the_key_slot(guarded: Guarded, style: str) -> None:
    """A stalled or trickling upload gets 408 and its connection closed; the key's only
    concurrency slot is free again and no engine ever saw it."""
    key, secret = create_key(
        guarded.database_url, f"slow-{style}", limits=Limits(max_concurrency=1)
    )
    with raw_connection(guarded.server) as sock:
        sock.sendall(multipart_head(secret, 1_000_000))
        if style == "trickling":  # one byte at a time, for longer than the whole body may take
            sock.settimeout(0.5)
            try:
                for _ in range(BODY_TIMEOUT_S * 20):
                    sock.sendall(b"\x00")
                    time.sleep(0.25)
            except (TimeoutError, OSError):
                pass  # the server closed the connection while we were still sending
            sock.settimeout(60)
        try:
            answer = read_until_closed(sock)
        except ConnectionResetError:
            answer = b""
    health = httpx.get(f"{guarded.server.base_url}/health", timeout=60).json()
    assert health["engines"]["faster-whisper"] == {"running": 0, "queued": 0}, health
    if answer:  # a trickler may see a reset instead, when its last bytes crossed the close
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer[:200]
        assert json.loads(body)["error"]["code"] == "request_timeout"
    rows = guarded.ledger.settled([row["request_id"] for row in guarded.ledger.rows(key.id)])
    assert [row["http_status"] for row in rows.values()] == [408]
    with guarded.server.http_for(secret) as client:  # the slot is free: the next request runs
        assert client.post("/v1/audio/speech", json=SPEECH).status_code == 200


def test_a_slow_upload_holds_no_concurrency_slot(guarded: Guarded) -> None:
    """A key with one concurrency slot, one of its uploads still arriving: its other request is
    served meanwhile, since the slot is taken once a body is in (it was taken before the body
    was read, so the slow uploader held it). ``Expect: 100-continue`` makes it deterministic:
    the server answers 100 once the handler starts to read the body, i.e. after admission."""
    _, secret = create_key(guarded.database_url, "slow-holder", limits=Limits(max_concurrency=1))
    head = multipart_head(secret, 1_000_000)
    headers, _, body = head.partition(b"\r\n\r\n")
    with raw_connection(guarded.server) as sock:
        sock.sendall(headers + b"\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 100"), "the handler reads the body"
        sock.sendall(body)  # part of the body; the rest never comes
        with guarded.server.http_for(secret) as client:
            response = client.post("/v1/audio/speech", json=SPEECH)
        assert response.status_code == 200, response.text
    rows = guarded.ledger.settled([response.headers["x-request-id"]])
    assert [row["status"] for row in rows.values()] == ["succeeded"]


def test_the_slot_is_taken_once_the_body_is_in(guarded: Guarded) -> None:
    """The other side: while one request of the key runs (a speech stream held open), an
    upload that has arrived whole is refused 429 concurrency_limit_exceeded with the envelope,
    not passed on to a handler, and its row says rejected."""
    _, secret = create_key(guarded.database_url, "busy-holder", limits=Limits(max_concurrency=1))
    long_text = ("A sentence to keep the engine going for a while. " * 80)[:4000]
    with guarded.server.http_for(secret) as client:
        # Minutes of Piper's audio: the stream runs for as long as this client does not read.
        body = {"model": "tts-1", "voice": "alloy", "input": long_text, "response_format": "pcm"}
        with client.stream("POST", "/v1/audio/speech", json=body) as running:
            assert running.status_code == 200
            next(running.iter_raw())  # it runs, and holds the key's only slot
            with guarded.server.http_for(secret) as other:
                refused = other.post(
                    "/v1/audio/transcriptions",
                    files={"file": ("a.wav", b"RIFF" + b"\x00" * 1000)},
                    data={"model": "whisper-1"},
                )
    error = assert_error_envelope(refused, 429, None)
    assert error["code"] == "concurrency_limit_exceeded"
    assert refused.headers["retry-after"] == "1"
    rows = guarded.ledger.settled([refused.headers["x-request-id"]])
    assert [(row["status"], row["http_status"]) for row in rows.values()] == [("rejected", 429)]


# --- request ids and CORS -------------------------------------------------------------------


def test_client_request_id_is_echoed_only_when_well_formed(guarded: Guarded) -> None:
    with guarded.server.http() as client:
        good = client.get("/v1/models", headers={"x-client-request-id": "job-42.a:b_c"})
        assert good.headers["x-client-request-id"] == "job-42.a:b_c"
        assert good.headers["x-request-id"].startswith("req_")
        chosen = client.get("/v1/models", headers={"x-request-id": "req_chosen_by_client"})
        assert chosen.headers["x-request-id"] != "req_chosen_by_client"
        for bad in ("x" * 129, "has space", "sémantique", "a;b"):
            raw = bad.encode()
            headers = {"x-client-request-id": raw, "x-request-id": raw}
            response = client.get("/v1/models", headers=headers)
            assert "x-client-request-id" not in response.headers
            assert response.headers["x-request-id"].startswith("req_")


def test_cors_is_off_unless_configured(keyless: Keyless, guarded: Guarded) -> None:
    preflight = {
        "Origin": GUARDED_ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    off = httpx.options(f"{keyless.server.v1}/audio/speech", headers=preflight, timeout=60)
    assert "access-control-allow-origin" not in off.headers
    on = httpx.options(f"{guarded.server.v1}/audio/speech", headers=preflight, timeout=60)
    assert on.status_code == 200, on.text
    assert on.headers["access-control-allow-origin"] == GUARDED_ORIGIN
    other = httpx.options(
        f"{guarded.server.v1}/audio/speech",
        headers={**preflight, "Origin": "https://evil.example"},
        timeout=60,
    )
    assert "access-control-allow-origin" not in other.headers
    assert ADMIN_KEY  # the harness's admin key satisfies the 32-character rule
    assert serve_refusal(Settings(admin_key=SecretStr(ADMIN_KEY))) is None


# --- absurd query parameters on the usage API -----------------------------------------------


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ([("start_time", 0), *[("api_key_ids", f"key_{i}") for i in range(101)]], "api_key_ids"),
        ([("start_time", 0), *[("models[]", f"m{i}") for i in range(101)]], "models"),
        ([("start_time", 0), ("models", "m" * 201)], "models"),
        ([("start_time", 0), ("limit", 10**9)], "limit"),
        ([("start_time", 0), ("bucket_width", "1m"), ("limit", 1441)], "limit"),
        ([("start_time", -1)], "start_time"),
        ([("start_time", 0), ("end_time", 10**30)], "end_time"),
    ],
    ids=["key-ids-101", "models-101", "model-201-chars", "limit-1e9", "limit-1441", "start", "end"],
)
def test_usage_api_bounds_absurd_parameters(
    guarded: Guarded, params: list[tuple[str, Any]], param: str
) -> None:
    with guarded.server.admin() as admin:
        response = admin.get("/v1/organization/usage/audio_speeches", params=params)
    assert_error_envelope(response, 400, param)

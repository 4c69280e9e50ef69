"""A fake OpenAI-compatible audio API on loopback that misbehaves on purpose, chosen by model name.

Why it exists: voxgate's upstream provider must be tested against a real HTTP server whose
failures we control (issue 7, item 8), and the pass-through benchmark needs a baseline that costs
as little as possible (item 9). So this is a raw ASGI app on uvicorn + httptools (uvloop when
installed) with no framework in the hot path; uploads are parsed with python-multipart's streaming
parser and hashed as they stream in, never held whole in memory (except non-WAV uploads, which are
kept to measure their length; tests send small ones).

Run it: ``python tests/fake_upstream.py --port N [--host 127.0.0.1]``, or from tests and bench::

    with FakeUpstream() as up:
        client = openai.OpenAI(base_url=up.base_url, api_key="sk-upstream")
        ...
        up.requests()  # what it received

Behaviour by the request's ``model`` (prefix match); anything not listed succeeds:
``fail-429`` (Retry-After: 1), ``fail-500|502|503``, ``flaky-N`` (first N requests per model name
since the last reset get 503), ``reset`` (connection dropped with no response), ``slow-S`` (S
seconds before the response headers), ``drip-MS`` (stream chunks/events MS ms apart), ``cut``
(headers and a first chunk/event, then the connection closes), ``inflate`` (usage and duration
claim 100x the real audio length), ``bad-request`` (400), ``auth-fail`` (401), ``flaky500-N``
(first N requests per model name get 500), ``failfrom-N`` (the N-th request per model name and
every later one get 500).

A transcription model may end in a cap, ``@NKB`` (uploads over N KiB) or ``@NS`` (audio over N
seconds), e.g. ``whisper-1@1024kb`` or ``flaky500-1@45s``: beyond it the answer is 413, as a
provider with an upload limit gives. A capped model's transcript ends with the length of the
audio it got (``hello from the fake upstream [29.51 s]``), so a stitched answer shows which
piece each part came from.

Every request is recorded (method, path, model, lower-cased headers, form fields or JSON body,
the upload's sha256 and size, ``disconnected``, timestamps) and served at ``GET /_requests``;
``POST /_reset`` clears the records and the flaky counters.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import hashlib
import io
import json
import math
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_TEXT = "hello from the fake upstream"
SAMPLE_RATE = 24_000  # speech clips: 24 kHz 16-bit mono, like OpenAI's pcm
INFLATE = 100
CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}
MODELS = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "tts-1", "gpt-4o-mini-tts")
# Uploads other than WAV are kept (up to this size) to measure their length with PyAV.
KEEP_UPLOAD_BYTES = 32 * 1024 * 1024
HEAD_BYTES = 4096  # enough of a WAV upload to read its length from the header


@dataclass(frozen=True)
class Config:
    """What the server says and how it paces itself; set from the command line."""

    text: str = DEFAULT_TEXT
    speech_ms: int = 500  # length of the speech clip it returns
    chunks: int = 4  # a speech clip / SSE stream is sent as this many pieces
    max_records: int = 100_000


# --- audio ------------------------------------------------------------------------------------


def tone_samples(milliseconds: int) -> bytes:
    """A 440 Hz tone, 16-bit little-endian mono at SAMPLE_RATE: real audio anyone can decode."""
    count = SAMPLE_RATE * milliseconds // 1000
    step = 2 * math.pi * 440 / SAMPLE_RATE
    values = (int(8000 * math.sin(step * i)) for i in range(count))
    return struct.pack(f"<{count}h", *values)


def wav_file(pcm: bytes) -> bytes:
    """A canonical 44-byte-header WAV around 16-bit mono PCM."""
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + len(pcm),
        b"WAVE",
        b"fmt ",
        16,
        1,
        1,
        SAMPLE_RATE,
        SAMPLE_RATE * 2,
        2,
        16,
        b"data",
        len(pcm),
    )
    return header + pcm


def encode_clip(response_format: str, pcm: bytes) -> bytes:
    """The tone in one of OpenAI's speech formats (PyAV for the compressed ones)."""
    if response_format == "pcm":
        return pcm
    if response_format == "wav":
        return wav_file(pcm)
    import av  # only the compressed formats need it; keeps start-up fast

    container_format, codec = {
        "mp3": ("mp3", "libmp3lame"),
        "opus": ("ogg", "libopus"),
        "aac": ("adts", "aac"),
        "flac": ("flac", "flac"),
    }[response_format]
    out = io.BytesIO()
    with av.open(out, "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=48_000 if codec == "libopus" else SAMPLE_RATE)
        stream.layout = "mono"
        frame = av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
        frame.sample_rate = SAMPLE_RATE
        frame.planes[0].update(pcm)
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def wav_seconds(head: bytes) -> float | None:
    """Length of a WAV upload from its header alone (None if it isn't a plain WAV)."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    offset, byte_rate = 12, 0
    while offset + 8 <= len(head):
        chunk_id, size = struct.unpack_from("<4sI", head, offset)
        if chunk_id == b"fmt " and offset + 16 <= len(head):
            byte_rate = struct.unpack_from("<I", head, offset + 16)[0]
        if chunk_id == b"data":
            return size / byte_rate if byte_rate else None
        offset += 8 + size + (size & 1)
    return None


def probe_seconds(data: bytes) -> float:
    """Length of a compressed upload, decoded with PyAV (0.0 if it isn't audio)."""
    try:
        import av

        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.audio[0]
            samples = sum(frame.samples for frame in container.decode(stream))
            return samples / (stream.rate or 1)
    except Exception:
        return 0.0


# --- transcripts ------------------------------------------------------------------------------


def timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def transcript_body(
    response_format: str, text: str, seconds: float, task: str, words: bool
) -> tuple[bytes, str]:
    """The body and content type OpenAI sends for each transcription response_format."""
    usage = {"type": "duration", "seconds": round(seconds, 3)}
    if response_format == "text":
        return f"{text}\n".encode(), "text/plain; charset=utf-8"
    if response_format == "srt":
        body = f"1\n{timestamp(0, ',')} --> {timestamp(seconds, ',')}\n{text}\n\n"
        return body.encode(), "text/plain; charset=utf-8"
    if response_format == "vtt":
        body = f"WEBVTT\n\n{timestamp(0, '.')} --> {timestamp(seconds, '.')}\n{text}\n\n"
        return body.encode(), "text/vtt; charset=utf-8"
    if response_format == "verbose_json":
        segment = {
            "id": 0,
            "seek": 0,
            "start": 0.0,
            "end": round(seconds, 3),
            "text": f" {text}",
            "tokens": list(range(50364, 50364 + len(text.split()))),
            "temperature": 0.0,
            "avg_logprob": -0.2,
            "compression_ratio": 1.0,
            "no_speech_prob": 0.01,
        }
        verbose: dict[str, Any] = {
            "task": task,
            "language": "english",
            "duration": round(seconds, 3),
            "text": text,
            "segments": [segment],
            "usage": usage,
        }
        if words:
            parts = text.split()
            step = seconds / max(len(parts), 1)
            verbose["words"] = [
                {"word": w, "start": round(i * step, 3), "end": round((i + 1) * step, 3)}
                for i, w in enumerate(parts)
            ]
        return json.dumps(verbose).encode(), "application/json"
    return json.dumps({"text": text, "usage": usage}).encode(), "application/json"


def sse(event: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def transcript_events(text: str, seconds: float) -> list[bytes]:
    """``transcript.text.delta`` per word, then ``transcript.text.done`` with usage."""
    words = text.split(" ")
    deltas = [w if i == 0 else f" {w}" for i, w in enumerate(words)]
    events = [sse({"type": "transcript.text.delta", "delta": d}) for d in deltas]
    usage = {"type": "duration", "seconds": round(seconds, 3)}
    events.append(sse({"type": "transcript.text.done", "text": text, "usage": usage}))
    return events


# --- errors -----------------------------------------------------------------------------------


def envelope(message: str, kind: str, param: str | None = None, code: str | None = None) -> bytes:
    error = {"message": message, "type": kind, "param": param, "code": code}
    return json.dumps({"error": error}).encode()


FAILURES: dict[str, tuple[int, bytes, list[tuple[bytes, bytes]]]] = {
    "fail-429": (
        429,
        envelope("Rate limit reached (fake upstream).", "requests", None, "rate_limit_exceeded"),
        [(b"retry-after", b"1"), (b"retry-after-ms", b"1000")],
    ),
    "fail-500": (500, envelope("The server had an error (fake upstream).", "server_error"), []),
    "fail-502": (502, envelope("Bad gateway (fake upstream).", "server_error"), []),
    "fail-503": (503, envelope("The engine is overloaded (fake upstream).", "server_error"), []),
    "bad-request": (
        400,
        envelope(
            "Invalid language 'xx' (fake upstream bad-request).",
            "invalid_request_error",
            "language",
            "invalid_value",
        ),
        [],
    ),
    "auth-fail": (
        401,
        envelope(
            "Incorrect API key provided (fake upstream).",
            "invalid_request_error",
            None,
            "invalid_api_key",
        ),
        [],
    ),
}
FLAKY_FAILURE = FAILURES["fail-503"]


def split_cap(model: str) -> tuple[str, int | None, float | None]:
    """``name@1024kb`` → (name, 1048576 bytes, None); ``name@45s`` → (name, None, 45.0)."""
    base, _, cap = model.partition("@")
    cap = cap.lower()
    try:
        if cap.endswith("kb"):
            return base, int(float(cap[:-2]) * 1024), None
        if cap.endswith("s"):
            return base, None, float(cap[:-1])
    except ValueError:
        pass
    return base, None, None


def number_after(model: str, prefix: str) -> float:
    try:
        return float(model[len(prefix) :])
    except ValueError:
        return 0.0


# --- multipart --------------------------------------------------------------------------------


@dataclass
class Upload:
    """What a multipart request carried: its text fields and its file's digest and size."""

    fields: dict[str, Any] = field(default_factory=dict)
    file_field: str | None = None
    filename: str | None = None
    content_type: str | None = None
    sha256: str | None = None
    size: int = 0
    head: bytes = b""  # first HEAD_BYTES of the file (a WAV header)
    kept: bytearray | None = None  # whole file when it isn't WAV, to measure its length

    def seconds(self) -> float:
        measured = wav_seconds(self.head)
        if measured is not None:
            return measured
        return probe_seconds(bytes(self.kept)) if self.kept else 0.0


def add_field(fields: dict[str, Any], name: str, value: str) -> None:
    """Repeated names and ``key[]`` become lists; ``key[sub]`` stays as sent."""
    if name.endswith("[]"):
        fields.setdefault(name, []).append(value)
    elif name in fields:
        current = fields[name]
        fields[name] = [*current, value] if isinstance(current, list) else [current, value]
    else:
        fields[name] = value


def disposition(value: bytes) -> dict[str, str]:
    """Parameters of a Content-Disposition header (name, filename)."""
    params: dict[str, str] = {}
    for piece in value.decode("latin-1").split(";")[1:]:
        key, _, val = piece.strip().partition("=")
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = val[1:-1]
        params[key.lower()] = val
    return params


async def read_multipart(receive: Receive, content_type: bytes) -> Upload:
    """Parse the body as it streams in; the file is hashed, never stored (see Upload.kept)."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary", b"")
    upload = Upload()
    part: dict[str, Any] = {}
    header_name = bytearray()
    header_value = bytearray()

    def on_part_begin() -> None:
        part.clear()
        part.update(
            headers={}, data=bytearray(), hasher=None, kept=None, size=0, name="", filename=None
        )

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        part["headers"][bytes(header_name).lower()] = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        params = disposition(part["headers"].get(b"content-disposition", b""))
        part["name"] = params.get("name", "")
        part["filename"] = params.get("filename")
        if part["filename"] is not None:
            part["hasher"] = hashlib.sha256()
            part["kept"] = bytearray()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        hasher = part["hasher"]
        if hasher is None:
            part["data"].extend(chunk)
            return
        hasher.update(chunk)
        head = part["data"]
        if len(head) < HEAD_BYTES:
            head.extend(chunk[: HEAD_BYTES - len(head)])
        kept = part["kept"]
        if kept is not None and len(kept) < KEEP_UPLOAD_BYTES:
            kept.extend(chunk)
            if len(kept) >= 12 and kept[:4] == b"RIFF" and kept[8:12] == b"WAVE":
                part["kept"] = None  # a WAV's length is in its header
        part["size"] += len(chunk)

    def on_part_end() -> None:
        if part["hasher"] is None:
            add_field(upload.fields, part["name"], part["data"].decode("utf-8", "replace"))
            return
        upload.file_field = part["name"]
        upload.filename = part["filename"]
        raw_type = part["headers"].get(b"content-type")
        upload.content_type = raw_type.decode("latin-1") if raw_type else None
        upload.sha256 = part["hasher"].hexdigest()
        upload.size = part["size"]
        upload.head = bytes(part["data"])
        upload.kept = part["kept"]

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        parser.write(message.get("body", b""))
        more = message.get("more_body", False)
    parser.finalize()
    return upload


async def read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


# --- the app ----------------------------------------------------------------------------------


class Exchange:
    """One request's response side: sends, timestamps and the client-disconnect watch."""

    def __init__(self, record: dict[str, Any], receive: Receive, send: Send, request_id: str):
        self.record = record
        self.receive = receive
        self.send = send
        self.request_id = request_id.encode()
        self.watch: asyncio.Future[Message] | None = None

    async def start(self, status: int, content_type: str, extra: list[tuple[bytes, bytes]]) -> None:
        headers = [(b"content-type", content_type.encode()), (b"x-request-id", self.request_id)]
        await self.send(
            {"type": "http.response.start", "status": status, "headers": headers + extra}
        )
        self.record["first_byte_at"] = time.time()

    async def body(self, data: bytes, more: bool = False) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": more})
        if not more:
            self.record["finished_at"] = time.time()

    async def whole(
        self,
        status: int,
        data: bytes,
        content_type: str,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        length = [(b"content-length", str(len(data)).encode())]
        await self.start(status, content_type, (extra or []) + length)
        await self.body(data)

    def watch_disconnect(self) -> None:
        """Start noticing the client going away (only the paced modes pay for this)."""
        if self.watch is None:
            self.watch = asyncio.ensure_future(self.receive())

    async def pause(self, seconds: float) -> bool:
        """Sleep unless the client disconnects first; True when it did (and it is recorded)."""
        self.watch_disconnect()
        assert self.watch is not None
        done, _ = await asyncio.wait({self.watch}, timeout=seconds)
        if done:
            self.record["disconnected"] = True
        return bool(done)

    def gone(self) -> bool:
        if self.watch is not None and self.watch.done():
            self.record["disconnected"] = True
        return bool(self.record["disconnected"])

    def close(self) -> None:
        if self.watch is not None and not self.watch.done():
            self.watch.cancel()

    async def drop_connection(self, reset: bool) -> None:
        """Close the TCP connection from under the response (RST when ``reset``).

        uvicorn's ``send`` is a bound method of its per-request cycle, which holds the transport;
        that is the only way for an ASGI app to drop a connection without a response.
        """
        transport = getattr(getattr(self.send, "__self__", None), "transport", None)
        if transport is None:
            raise ConnectionAbortedError("fake upstream: dropping the connection")
        if reset:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()
        for _ in range(3):  # let uvicorn see connection_lost before the app returns
            await asyncio.sleep(0)


class FakeUpstreamApp:
    """The raw ASGI app: routes, modes, records."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.records: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=config.max_records
        )
        self.flaky: dict[str, int] = {}
        self.clips: dict[str, bytes] = {}
        self.clip_lock = asyncio.Lock()
        self.counter = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        self.counter += 1
        request_id = f"req_fake_{self.counter}"
        if path == "/_requests" and method == "GET":
            body = json.dumps(list(self.records)).encode()
            await Exchange({}, receive, send, request_id).whole(200, body, "application/json")
            return
        if path == "/_reset" and method == "POST":
            self.records.clear()
            self.flaky.clear()
            await Exchange({}, receive, send, request_id).whole(200, b"{}", "application/json")
            return
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        record: dict[str, Any] = {
            "method": method,
            "path": path,
            "model": None,
            "headers": headers,
            "fields": None,
            "json": None,
            "file": None,
            "disconnected": False,
            "received_at": time.time(),
            "first_byte_at": None,
            "finished_at": None,
            "request_id": request_id,
        }
        self.records.append(record)
        exchange = Exchange(record, receive, send, request_id)
        try:
            await self.route(exchange, scope, headers)
        finally:
            exchange.close()

    async def route(self, ex: Exchange, scope: Scope, headers: dict[str, str]) -> None:
        path, method = scope["path"], scope["method"]
        if path == "/v1/models" and method == "GET":
            data = [
                {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "fake"}
                for m in MODELS
            ]
            await ex.whole(
                200, json.dumps({"object": "list", "data": data}).encode(), "application/json"
            )
            return
        if method == "POST" and path == "/v1/audio/speech":
            await self.speech(ex)
            return
        if method == "POST" and path in ("/v1/audio/transcriptions", "/v1/audio/translations"):
            await self.transcription(
                ex, headers, task="translate" if "transl" in path else "transcribe"
            )
            return
        await read_body(ex.receive)
        body = envelope(f"Unknown path {path} (fake upstream).", "invalid_request_error")
        await ex.whole(404, body, "application/json")

    async def misbehave(self, ex: Exchange, model: str) -> bool:
        """Answer for the failure modes; True when the request has been dealt with."""
        failure = next((f for name, f in FAILURES.items() if model.startswith(name)), None)
        if failure is None and model.startswith("flaky-"):
            seen = self.flaky.get(model, 0)
            self.flaky[model] = seen + 1
            if seen < number_after(model, "flaky-"):
                failure = FLAKY_FAILURE
        for prefix in ("flaky500-", "failfrom-"):
            if failure is None and model.startswith(prefix):
                seen = self.flaky.get(model, 0) + 1
                self.flaky[model] = seen
                limit = number_after(model, prefix)
                if (seen <= limit) if prefix == "flaky500-" else (seen >= limit):
                    failure = FAILURES["fail-500"]
        if failure is not None:
            status, body, extra = failure
            await ex.whole(status, body, "application/json", extra)
            return True
        if model.startswith("reset"):
            await ex.drop_connection(reset=True)
            return True
        if model.startswith("slow-"):
            return await ex.pause(number_after(model, "slow-"))
        return False

    async def clip(self, response_format: str) -> bytes:
        """The speech clip in that format, made once (in a thread: PyAV encodes)."""
        if response_format not in self.clips:
            async with self.clip_lock:
                if response_format not in self.clips:
                    pcm = tone_samples(self.config.speech_ms)
                    self.clips[response_format] = await asyncio.to_thread(
                        encode_clip, response_format, pcm
                    )
        return self.clips[response_format]

    async def speech(self, ex: Exchange) -> None:
        raw = await read_body(ex.receive)
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            await ex.whole(
                400,
                envelope("Body is not JSON (fake upstream).", "invalid_request_error"),
                "application/json",
            )
            return
        ex.record["json"] = body
        model = str(body.get("model", ""))
        ex.record["model"] = model
        if await self.misbehave(ex, model):
            return
        response_format = str(body.get("response_format") or "mp3")
        if response_format not in CONTENT_TYPES:
            message = f"Invalid response_format '{response_format}' (fake upstream)."
            await ex.whole(
                400,
                envelope(message, "invalid_request_error", "response_format"),
                "application/json",
            )
            return
        audio = await self.clip(response_format)
        factor = INFLATE if model.startswith("inflate") else 1
        count = max(1, self.config.chunks)
        size = -(-len(audio) // count)
        pieces = [audio[i : i + size] for i in range(0, len(audio), size)]
        if body.get("stream_format") == "sse":
            characters = len(str(body.get("input", "")))
            usage = {
                "input_tokens": characters * factor,
                "output_tokens": len(audio) // 100 * factor,
                "total_tokens": (characters + len(audio) // 100) * factor,
            }
            events = [
                sse({"type": "speech.audio.delta", "audio": base64.b64encode(p).decode()})
                for p in pieces
            ]
            events.append(sse({"type": "speech.audio.done", "usage": usage}))
            await self.stream(ex, model, events, "text/event-stream")
            return
        await self.stream(ex, model, pieces, CONTENT_TYPES[response_format])

    async def stream(
        self, ex: Exchange, model: str, pieces: list[bytes], content_type: str
    ) -> None:
        """Send pieces as chunks: MS apart for ``drip-MS``, cut after the first for ``cut``."""
        delay = number_after(model, "drip-") / 1000 if model.startswith("drip-") else 0.0
        await ex.start(200, content_type, [])
        for index, piece in enumerate(pieces):
            if index and delay and await ex.pause(delay):
                return
            if ex.gone():
                return
            last = index == len(pieces) - 1
            await ex.body(piece, more=not last)
            if model.startswith("cut"):
                await ex.drop_connection(reset=False)
                return

    async def transcription(self, ex: Exchange, headers: dict[str, str], task: str) -> None:
        content_type = headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            await read_body(ex.receive)
            body = envelope(
                "Expected multipart/form-data (fake upstream).", "invalid_request_error"
            )
            await ex.whole(400, body, "application/json")
            return
        upload = await read_multipart(ex.receive, content_type.encode("latin-1"))
        ex.record["fields"] = upload.fields
        if upload.file_field is not None:
            ex.record["file"] = {
                "field": upload.file_field,
                "filename": upload.filename,
                "content_type": upload.content_type,
                "sha256": upload.sha256,
                "size": upload.size,
            }
        model = str(upload.fields.get("model", ""))
        ex.record["model"] = model
        model, max_bytes, max_s = split_cap(model)
        if await self.misbehave(ex, model):
            return
        if upload.file_field is None:
            body = envelope(
                "No file was uploaded (fake upstream).", "invalid_request_error", "file"
            )
            await ex.whole(400, body, "application/json")
            return
        seconds = (
            upload.seconds()
            if upload.head[:4] == b"RIFF"
            else await asyncio.to_thread(upload.seconds)
        )
        ex.record["file"]["seconds"] = round(seconds, 3)
        too_large = max_bytes is not None and upload.size > max_bytes
        if too_large or (max_s is not None and seconds > max_s):
            limit = f"{max_bytes} bytes" if too_large else f"{max_s:g} s"
            body = envelope(
                f"The audio is over this model's limit of {limit} (fake upstream).",
                "invalid_request_error",
                "file",
                "file_too_large",
            )
            await ex.whole(413, body, "application/json")
            return
        if model.startswith("inflate"):
            seconds *= INFLATE
        text = self.config.text
        if max_bytes is not None or max_s is not None:
            text = f"{text} [{seconds:.2f} s]"
        streamed = str(upload.fields.get("stream", "false")).lower() == "true"
        if streamed:
            await self.stream(ex, model, transcript_events(text, seconds), "text/event-stream")
            return
        response_format = str(upload.fields.get("response_format") or "json")
        granularities = upload.fields.get("timestamp_granularities[]", [])
        words = "word" in granularities
        body, media = transcript_body(response_format, text, seconds, task, words)
        if model.startswith("cut"):
            half = len(body) // 2
            await ex.start(200, media, [(b"content-length", str(len(body)).encode())])
            await ex.body(body[:half], more=True)
            await ex.drop_connection(reset=False)
            return
        await ex.whole(200, body, media)


# --- running it -------------------------------------------------------------------------------


def serve(host: str, port: int, config: Config) -> None:
    import uvicorn

    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    uvicorn.run(
        FakeUpstreamApp(config),
        host=host,
        port=port,
        http="httptools",
        loop=loop,
        lifespan="off",
        access_log=False,
        log_level="warning",
        backlog=4096,
        timeout_keep_alive=120,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--text", default=DEFAULT_TEXT, help="the transcription it returns")
    parser.add_argument("--speech-ms", type=int, default=500, help="length of the speech clip")
    parser.add_argument("--chunks", type=int, default=4, help="pieces per streamed response")
    parser.add_argument("--max-records", type=int, default=100_000)
    args = parser.parse_args(argv)
    config = Config(args.text, args.speech_ms, args.chunks, args.max_records)
    serve(args.host, args.port, config)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeUpstream:
    """The fake upstream as a subprocess on a free loopback port, for ``with`` blocks.

    ``.base_url`` is what an OpenAI client (or voxgate's provider config) takes; ``.requests()``
    and ``.reset()`` read and clear what it received.
    """

    def __init__(
        self,
        *,
        text: str = DEFAULT_TEXT,
        speech_ms: int = 500,
        chunks: int = 4,
        max_records: int = 100_000,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        startup_timeout_s: float = 60.0,
    ) -> None:
        self.options = [
            "--text", text,
            "--speech-ms", str(speech_ms),
            "--chunks", str(chunks),
            "--max-records", str(max_records),
        ]  # fmt: skip
        self.python = python
        self.env = env
        self.startup_timeout_s = startup_timeout_s
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the server)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> FakeUpstream:
        import httpx

        self.port = free_port()
        command = [self.python, str(Path(__file__).resolve()), "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, *self.options],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(self.env or {})},
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                httpx.get(f"{self.url}/_requests", timeout=1.0).raise_for_status()
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        self.log.seek(0)
        output = self.log.read().decode(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"fake upstream did not start on port {self.port}:\n{output}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def requests(self) -> list[dict[str, Any]]:
        """Every request received since the last reset, oldest first."""
        import httpx

        response = httpx.get(f"{self.url}/_requests", timeout=10.0)
        response.raise_for_status()
        records: list[dict[str, Any]] = response.json()
        return records

    def reset(self) -> None:
        """Forget the recorded requests and the ``flaky-N`` counters."""
        import httpx

        httpx.post(f"{self.url}/_reset", timeout=10.0).raise_for_status()

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


if __name__ == "__main__":
    main()

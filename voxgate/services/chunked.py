"""Long audio for remote upstreams: split at silences, send piece by piece, stitch the answers.

OpenAI caps an upload at 25 MB and many providers cap its length, so a long recording routed
upstream would be refused whole. When an upload is larger than its provider's
``max_upload_mb``, longer than its ``max_audio_s``, or the client set ``chunking_strategy``
and the audio is longer than one piece, the remote attempt sends pieces instead:

- **Split**: the spooled upload is decoded frame by frame and cut into windows at silences by
  ``audio_windows.Windower`` (Silero VAD with the ``chunking_strategy``'s parameters), each at
  most ``chunk_s`` long and short enough that its 16 kHz mono FLAC stays under the size cap
  even if nothing compresses. One window is held at a time, plus the pieces in flight.
- **Dispatch**: each piece is its own upstream request (the client's fields, ``model``
  replaced) under the provider's retry policy and breaker (``Router.retrying``), at most
  ``chunk_concurrency`` at once, delivered in order. A piece that fails on every try fails the
  attempt (``AttemptFailed(final=True)``) so the chain falls back while nothing was delivered.
- **Stitch**: answers are moved onto the file's timeline and rendered in the client's
  ``response_format`` (``services/stitching.py``); pieces are asked for verbose_json when times
  are wanted (srt, vtt, verbose_json), json otherwise. ``stream=true`` relays each piece's
  deltas as they arrive, piece after piece, then one ``transcript.text.done`` for the whole.

Nothing here knows HTTP handlers; billing stays the relay's (voxgate's measured seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol, TypeVar, cast

import anyio
import httpx
import numpy as np

from voxgate import formats, schemas
from voxgate.audio import WHISPER_SAMPLE_RATE, SpeechEncoder, pcm_pieces
from voxgate.audio_windows import VadOptions, Windower
from voxgate.concurrency import iterate_in_thread
from voxgate.errors import UpstreamFailed
from voxgate.providers.base import Task
from voxgate.providers.config import ProviderSpec, Target
from voxgate.providers.upstream.client import AttemptFailed, UpstreamClient
from voxgate.providers.upstream.multipart import MultipartBody
from voxgate.services.metering import Ticket
from voxgate.services.routing import Router
from voxgate.services.stitching import PieceAnswer, parse_answer, render, spaced
from voxgate.services.transcription import vad_options
from voxgate.uploads import SpooledUpload

P = TypeVar("P")
R = TypeVar("R")

MIB = 1024 * 1024
#: FLAC never needs much more than raw 16-bit samples (it falls back to verbatim subframes),
#: so pieces sized by this rate, with a margin for framing, fit the cap whatever the audio.
_WORST_BYTES_PER_S = 2 * WHISPER_SAMPLE_RATE
_SIZE_MARGIN = 0.9
_TIMED_FORMATS = ("srt", "vtt", "verbose_json")
#: Fields voxgate sets itself on each piece (it did the chunking).
_PIECE_OWN_FIELDS = ("response_format", "stream", "chunking_strategy")


class SplitRequest(Protocol):
    """What a routed transcription carries (``relay.TranscriptionRequest``)."""

    @property
    def task(self) -> Task: ...
    @property
    def path(self) -> str: ...
    @property
    def fields(self) -> Sequence[tuple[str, str]]: ...
    @property
    def options(self) -> schemas.TranscriptionForm: ...
    @property
    def upload(self) -> SpooledUpload: ...
    @property
    def max_s(self) -> float: ...


@dataclass
class Split:
    """The stitched answer: a whole body, or the SSE stream of every piece in order."""

    media_type: str
    body: bytes | AsyncGenerator[bytes, None]
    #: What the body would close, for a body that never started (the client left first).
    closers: tuple[Callable[[], Awaitable[None]], ...] = ()

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            if not isinstance(self.body, bytes):
                with contextlib.suppress(RuntimeError):
                    await self.body.aclose()
            for close in self.closers:
                with contextlib.suppress(RuntimeError):
                    await close()


# --- when and how long ------------------------------------------------------------------------


def piece_s(spec: ProviderSpec) -> float:
    """The longest piece sent to this provider."""
    by_size = spec.max_upload_mb * MIB * _SIZE_MARGIN / _WORST_BYTES_PER_S
    return max(1.0, min(spec.chunk_s, spec.max_audio_s or math.inf, by_size))


def must_split(spec: ProviderSpec, size: int, seconds: float, *, chunking: bool) -> bool:
    """Whether an upload of ``size`` bytes and ``seconds`` goes to the provider in pieces."""
    if size > spec.max_upload_mb * MIB:
        return True
    if spec.max_audio_s is not None and seconds > spec.max_audio_s:
        return True
    return chunking and seconds > piece_s(spec)


def _may_split(spec: ProviderSpec, size: int, *, chunking: bool) -> bool:
    """Whether the decision needs the measured length (otherwise the upload goes whole now)."""
    return size > spec.max_upload_mb * MIB or spec.max_audio_s is not None or chunking


# --- pieces -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """A window of the upload, encoded to send: 16 kHz mono FLAC, and where it starts."""

    index: int
    offset_s: float
    duration_s: float
    flac: bytes

    @property
    def end_s(self) -> float:
        return self.offset_s + self.duration_s

    def upload(self) -> SpooledUpload:
        # The encoded bytes themselves, uncopied; read by the attempt's body.
        return SpooledUpload.of_bytes(self.flac, f"piece-{self.index + 1}.flac", "audio/flac")


#: Samples converted to 16-bit and fed to the encoder at a time: a 600 s window is never
#: copied whole into temporaries (each would be 38 MB).
_ENCODE_BLOCK = 10 * WHISPER_SAMPLE_RATE


def encode_flac(audio: np.ndarray) -> bytes:
    """16 kHz float32 samples as a FLAC file (lossless, about half of raw PCM for speech)."""
    encoder = SpeechEncoder("flac", WHISPER_SAMPLE_RATE, whole=True)
    try:
        for start in range(0, len(audio), _ENCODE_BLOCK):
            block = audio[start : start + _ENCODE_BLOCK] * 32767.0
            encoder.encode(np.clip(block, -32768, 32767, out=block).astype(np.int16))
        return encoder.finish()
    finally:
        encoder.close()


def cut_pieces(
    source: BinaryIO, *, max_s: float, measured_s: float, vad: VadOptions, seconds: float
) -> Iterator[Piece]:
    """Blocking: the upload decoded frame by frame, cut at silences, each window as FLAC."""
    pcm = pcm_pieces(source, max_s=max_s, measured_s=measured_s)
    for index, window in enumerate(Windower(vad, window_s=seconds).windows(pcm)):
        yield Piece(index, window.offset_s, window.duration_s, encode_flac(window.audio))


def piece_fields(
    fields: Sequence[tuple[str, str]], model: str, response_format: str, *, stream: bool
) -> list[tuple[str, str]]:
    """The client's fields for one piece: ``model`` replaced, the format voxgate stitches from,
    times and logprobs only where that format carries them."""
    sent: list[tuple[str, str]] = []
    for name, value in fields:
        base = name.split("[", 1)[0]
        if base in _PIECE_OWN_FIELDS:
            continue
        if base == "timestamp_granularities" and response_format != "verbose_json":
            continue
        if base == "include" and response_format != "json":
            continue
        sent.append((name, model if name == "model" else value))
    sent.append(("response_format", response_format))
    if stream:
        sent.append(("stream", "true"))
    return sent


# --- dispatch ---------------------------------------------------------------------------------


async def in_order(
    items: AsyncGenerator[P, None],
    run: Callable[[P], Awaitable[R]],
    concurrency: int,
    discard: Callable[[R], Awaitable[None]] | None = None,
) -> AsyncGenerator[R, None]:
    """``run`` each item, at most ``concurrency`` at once, results yielded in the items' order.

    The next item is taken only while fewer than ``concurrency`` are in flight, so a slow
    consumer bounds how far ahead the (decoding) producer runs. Closing stops everything:
    runs in flight are cancelled, finished ones not yet yielded are ``discard``ed.
    """
    pending: deque[asyncio.Future[R]] = deque()
    more = True
    try:
        while True:
            while more and len(pending) < concurrency:
                try:
                    item = await anext(items)
                except StopAsyncIteration:
                    more = False
                else:
                    pending.append(asyncio.ensure_future(run(item)))
            if not pending:
                return
            yield await pending.popleft()
    finally:
        with anyio.CancelScope(shield=True):
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(BaseException):
                    result = await task
                    if discard is not None:
                        await discard(result)
            with contextlib.suppress(RuntimeError):
                await items.aclose()


@dataclass
class _Live:
    """A piece's streamed answer, opened with its first event in (so a piece that breaks
    before it is a failed try, retried, and nothing of it was delivered)."""

    piece: Piece
    events: AsyncGenerator[dict[str, Any], None]
    response: httpx.Response | None = None

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await self.events.aclose()
            if self.response is not None:
                await self.response.aclose()


@dataclass
class _Dispatch:
    router: Router
    client: UpstreamClient
    target: Target
    path: str
    fields: list[tuple[str, str]]

    async def send(self, piece: Piece) -> httpx.Response:
        multipart = MultipartBody(self.fields, piece.upload())
        return await self.client.open(
            self.path, content=multipart.stream(), headers=multipart.headers
        )

    async def retried(self, piece: Piece, once: Callable[[], Awaitable[R]]) -> R:
        """``once`` under the provider's retry policy; its last failure fails the attempt."""

        async def attempt(_target: Target, _client: UpstreamClient | None) -> R:
            return await once()

        try:
            return await self.router.retrying(self.client, self.target, attempt, gate=False)
        except AttemptFailed as exc:
            raise AttemptFailed(
                f"piece {piece.index + 1} (from {piece.offset_s:.1f} s): {exc.reason}",
                status=exc.status,
                final=True,
            ) from None

    async def answer(self, piece: Piece) -> PieceAnswer:
        async def once() -> PieceAnswer:
            return await self._whole(piece, await self.send(piece))

        return await self.retried(piece, once)

    async def live(self, piece: Piece) -> _Live:
        async def once() -> _Live:
            response = await self.send(piece)
            if "event-stream" not in response.headers.get("content-type", ""):
                # An upstream that does not stream (whisper-1 ignores stream=true) answers whole.
                return _Live(piece, _events_of(await self._whole(piece, response)))
            events = _sse_events(response)
            try:
                first = await anext(events)
            except (httpx.HTTPError, StopAsyncIteration):
                await _Live(piece, events, response).aclose()
                raise AttemptFailed("stream broke before its first event") from None
            except BaseException:
                await _Live(piece, events, response).aclose()
                raise
            return _Live(piece, _prepend(first, events), response)

        return await self.retried(piece, once)

    async def _whole(self, piece: Piece, response: httpx.Response) -> PieceAnswer:
        try:
            body = await response.aread()
        except httpx.HTTPError:
            raise AttemptFailed("answer broke off before it was complete") from None
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()
        try:
            kind = response.headers.get("content-type", "")
            return parse_answer(piece.offset_s, piece.duration_s, body, kind)
        except (ValueError, TypeError, KeyError):
            raise AttemptFailed("answer was not a transcript") from None


async def _prepend(
    first: dict[str, Any], rest: AsyncGenerator[dict[str, Any], None]
) -> AsyncGenerator[dict[str, Any], None]:
    try:
        yield first
        async for event in rest:
            yield event
    finally:
        await rest.aclose()


async def _events_of(answer: PieceAnswer) -> AsyncGenerator[dict[str, Any], None]:
    yield {"type": "transcript.text.delta", "delta": answer.text}
    yield {"type": "transcript.text.done", "text": answer.text}


_EVENT_END = re.compile(rb"\r?\n\r?\n")


async def _sse_events(response: httpx.Response) -> AsyncGenerator[dict[str, Any], None]:
    """The JSON events of an SSE body as they arrive (comments and unparsable data skipped)."""
    buffer = b""
    async for chunk in response.aiter_raw():
        buffer += chunk
        *blocks, buffer = _EVENT_END.split(buffer)
        for block in blocks:
            event = _event(block)
            if event is not None:
                yield event
    event = _event(buffer)
    if event is not None:
        yield event


def _event(block: bytes) -> dict[str, Any] | None:
    data = b"\n".join(line[5:].lstrip() for line in block.splitlines() if line.startswith(b"data:"))
    if not data or data == b"[DONE]":
        return None
    try:
        parsed = json.loads(data)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _sse(event: schemas.TranscriptTextDelta | schemas.TranscriptTextDone) -> bytes:
    return f"data: {event.model_dump_json(exclude_none=True)}\n\n".encode()


async def _stream_body(
    head: _Live, rest: AsyncGenerator[_Live, None], ticket: Ticket, duration_s: float
) -> AsyncGenerator[bytes, None]:
    """Each piece's deltas as they arrive, piece after piece; then one done for the whole."""
    sent: list[str] = []
    logprobs: list[schemas.Logprob] = []
    live: _Live | None = head
    try:
        while live is not None:
            done = False
            fresh = True  # nothing of this piece's text sent yet
            try:
                async for event in live.events:
                    kind = event.get("type")
                    if kind == "transcript.text.done":
                        done = True
                        break
                    if kind != "transcript.text.delta":
                        continue
                    delta = str(event.get("delta") or "")
                    if not sent:
                        delta = delta.lstrip()
                    elif fresh:
                        delta = spaced(delta)
                    if not delta.strip() and fresh:
                        continue
                    fresh = False
                    piece_logprobs = [
                        schemas.Logprob.model_validate(x) for x in event.get("logprobs") or []
                    ]
                    logprobs += piece_logprobs
                    sent.append(delta)
                    yield _sse(
                        schemas.TranscriptTextDelta(delta=delta, logprobs=piece_logprobs or None)
                    )
            except httpx.HTTPError:
                done = False
            finally:
                await live.aclose()
            if not done:
                raise UpstreamFailed("The upstream provider broke off the response midway.")
            ticket.deliver(audio_until_s=min(live.piece.end_s, duration_s))
            try:
                live = await anext(rest, None)
            except AttemptFailed as exc:
                raise UpstreamFailed(
                    f"The upstream provider failed midway through the audio ({exc.reason})."
                ) from None
    finally:
        await rest.aclose()
    yield _sse(
        schemas.TranscriptTextDone(
            text="".join(sent).strip(),
            logprobs=logprobs or None,
            usage=formats.usage(duration_s),
        )
    )


# --- the entry point --------------------------------------------------------------------------


async def split_if_needed(
    router: Router,
    client: UpstreamClient,
    target: Target,
    request: SplitRequest,
    measured: Awaitable[float],
    ticket: Ticket,
) -> Split | None:
    """The remote attempt in pieces, or None when the upload goes to ``client`` whole.

    ``measured`` is voxgate's own length of the upload (awaited only when the decision needs
    it). Raises ``AttemptFailed(final=True)`` when a piece failed on every try.
    """
    spec, options = client.spec, request.options
    size = request.upload.size
    chunking = options.chunking_strategy is not None
    if not _may_split(spec, size, chunking=chunking):
        return None
    seconds = await asyncio.shield(measured)
    if not must_split(spec, size, seconds, chunking=chunking):
        return None
    stream = options.stream
    timed = options.response_format in _TIMED_FORMATS and not stream
    asked = "verbose_json" if timed else "json"
    dispatch = _Dispatch(
        router,
        client,
        target,
        request.path,
        piece_fields(request.fields, target.model, asked, stream=stream),
    )
    vad, length_s = vad_options(options.chunking_strategy), piece_s(spec)

    def make() -> Iterator[Piece]:
        return cut_pieces(
            request.upload.reader(),
            max_s=request.max_s,
            measured_s=seconds,
            vad=vad,
            seconds=length_s,
        )

    pieces = cast(AsyncGenerator[Piece, None], iterate_in_thread(make, buffer=1))
    if not stream:
        answered = in_order(pieces, dispatch.answer, spec.chunk_concurrency)
        try:
            answers = [answer async for answer in answered]
        finally:
            await answered.aclose()
        body, media_type = render(answers, options, task=request.task, duration_s=seconds)
        return Split(media_type, body.encode())
    opened = in_order(pieces, dispatch.live, spec.chunk_concurrency, discard=_Live.aclose)
    try:
        head = await anext(opened)
    except BaseException:
        await opened.aclose()
        raise
    events = _stream_body(head, opened, ticket, seconds)
    return Split("text/event-stream", events, (head.aclose, opened.aclose))

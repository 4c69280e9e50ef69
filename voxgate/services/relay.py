"""The life of every speech, transcription and translation request, owned in one place:

authorize (the handler, via the ticket) → measure → reserve → route/attempt/fallback →
deliver → settle (the gateway, once the last byte left or the client did).

Every model has a chain of targets (``Router.chain``; a shipped model's is just itself on the
local engines), so there is one way to serve a request: walk the chain. The local engines are a
target like any other; which target comes first decides how the cost is measured and held.

- **Measure**: an upload is billed on the seconds voxgate itself counts, never on its header's
  claim or an upstream's ``usage`` or ``duration``. With a local first target the header is read
  first (``probe_duration``, no decoding) and a key that cannot afford what it states is refused
  before anything else; the upload is then measured in the engine's slot, once admitted
  (``AudioMeter``, bounded by ``VOXGATE_MAX_AUDIO_SECONDS`` and by what the key can afford,
  stopped when the client leaves), and reserved before any inference. With a remote first
  target it is demuxed in a thread (``measure_duration``) while the first attempt is already
  under way, so it adds no latency; nothing is delivered before its cost is reserved.
  Speech is billed on input characters: reserved after the local checks (what can be spoken,
  the voice) and before any engine work, or alongside a remote attempt.
- **Route**: ``Router.walk`` tries the chain; each remote attempt sends the spooled upload
  anew, byte for byte, from its spool (``MultipartBody``), with the provider's key only.
- **Deliver**: the local engine's speech is encoded chunk by chunk once its first chunk exists
  (so an engine error is still a clean JSON error); its transcription is handed back for the
  handler to render. An upstream's body is relayed chunk by chunk as it arrives, untouched
  (same format: voxgate asks the upstream for exactly what the client asked for, so nothing is
  re-encoded). Once a byte went out there is no retry: an upstream that breaks off midway
  ends the client's stream as an error (no terminating chunk), never as a short success.
  A client that leaves closes the upstream request at once.
- **Billing of a stream the client cut short** (``Ticket.deliver``): speech relayed from an
  upstream is billed delivered bytes / the upstream's Content-Length x input characters; when
  the upstream streams with no length (chunked, SSE) the whole input is billed once its first
  byte was delivered, since the upstream synthesises it whole. A relayed transcription is
  billed its measured seconds once its first byte was delivered. A request that failed on
  every target, or that the upstream broke off, costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import anyio
import httpx

from voxgate import schemas
from voxgate.audio import (
    AudioMeter,
    audio_too_long,
    measure_duration,
    media_type,
    probe_duration,
    wav_duration,
)
from voxgate.catalog import Catalog, CatalogEntry
from voxgate.concurrency import iterate_in_thread, run_in_thread
from voxgate.errors import InvalidRequest, UpstreamFailed
from voxgate.providers.base import SpeechJob, Transcription, TranscriptionJob
from voxgate.providers.config import Target
from voxgate.providers.upstream.client import AttemptFailed, UpstreamClient
from voxgate.providers.upstream.multipart import MultipartBody
from voxgate.services.chunked import split_if_needed
from voxgate.services.metering import Ticket
from voxgate.services.routing import Router
from voxgate.services.speech import (
    close_quietly,
    encode_stream,
    speakable_text,
    sse_events,
    whole_clip,
)
from voxgate.services.transcription import TranscriptionRequest, engine_job
from voxgate.uploads import SpooledUpload

log = logging.getLogger("voxgate.relay")

ROUTE_HEADER = "x-voxgate-route"
T = TypeVar("T")


@dataclass
class Delivery:
    """A response ready to stream: what the handler turns into a StreamingResponse."""

    route: Target
    media_type: str
    body: AsyncIterator[bytes] | bytes  # bytes: a small answer read whole before delivery
    status_code: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class LocalTranscription:
    """The local engine serves it: segments for the handler to render in the client's format."""

    route: Target
    transcription: Transcription
    headers: dict[str, str] = field(default_factory=dict)


class _Once(Generic[T]):
    """One metering step shared by a request's attempts (measure, reserve), taken by the first
    attempt that needs it: inline (``run``, cancelled with its attempt: the local engine) or as
    a task alongside the attempt (``start``: a remote one). Later attempts reuse its result."""

    def __init__(self) -> None:
        self._done: asyncio.Future[T] | None = None

    async def run(self, step: Callable[[], Awaitable[T]]) -> T:
        if self._done is not None:
            return await asyncio.shield(self._done)
        value = await step()
        self._done = asyncio.get_running_loop().create_future()
        self._done.set_result(value)
        return value

    def start(self, step: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        if self._done is None:
            self._done = asyncio.ensure_future(step())
        return self._done

    async def cancel(self) -> None:
        if self._done is not None:
            await _cancel(self._done)


@dataclass
class _Opened:
    client: UpstreamClient
    response: httpx.Response
    body: AsyncIterator[bytes]
    first: bytes = b""


async def _open(client: UpstreamClient, path: str, *, prefetch: bool, **request: Any) -> _Opened:
    """Send one attempt; with ``prefetch``, also wait for the first body chunk, so a stream
    that breaks before it is still a failed attempt (retried) rather than a cut response."""
    response = await client.open(path, **request)
    body = response.aiter_raw()
    opened = _Opened(client, response, body)
    if prefetch:
        try:
            opened.first = await anext(body, b"")
        except httpx.HTTPError:
            await _close_response(response)
            raise AttemptFailed("stream broke before its first byte") from None
        except BaseException:
            await _close_response(response)
            raise
    return opened


async def _close_response(response: httpx.Response) -> None:
    with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
        await response.aclose()


async def _relay(opened: _Opened, ticket: Ticket, on_bytes: Any) -> AsyncGenerator[bytes, None]:
    """The upstream body, chunk by chunk as it arrives; ``on_bytes(n)`` after each chunk
    reached the response. Closes the upstream request however it ends."""
    try:
        if opened.first:
            yield opened.first
            on_bytes(len(opened.first))
        async for chunk in opened.body:
            yield chunk
            on_bytes(len(chunk))
    except httpx.HTTPError as exc:
        opened.client.breaker.failed("stream cut")
        log.warning("upstream %s broke off %s midway (%s)", opened.client.name,
                    ticket.request_id, type(exc).__name__)  # fmt: skip
        raise UpstreamFailed("The upstream provider broke off the response midway.") from None
    finally:
        await _close_response(opened.response)


def _route_headers(target: Target, entry: CatalogEntry) -> dict[str, str]:
    return {ROUTE_HEADER: target.label, "x-voxgate-model": entry.model.id}


def _local_model(catalog: Catalog, entry: CatalogEntry, target: Target) -> CatalogEntry:
    """The catalog entry a local target runs: ``entry`` itself when the target is its own
    model (a shipped model or alias, so errors name the id the client sent)."""
    return entry if target.model == entry.model.id else catalog.get(target.model)


# --- speech -----------------------------------------------------------------------------------


async def relay_speech(
    router: Router,
    catalog: Catalog,
    ticket: Ticket,
    entry: CatalogEntry,
    body: schemas.SpeechRequest,
    raw: dict[str, Any],
    cleanup: AsyncExitStack,
) -> Delivery:
    """Speech for any model. ``raw`` is the client's JSON, passed on to an upstream as it was
    sent (only ``model`` is replaced by each target's upstream model name)."""
    characters = len(body.input)
    reserved: _Once[None] = _Once()
    cleanup.push_async_callback(reserved.cancel)

    def reserve() -> Awaitable[None]:
        return ticket.reserve(characters=characters)

    async def hold() -> None:  # the local engine's: after its checks, before its queue
        await reserved.run(reserve)

    voice = body.voice if isinstance(body.voice, str) else body.voice.id

    async def attempt(target: Target, client: UpstreamClient | None) -> Delivery:
        if client is None:
            local = _local_model(catalog, entry, target)
            return await _local_speech(
                router, local, local is entry, target, body, voice, hold, ticket, cleanup
            )
        reserved.start(reserve)
        opened = await _open(
            client, "audio/speech", prefetch=True, json_body={**raw, "model": target.model}
        )
        cleanup.push_async_callback(_close_response, opened.response)
        length = _content_length(opened.response)
        billed = 0
        sent = 0

        def on_bytes(count: int) -> None:
            nonlocal billed, sent
            sent += count
            due = characters if length is None else characters * min(sent, length) // length
            if due > billed:
                ticket.deliver(characters=due - billed)
                billed = due

        stream = _relay(opened, ticket, on_bytes)
        cleanup.push_async_callback(close_quietly, stream)
        kind = opened.response.headers.get("content-type") or media_type(body.response_format)
        return Delivery(target, kind, stream, opened.response.status_code)

    if router.chain(entry)[0].local:
        target, delivery = await router.walk(entry, attempt)
    else:  # reserved while the first attempt is under way
        target, delivery = await _alongside(reserved.start(reserve), router.walk(entry, attempt))
    await reserved.run(reserve)  # a remote fallback: nothing is delivered before it holds
    ticket.route = target.label
    delivery.headers.update(_route_headers(target, entry))
    return delivery


async def _alongside(check: asyncio.Future[Any], work: Awaitable[T]) -> T:
    """``work`` and ``check`` at once; ``check``'s error (a quota refused, audio that is not
    audio) wins and cancels ``work``, whose opened responses ``cleanup`` closes."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(check)
    except BaseException:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise
    try:
        return await task
    except BaseException:
        task.cancel()
        raise


async def _local_speech(
    router: Router,
    local: CatalogEntry,
    own_model: bool,
    target: Target,
    body: schemas.SpeechRequest,
    voice: str,
    hold: Callable[[], Awaitable[None]],
    ticket: Ticket,
    cleanup: AsyncExitStack,
) -> Delivery:
    """The local engine's speech. The checks come first (an input with nothing to speak, an
    unknown voice: 400), then the reservation, then the engine: its queue, then its first
    chunk, awaited before answering so an engine error is still a clean JSON error (a client
    that leaves meanwhile leaves the queue at once and its reservation is released)."""
    spoken = speakable_text(body.input)
    if not any(char.isalnum() for char in spoken):
        raise InvalidRequest("The input contains nothing that can be spoken.", param="input")
    if own_model:
        engine_voice = local.resolve_voice(voice)
    else:
        try:
            engine_voice = local.resolve_voice(voice)
        except InvalidRequest:  # a fallback, asked for an upstream's voice: speaks its default
            engine_voice = local.model.default_voice or voice
    job = SpeechJob(engine_model=local.model.id, text=spoken, voice=engine_voice, speed=body.speed)
    chunks = router.local.synthesize(job)
    cleanup.push_async_callback(close_quietly, chunks)
    await hold()  # no engine time for what the key cannot pay
    first = await anext(chunks, None)
    if first is None:
        raise InvalidRequest("The input contains nothing that can be spoken.", param="input")
    whole = whole_clip(body.response_format, body.input)
    audio = encode_stream(chunks, first, body.response_format, ticket, whole=whole)
    cleanup.push_async_callback(close_quietly, audio)
    if body.stream_format == "sse":
        events = sse_events(audio, characters=len(body.input))
        cleanup.push_async_callback(close_quietly, events)
        return Delivery(target, "text/event-stream", events)
    return Delivery(target, media_type(body.response_format), audio)


def _content_length(response: httpx.Response) -> int | None:
    try:
        length = int(response.headers.get("content-length", ""))
    except ValueError:
        return None
    return length if length > 0 else None


# --- transcription and translation ------------------------------------------------------------


async def relay_transcription(
    router: Router,
    catalog: Catalog,
    ticket: Ticket,
    entry: CatalogEntry,
    request: TranscriptionRequest,
    cleanup: AsyncExitStack,
) -> Delivery | LocalTranscription:
    """Transcribe or translate for any model; the cost is reserved on the measured duration
    before any engine work or anything is delivered (see the module's docstring)."""
    chain = router.chain(entry)
    seconds: _Once[float] = _Once()
    cleanup.push_async_callback(seconds.cancel)
    allowance_s: float | None = None
    stated_s: float | None = None  # from the header, before a local first target

    def measure_alongside() -> Awaitable[float]:
        return _measure_and_reserve(ticket, request.upload, request.max_s)

    async def admit() -> float:  # the local engine's job, in its slot
        return await seconds.run(
            lambda: _meter_and_reserve(ticket, request.upload, request.max_s, allowance_s)
        )

    @functools.cache
    def local_job(target: Target) -> TranscriptionJob:
        return engine_job(_local_model(catalog, entry, target), request, admit, stated_s=stated_s)

    async def attempt(
        target: Target, client: UpstreamClient | None
    ) -> Delivery | LocalTranscription:
        if client is None:
            return LocalTranscription(target, await router.local.transcribe(local_job(target)))
        measured = seconds.start(measure_alongside)
        split = await split_if_needed(router, client, target, request, measured, ticket)
        if split is not None:  # too long or large for this provider: sent in pieces
            cleanup.push_async_callback(split.aclose)
            return Delivery(target, split.media_type, split.body)
        fields = [(k, target.model if k == "model" else v) for k, v in request.fields]
        multipart = MultipartBody(fields, request.upload)
        opened = await _open(
            client,
            request.path,
            prefetch=False,
            content=multipart.stream(),
            headers=multipart.headers,
        )
        cleanup.push_async_callback(_close_response, opened.response)
        if _small_answer(opened.response):
            # Not a stream: read whole (it is small), so one cut short is retried like any
            # failed attempt; delivered as one body with its length.
            try:
                body = await opened.response.aread()
            except httpx.HTTPError:
                raise AttemptFailed("answer broke off before it was complete") from None
            finally:
                await _close_response(opened.response)
            kind = opened.response.headers.get("content-type") or "application/json"
            return Delivery(target, kind, body, opened.response.status_code)
        return _relayed_transcription(target, opened, ticket, measured)

    if chain[0].local:
        # A language the model does not know: 400 before the upload is read.
        engine_job(_local_model(catalog, entry, chain[0]), request, admit)
        stated_s, allowance_s = await _check_header(ticket, request.upload, request.max_s)
        target, result = await router.walk(entry, attempt)
    else:  # measured while the first attempt is under way
        target, result = await _alongside(
            seconds.start(measure_alongside), router.walk(entry, attempt)
        )
    await seconds.start(measure_alongside)  # a remote fallback: nothing delivered before it
    ticket.route = target.label
    result.headers.update(_route_headers(target, entry))
    return result


_SMALL_ANSWER_BYTES = 1024 * 1024


def _small_answer(response: httpx.Response) -> bool:
    length = _content_length(response)
    kind = response.headers.get("content-type", "")
    return length is not None and length <= _SMALL_ANSWER_BYTES and "event-stream" not in kind


def _relayed_transcription(
    target: Target, opened: _Opened, ticket: Ticket, measured: asyncio.Future[float]
) -> Delivery:
    delivered = False

    def on_bytes(count: int) -> None:
        nonlocal delivered
        if not delivered and count:
            delivered = True
            ticket.deliver(audio_until_s=measured.result())

    stream = _relay(opened, ticket, on_bytes)
    kind = opened.response.headers.get("content-type") or "application/json"
    return Delivery(target, kind, stream, opened.response.status_code)


async def _check_header(
    ticket: Ticket, upload: SpooledUpload, max_s: float
) -> tuple[float | None, float | None]:
    """Before admission to the local engine: the length the header states (read, not decoded)
    is refused at once when the key cannot afford it (429) or it is over ``max_s`` (400).
    Returns that length and the seconds the key can afford (None: unknown, no bound)."""
    stated_s = await run_in_thread(probe_duration, upload.reader())
    allowance_s = await ticket.audio_allowance(stated_s)
    if stated_s is not None and stated_s > max_s:
        raise audio_too_long(max_s)
    return stated_s, allowance_s


async def _meter_and_reserve(
    ticket: Ticket, upload: SpooledUpload, max_s: float, allowance_s: float | None
) -> float:
    """In the engine's slot: measure in a worker thread (packets' durations; decoding only
    when they are missing), refusing (429) as soon as the audio passes what the key could
    afford (re-checked then, in case the budget or bucket has room again); then reserve. The
    pass keeps no samples, so memory does not grow with the length of the upload."""
    meter = AudioMeter(upload.reader(), max_s=max_s)
    progress = cast(AsyncGenerator[float, None], iterate_in_thread(meter.run))
    async with aclosing(progress):
        async for decoded_s in progress:
            if allowance_s is not None and decoded_s > allowance_s:
                allowance_s = await ticket.audio_allowance(decoded_s)
    await ticket.reserve(audio_seconds=meter.measured_s)
    return meter.measured_s


async def _measure_and_reserve(ticket: Ticket, upload: SpooledUpload, max_s: float) -> float:
    # A WAV in memory is measured from its chunks right here (microseconds, no thread hop);
    # anything else, or a WAV too long, is demuxed or refused in a worker thread.
    seconds = None if upload.on_disk else wav_duration(upload.reader(), max_chunks=16)
    if seconds is None or seconds > max_s:
        seconds = await run_in_thread(lambda: measure_duration(upload.reader(), max_s=max_s))
    await ticket.reserve(audio_seconds=seconds)
    return seconds


async def _cancel(task: asyncio.Future[Any]) -> None:
    if not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task

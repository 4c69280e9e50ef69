"""The life of one routed request (a model with a ``serve`` chain), owned in one place:

authorize (the handler, via the ticket) → measure → reserve → route/attempt/fallback →
deliver → settle (the gateway, once the last byte left or the client did).

- **Measure**: an upload is billed on the seconds voxgate itself counts by demuxing it
  (``audio.measure_duration``), never on an upstream's ``usage`` or ``duration``. It runs in a
  thread while the first attempt is already under way, so it adds no latency; nothing is
  delivered before its cost is reserved (the reservation, too, runs alongside the first
  attempt; a local target waits for it). Speech is billed on input characters, as locally.
- **Route**: ``Router.walk`` tries the chain; each remote attempt sends the spooled upload
  anew, byte for byte, from its spool (``MultipartBody``), with the provider's key only.
- **Deliver**: the upstream's body is relayed chunk by chunk as it arrives, untouched (same
  format: voxgate asks the upstream for exactly what the client asked for, so nothing is
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
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import httpx

from voxgate import schemas
from voxgate.audio import MeasuredAudio, measure_duration, media_type, pcm_pieces, wav_duration
from voxgate.catalog import Catalog, CatalogEntry
from voxgate.concurrency import run_in_thread
from voxgate.errors import InvalidRequest, UpstreamFailed
from voxgate.providers.base import SpeechJob, Task, Transcription, TranscriptionJob
from voxgate.providers.config import Target
from voxgate.providers.upstream.client import AttemptFailed, UpstreamClient
from voxgate.providers.upstream.multipart import MultipartBody
from voxgate.services.metering import Ticket
from voxgate.services.routing import Router
from voxgate.services.speech import (
    close_quietly,
    encode_stream,
    speakable_text,
    sse_events,
    whole_clip,
)
from voxgate.services.transcription import check_language, vad_options
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
    """The chain fell through to the local engine: the handler renders it as locally."""

    route: Target
    transcription: Transcription


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
    return {ROUTE_HEADER: target.label, "x-voxgate-model": entry.id}


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
    """Speech for a routed model. ``raw`` is the client's JSON, passed on as it was sent
    (only ``model`` is replaced by each target's upstream model name)."""
    characters = len(body.input)
    # Reserved while the first attempt is under way; nothing is delivered before it holds.
    reserved = asyncio.create_task(ticket.reserve(characters=characters))
    cleanup.push_async_callback(_cancel, reserved)
    voice = body.voice if isinstance(body.voice, str) else body.voice.id

    async def attempt(target: Target, client: UpstreamClient | None) -> Delivery:
        if client is None:
            await asyncio.shield(reserved)  # no engine time for what the key cannot pay
            return await _local_speech(router, catalog, ticket, target, body, voice, cleanup)
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

    target, delivery = await _alongside(reserved, router.walk(entry, attempt))
    ticket.route = target.label
    delivery.headers.update(_route_headers(target, entry))
    return delivery


async def _alongside(check: asyncio.Task[Any], work: Awaitable[T]) -> T:
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
    catalog: Catalog,
    ticket: Ticket,
    target: Target,
    body: schemas.SpeechRequest,
    voice: str,
    cleanup: AsyncExitStack,
) -> Delivery:
    local = catalog.get(target.model)
    spoken = speakable_text(body.input)
    if not any(char.isalnum() for char in spoken):
        raise InvalidRequest("The input contains nothing that can be spoken.", param="input")
    try:
        engine_voice = local.resolve_voice(voice)
    except InvalidRequest:  # a voice of the upstream's: the local model speaks its default
        engine_voice = local.model.default_voice or voice
    job = SpeechJob(engine_model=local.model.id, text=spoken, voice=engine_voice, speed=body.speed)
    chunks = router.local.synthesize(job)
    cleanup.push_async_callback(close_quietly, chunks)
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


@dataclass(frozen=True)
class TranscriptionRequest:
    """A parsed form: ``fields`` exactly as the client sent them (order kept, file left
    out), for the upstream; ``options`` the same, validated, for a local fallback."""

    task: Task
    path: str  # relative to the provider's base URL: audio/transcriptions or audio/translations
    fields: Sequence[tuple[str, str]]
    options: schemas.TranscriptionForm
    upload: SpooledUpload
    max_s: float
    word_timestamps: bool = False


async def relay_transcription(
    router: Router,
    catalog: Catalog,
    ticket: Ticket,
    entry: CatalogEntry,
    request: TranscriptionRequest,
    cleanup: AsyncExitStack,
) -> Delivery | LocalTranscription:
    """Transcribe or translate for a routed model; the cost is reserved on the measured
    duration (concurrently with the first attempt) before anything is delivered."""
    measured = asyncio.create_task(_measure_and_reserve(ticket, request.upload, request.max_s))

    async def attempt(
        target: Target, client: UpstreamClient | None
    ) -> Delivery | LocalTranscription:
        if client is None:
            seconds = await asyncio.shield(measured)
            return await _local_transcription(router, catalog, ticket, target, request, seconds)
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

    cleanup.push_async_callback(_cancel, measured)
    target, result = await _alongside(measured, router.walk(entry, attempt))
    ticket.route = target.label
    if isinstance(result, Delivery):
        result.headers.update(_route_headers(target, entry))
    return result


_SMALL_ANSWER_BYTES = 1024 * 1024


def _small_answer(response: httpx.Response) -> bool:
    length = _content_length(response)
    kind = response.headers.get("content-type", "")
    return length is not None and length <= _SMALL_ANSWER_BYTES and "event-stream" not in kind


def _relayed_transcription(
    target: Target, opened: _Opened, ticket: Ticket, measured: asyncio.Task[float]
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


async def _measure_and_reserve(ticket: Ticket, upload: SpooledUpload, max_s: float) -> float:
    # A WAV in memory is measured from its chunks right here (microseconds, no thread hop);
    # anything else, or a WAV too long, is demuxed or refused in a worker thread.
    seconds = None if upload.on_disk else wav_duration(upload.reader(), max_chunks=16)
    if seconds is None or seconds > max_s:
        seconds = await run_in_thread(lambda: measure_duration(upload.reader(), max_s=max_s))
    await ticket.reserve(audio_seconds=seconds)
    return seconds


async def _cancel(task: asyncio.Task[Any]) -> None:
    if not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def _local_transcription(
    router: Router,
    catalog: Catalog,
    ticket: Ticket,
    target: Target,
    request: TranscriptionRequest,
    seconds: float,
) -> LocalTranscription:
    local = catalog.get(target.model)
    options = request.options
    code = check_language(local, options.language) if options.language else None

    async def load_audio() -> MeasuredAudio:
        # Billed on the measured seconds (already reserved); the decode is for the engine.
        return MeasuredAudio(
            seconds,
            lambda: pcm_pieces(request.upload.reader(), max_s=request.max_s, measured_s=seconds),
        )

    job = TranscriptionJob(
        engine_model=local.model.id,
        load_audio=load_audio,
        task=request.task,
        language=code,
        prompt=options.prompt,
        temperature=options.temperature,
        word_timestamps=request.word_timestamps,
        keywords=tuple(options.keywords or ()),
        languages=tuple(
            dict.fromkeys(check_language(local, x, "languages") for x in options.languages or ())
        ),
        stream=options.stream,
        segment_times=options.response_format in ("srt", "vtt", "verbose_json")
        and not options.stream,
        chunking=vad_options(options.chunking_strategy),
    )
    return LocalTranscription(target, await router.local.transcribe(job))

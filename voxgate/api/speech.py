"""POST /v1/audio/speech: text in, audio out, streamed as it is synthesised."""

from __future__ import annotations

import base64
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from voxgate import schemas
from voxgate.api.deps import ServicesDep, TicketDep
from voxgate.audio import media_type
from voxgate.concurrency import ClientDisconnected, cancel_on_disconnect
from voxgate.errors import InvalidRequest
from voxgate.services.speech import close_quietly, encode_stream, start_speech, whole_clip

router = APIRouter()


async def _request_cleanup() -> AsyncIterator[AsyncExitStack]:
    """An exit stack that closes after the response was sent, or on any failure or cancel.

    FastAPI exits request-scoped dependencies after ``response(...)`` returns or raises, so what
    is pushed here is released on every path: a handler error, a response cancelled before
    its first byte (a client that left), or a normal end. The engine slot must never wait for
    a generator to be garbage-collected.
    """
    async with AsyncExitStack() as stack:
        yield stack


CleanupDep = Annotated[AsyncExitStack, Depends(_request_cleanup)]


@router.post("/v1/audio/speech")
async def create_speech(
    request: Request,
    body: schemas.SpeechRequest,
    services: ServicesDep,
    ticket: TicketDep,
    cleanup: CleanupDep,
) -> Response:
    voice = body.voice if isinstance(body.voice, str) else body.voice.id
    # An alias such as tts-1 picks its model by voice (catalog `voices_from`): nova → hibari.
    entry = services.catalog.for_endpoint(body.model, "/v1/audio/speech").for_voice(voice)
    ticket.authorize(entry)
    chunks = start_speech(services, entry, text=body.input, voice=voice, speed=body.speed)
    cleanup.push_async_callback(close_quietly, chunks)
    await ticket.reserve(characters=len(body.input))
    # Wait (in the engine queue, then for the first sentence) before answering, so any engine
    # error is still a clean JSON error rather than a 200 with a broken body; a client that
    # leaves meanwhile leaves the queue at once and its reservation is released.
    try:
        first = await cancel_on_disconnect(request.receive, anext(chunks, None))
    except ClientDisconnected:
        return Response(status_code=499)
    if first is None:
        raise InvalidRequest("The input contains nothing that can be spoken.", param="input")
    whole = whole_clip(body.response_format, body.input)
    audio = encode_stream(chunks, first, body.response_format, ticket, whole=whole)
    cleanup.push_async_callback(close_quietly, audio)
    headers = {"x-voxgate-model": entry.model.id}
    if body.stream_format == "sse":
        events = _sse_events(audio, characters=len(body.input))
        cleanup.push_async_callback(close_quietly, events)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    return StreamingResponse(audio, media_type=media_type(body.response_format), headers=headers)


async def _sse_events(
    audio: AsyncIterator[bytes], *, characters: int
) -> AsyncGenerator[bytes, None]:
    """``speech.audio.delta`` per encoded chunk, then ``speech.audio.done``.

    Local models are metered in characters, so the done event's usage counts one input token per
    character and no output tokens.
    """
    async for data in audio:
        delta = schemas.SpeechAudioDelta(audio=base64.b64encode(data).decode())
        yield _sse(delta)
    usage = schemas.TokenUsage(input_tokens=characters, output_tokens=0, total_tokens=characters)
    yield _sse(schemas.SpeechAudioDone(usage=usage))


def _sse(event: schemas.SpeechAudioDelta | schemas.SpeechAudioDone) -> bytes:
    return f"data: {event.model_dump_json()}\n\n".encode()

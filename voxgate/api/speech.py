"""POST /v1/audio/speech: text in, audio out, streamed as it is synthesised."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from voxgate import schemas
from voxgate.api.deps import CleanupDep, ServicesDep, TicketDep
from voxgate.api.relayed import streaming
from voxgate.audio import media_type
from voxgate.catalog import SPEECH
from voxgate.concurrency import ClientDisconnected, cancel_on_disconnect
from voxgate.errors import InvalidRequest
from voxgate.services.relay import ROUTE_HEADER, relay_speech
from voxgate.services.speech import (
    close_quietly,
    encode_stream,
    sse_events,
    start_speech,
    whole_clip,
)

router = APIRouter()


@router.post(SPEECH)
async def create_speech(
    request: Request,
    body: schemas.SpeechRequest,
    services: ServicesDep,
    ticket: TicketDep,
    cleanup: CleanupDep,
) -> Response:
    voice = body.voice if isinstance(body.voice, str) else body.voice.id
    requested = services.catalog.for_endpoint(body.model, SPEECH)
    ticket.authorize(requested)  # a key's allowlist is checked before the voice is looked at
    # An alias such as tts-1 picks its model by voice (catalog `voices_from`): nova → hibari.
    entry = requested.for_voice(voice)
    ticket.authorize(entry)
    if entry.model.serve:  # routed: upstream targets, maybe local fallback
        raw = await request.json()
        relayed = relay_speech(services.router, services.catalog, ticket, entry, body, raw, cleanup)
        try:
            delivery = await cancel_on_disconnect(request.receive, relayed)
        except ClientDisconnected:
            return Response(status_code=499)
        return streaming(delivery)
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
    ticket.route = f"local:{entry.model.id}"
    headers = {"x-voxgate-model": entry.model.id, ROUTE_HEADER: ticket.route}
    if body.stream_format == "sse":
        events = sse_events(audio, characters=len(body.input))
        cleanup.push_async_callback(close_quietly, events)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    return StreamingResponse(audio, media_type=media_type(body.response_format), headers=headers)

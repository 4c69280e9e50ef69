"""POST /v1/audio/speech: text in, audio out, streamed as it is synthesised."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from voxgate import schemas
from voxgate.api.deps import ServicesDep, TicketDep
from voxgate.audio import media_type
from voxgate.errors import InvalidRequest
from voxgate.services.speech import encode_stream, start_speech

router = APIRouter()


@router.post("/v1/audio/speech")
async def create_speech(
    body: schemas.SpeechRequest, services: ServicesDep, ticket: TicketDep
) -> StreamingResponse:
    entry = services.catalog.for_endpoint(body.model, "/v1/audio/speech")
    ticket.authorize(entry)
    voice = body.voice if isinstance(body.voice, str) else body.voice.id
    chunks = start_speech(services, entry, text=body.input, voice=voice, speed=body.speed)
    await ticket.reserve(characters=len(body.input))
    # Wait for the first sentence before answering, so any engine error is still a clean
    # JSON error rather than a 200 with a broken body.
    first = await anext(chunks, None)
    if first is None:
        raise InvalidRequest("The input contains nothing that can be spoken.", param="input")
    audio = encode_stream(chunks, first, body.response_format, ticket)
    headers = {"x-voxgate-model": entry.model.id}
    if body.stream_format == "sse":
        events = _sse_events(audio, characters=len(body.input))
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    return StreamingResponse(audio, media_type=media_type(body.response_format), headers=headers)


async def _sse_events(audio: AsyncIterator[bytes], *, characters: int) -> AsyncIterator[bytes]:
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

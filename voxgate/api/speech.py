"""POST /v1/audio/speech: text in, audio out, streamed as it is synthesised or relayed."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from voxgate import schemas
from voxgate.api.deps import CleanupDep, ServicesDep, TicketDep
from voxgate.api.relayed import streaming
from voxgate.catalog import SPEECH
from voxgate.concurrency import ClientDisconnected, cancel_on_disconnect
from voxgate.services.relay import relay_speech

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
    raw = await request.json()  # passed on to an upstream as sent
    relayed = relay_speech(services.router, services.catalog, ticket, entry, body, raw, cleanup)
    # A client that leaves while its request waits (for an engine slot, the first chunk or an
    # upstream) leaves at once; its reservation is released.
    try:
        delivery = await cancel_on_disconnect(request.receive, relayed)
    except ClientDisconnected:
        return Response(status_code=499)
    return streaming(delivery)

"""POST /v1/audio/transcriptions and /v1/audio/translations (one shared form parser).

The form is read by ``api/forms.py`` (Starlette's multipart parser, strict about text parts),
which spools the file to disk past 1 MB, so uploads never sit whole in memory. Arrays arrive as
repeated ``key[]`` parts (what the official SDK and OpenAI's curl examples send) or as plain
repeated ``key``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, aclosing
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from voxgate import formats, schemas
from voxgate.api.deps import ServicesDep, TicketDep
from voxgate.api.errors import validation_response
from voxgate.api.forms import read_form
from voxgate.api.speech import CleanupDep
from voxgate.audio_windows import AUTO, VadOptions
from voxgate.catalog import Endpoint
from voxgate.concurrency import ClientDisconnected, cancel_on_disconnect
from voxgate.errors import InvalidRequest
from voxgate.providers.base import Segment, Task, Transcription
from voxgate.services.container import Services
from voxgate.services.metering import Ticket
from voxgate.services.speech import close_quietly
from voxgate.services.transcription import start_transcription

router = APIRouter()

_ARRAY_FIELDS = ("timestamp_granularities", "include")
_MAX_FIELDS = 64


@router.post("/v1/audio/transcriptions")
async def create_transcription(
    request: Request, services: ServicesDep, ticket: TicketDep, cleanup: CleanupDep
) -> Response:
    return await _handle(
        request, services, ticket, cleanup, "transcribe", "/v1/audio/transcriptions"
    )


@router.post("/v1/audio/translations")
async def create_translation(
    request: Request, services: ServicesDep, ticket: TicketDep, cleanup: CleanupDep
) -> Response:
    return await _handle(request, services, ticket, cleanup, "translate", "/v1/audio/translations")


async def _handle(
    request: Request,
    services: Services,
    ticket: Ticket,
    cleanup: AsyncExitStack,
    task: Task,
    endpoint: Endpoint,
) -> Response:
    form = await read_form(request, max_files=1, max_fields=_MAX_FIELDS)
    # The upload is decoded again window by window while segments are produced, so the form
    # (its spooled file) stays open until the response is sent or abandoned; the segments
    # (the engine slot) are closed first.
    cleanup.push_async_callback(form.close)
    upload = form.get("file")
    try:
        options = schemas.TranscriptionForm.model_validate(_form_fields(form))
    except ValidationError as exc:
        return validation_response(request, exc.errors())
    if not isinstance(upload, UploadFile):
        raise InvalidRequest(
            "Missing required parameter: 'file' (an audio file upload).",
            param="file",
            code="missing_required_parameter",
        )
    ticket.authorize(services.catalog.for_endpoint(options.model, endpoint))
    _check_combinations(options)  # word timestamps imply verbose_json from here on
    words = "word" in options.timestamp_granularities
    logprobs = "logprobs" in options.include
    # The body is read: from here a client that leaves is noticed, in the engine's queue
    # and while its upload is decoded as well as during inference.
    started = start_transcription(
        services,
        ticket,
        upload.file,
        task=task,
        language=options.language,
        prompt=options.prompt,
        temperature=options.temperature,
        word_timestamps=words or logprobs,
        chunking=_chunking(options.chunking_strategy),
    )
    try:
        transcription = await cancel_on_disconnect(request.receive, started)
    except ClientDisconnected:
        return Response(status_code=499)
    cleanup.push_async_callback(close_quietly, transcription.segments)
    if options.stream:
        events = _stream_events(transcription, ticket, logprobs=logprobs)
        return StreamingResponse(events, media_type="text/event-stream")
    try:
        segments = await cancel_on_disconnect(request.receive, transcription.all_segments())
    except ClientDisconnected:
        return Response(status_code=499)
    body, media_type = formats.render(
        options.response_format,
        segments,
        task=task,
        language=transcription.language,
        duration_s=transcription.duration_s,
        words=words,
        with_segments="segment" in options.timestamp_granularities or not words,
        include_logprobs=logprobs,
    )
    return Response(body, media_type=media_type)


def _form_fields(form: FormData) -> dict[str, Any]:
    """Form parts → a dict for validation: arrays collected, objects nested, file left out."""
    fields: dict[str, Any] = {}
    for raw_key, value in form.multi_items():
        if raw_key == "file":
            continue
        if isinstance(value, UploadFile):
            raise InvalidRequest(f"'{raw_key}' must be a text field.", param=raw_key)
        key = raw_key.removesuffix("[]")
        if key in _ARRAY_FIELDS:
            fields.setdefault(key, []).append(value)
        elif "[" in key and key.endswith("]"):
            outer, _, inner = key[:-1].partition("[")
            fields.setdefault(outer, {})[inner] = value
        else:
            fields[key] = value
    return fields


def _chunking(strategy: schemas.ServerVad | str | None) -> VadOptions:
    """OpenAI's ``chunking_strategy`` in Silero's terms. Unset and ``"auto"`` are the server's
    defaults: long audio is always chunked here (OpenAI's unset means one block)."""
    if not isinstance(strategy, schemas.ServerVad):
        return AUTO
    return VadOptions(
        threshold=strategy.threshold,
        speech_pad_ms=strategy.prefix_padding_ms,
        min_silence_duration_ms=strategy.silence_duration_ms,
        explicit=True,
    )


def _check_combinations(options: schemas.TranscriptionForm) -> None:
    if "word" in options.timestamp_granularities and options.response_format != "verbose_json":
        raise InvalidRequest(
            "timestamp_granularities[]=word requires response_format=verbose_json.",
            param="timestamp_granularities",
            code="unsupported_value",
        )
    if options.include and options.response_format != "json":
        raise InvalidRequest(
            "include[]=logprobs requires response_format=json.",
            param="include",
            code="unsupported_value",
        )


async def _stream_events(
    transcription: Transcription, ticket: Ticket, *, logprobs: bool
) -> AsyncIterator[bytes]:
    """``transcript.text.delta`` as each segment is decoded, then ``transcript.text.done``.

    Each segment counts as delivered (for partial billing) once the response has taken it.
    """
    segments: list[Segment] = []
    async with aclosing(transcription.segments) as stream:
        async for segment in stream:
            text = segment.text if segments else segment.text.lstrip()
            segments.append(segment)
            delta = schemas.TranscriptTextDelta(
                delta=text, logprobs=formats.logprobs([segment]) if logprobs else None
            )
            yield _sse(delta)
            ticket.deliver(audio_until_s=segment.end)
    done = schemas.TranscriptTextDone(
        text=formats.transcript_text(segments),
        logprobs=formats.logprobs(segments) if logprobs else None,
        usage=formats.usage(transcription.duration_s),
    )
    yield _sse(done)


def _sse(event: schemas.TranscriptTextDelta | schemas.TranscriptTextDone) -> bytes:
    return f"data: {event.model_dump_json(exclude_none=True)}\n\n".encode()

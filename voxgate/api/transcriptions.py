"""POST /v1/audio/transcriptions and /v1/audio/translations (one shared form parser).

The form is read by ``api/forms.py`` (Starlette's multipart parser, strict about text parts),
which spools the file into an ``UploadSpool``: memory up to 4 MiB, disk past that. Arrays
arrive as repeated ``key[]`` parts (what the official SDK and OpenAI's curl examples send) or
as plain repeated ``key``.
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
from voxgate.api.deps import CleanupDep, ServicesDep, TicketDep
from voxgate.api.errors import validation_response
from voxgate.api.forms import read_form
from voxgate.api.relayed import streaming
from voxgate.catalog import TRANSCRIPTIONS, TRANSLATIONS, Endpoint
from voxgate.concurrency import ClientDisconnected, cancel_on_disconnect
from voxgate.errors import InvalidRequest
from voxgate.providers.base import Segment, Task, Transcription
from voxgate.services.container import Services
from voxgate.services.guards import GuardReport, guard_transcription
from voxgate.services.metering import Ticket
from voxgate.services.relay import Delivery, relay_transcription
from voxgate.services.speech import close_quietly
from voxgate.services.transcription import TranscriptionRequest
from voxgate.uploads import SpooledUpload

router = APIRouter()

_ARRAY_FIELDS = (
    "timestamp_granularities",
    "include",
    "keywords",
    "languages",
    "known_speaker_names",
    "known_speaker_references",
)
_TIMED_FORMATS = ("srt", "vtt", "verbose_json")
# What the quality guards did: "dropped=N, trimmed=N, flagged=N" (not on streamed responses,
# whose headers leave before the guards have seen a segment; their done event says it).
GUARDS_HEADER = "x-voxgate-guards"
#: Request header that adds each segment's ``start`` and ``end`` (seconds) to the streamed
#: ``transcript.text.delta`` events: a voxgate extension (OpenAI's events carry no times), which
#: the ``voxgate transcribe`` progress bar and its srt/vtt output are built from.
SEGMENT_TIMES_HEADER = "x-voxgate-segment-times"
_MAX_FIELDS = 64


@router.post(TRANSCRIPTIONS)
async def create_transcription(
    request: Request, services: ServicesDep, ticket: TicketDep, cleanup: CleanupDep
) -> Response:
    return await _handle(request, services, ticket, cleanup, "transcribe", TRANSCRIPTIONS)


@router.post(TRANSLATIONS)
async def create_translation(
    request: Request, services: ServicesDep, ticket: TicketDep, cleanup: CleanupDep
) -> Response:
    return await _handle(request, services, ticket, cleanup, "translate", TRANSLATIONS)


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
    fields = _form_fields(form)
    if _relays_fields(services, fields.get("model")):
        # Fields this server does not know are passed on to the upstream as sent.
        fields = {k: v for k, v in fields.items() if k in schemas.TranscriptionForm.model_fields}
    try:
        options = schemas.TranscriptionForm.model_validate(fields)
    except ValidationError as exc:
        return validation_response(request, exc.errors())
    if not isinstance(upload, UploadFile):
        raise InvalidRequest(
            "Missing required parameter: 'file' (an audio file upload).",
            param="file",
            code="missing_required_parameter",
        )
    entry = services.catalog.for_endpoint(options.model, endpoint)
    ticket.authorize(entry)
    words = "word" in options.timestamp_granularities
    logprobs = "logprobs" in options.include
    times = request.headers.get(SEGMENT_TIMES_HEADER, "").lower() in ("1", "true", "on")
    if any(target.local for target in services.router.chain(entry)):
        _check_combinations(options)  # what the local engine cannot honour
    relayed = relay_transcription(
        services.router,
        services.catalog,
        ticket,
        entry,
        TranscriptionRequest(
            task=task,
            path=endpoint.removeprefix("/v1/"),
            fields=_raw_fields(form),
            options=options,
            upload=SpooledUpload(
                upload.file,
                upload.size or 0,
                upload.filename or "audio",
                upload.content_type or "application/octet-stream",
            ),
            max_s=services.settings.max_audio_seconds,
            word_timestamps=words or logprobs,
            # Streamed deltas carry times only when asked for (SEGMENT_TIMES_HEADER).
            segment_times=times if options.stream else options.response_format in _TIMED_FORMATS,
        ),
        cleanup,
    )
    # The body is read: from here a client that leaves is noticed, in the engine's queue and
    # while its upload is measured as well as during inference or an upstream's answer.
    try:
        result = await cancel_on_disconnect(request.receive, relayed)
    except ClientDisconnected:
        return Response(status_code=499)
    if isinstance(result, Delivery):
        return streaming(result)
    # The local engine serves it: rendered here in the client's format.
    transcription = result.transcription
    cleanup.push_async_callback(close_quietly, transcription.segments)
    route_headers = result.headers
    report = guard_transcription(transcription) if services.settings.transcript_guards else None
    if options.stream:
        events = _stream_events(
            transcription, ticket, logprobs=logprobs, times=times, report=report
        )
        return StreamingResponse(events, media_type="text/event-stream", headers=route_headers)
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
        guards=_guards_out(report),
    )
    if report is not None:
        route_headers[GUARDS_HEADER] = report.header()
    return Response(body, media_type=media_type, headers=route_headers)


def _relays_fields(services: Services, model: object) -> bool:
    """Whether ``model``'s chain has a remote target, which gets the fields as sent (the local
    engine refuses a field it does not know)."""
    entry = services.catalog.entries.get(model) if isinstance(model, str) else None
    return entry is not None and not all(t.local for t in services.router.chain(entry))


def _raw_fields(form: FormData) -> list[tuple[str, str]]:
    """The text parts exactly as sent (names and order kept), for an upstream."""
    return [(k, v) for k, v in form.multi_items() if k != "file" and isinstance(v, str)]


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


def _check_combinations(options: schemas.TranscriptionForm) -> None:
    for field in ("known_speaker_names", "known_speaker_references"):
        if getattr(options, field) is not None:
            raise InvalidRequest(
                f"'{field}' labels speakers for diarization, which this server does not offer "
                "(no diarization model). Leave it out.",
                param=field,
                code="unsupported_value",
            )
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
    transcription: Transcription,
    ticket: Ticket,
    *,
    logprobs: bool,
    times: bool = False,
    report: GuardReport | None = None,
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
                delta=text,
                logprobs=formats.logprobs([segment]) if logprobs else None,
                start=round(segment.start, 3) if times else None,
                end=round(segment.end, 3) if times else None,
            )
            yield _sse(delta)
            ticket.deliver(audio_until_s=segment.end)
    done = schemas.TranscriptTextDone(
        text=formats.transcript_text(segments),
        logprobs=formats.logprobs(segments) if logprobs else None,
        usage=formats.usage(transcription.duration_s),
        guards=_guards_out(report),
    )
    yield _sse(done)


def _guards_out(report: GuardReport | None) -> schemas.GuardsOut | None:
    if report is None:
        return None
    return schemas.GuardsOut(
        dropped=report.count("dropped"),
        trimmed=report.count("trimmed"),
        flagged=report.count("flagged"),
        actions=[
            schemas.GuardActionOut(action=a.action, reason=a.reason, start=a.start, end=a.end)
            for a in report.actions
        ],
    )


def _sse(event: schemas.TranscriptTextDelta | schemas.TranscriptTextDone) -> bytes:
    return f"data: {event.model_dump_json(exclude_none=True)}\n\n".encode()

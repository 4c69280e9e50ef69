"""Speech to text and translation: decode the upload, check the options, start the provider."""

from __future__ import annotations

from typing import BinaryIO

from voxgate.audio import decode_for_whisper
from voxgate.catalog import CatalogEntry
from voxgate.concurrency import run_in_thread
from voxgate.errors import InvalidRequest
from voxgate.languages import language_code
from voxgate.providers.base import Task, Transcription, TranscriptionJob
from voxgate.services.container import Services
from voxgate.services.metering import Ticket


async def start_transcription(
    services: Services,
    ticket: Ticket,
    source: BinaryIO,
    *,
    task: Task,
    language: str | None = None,
    prompt: str | None = None,
    temperature: float | None = None,
    word_timestamps: bool = False,
) -> Transcription:
    """Decode ``source`` off the event loop, reserve its seconds on ``ticket`` (which has
    authorized the model), and start transcribing it (or translating it)."""
    entry = ticket.entry
    assert entry is not None
    code = _check_language(entry, language) if language else None
    audio = await run_in_thread(decode_for_whisper, source)
    job = TranscriptionJob(
        engine_model=entry.model.id,
        audio=audio,
        task=task,
        language=code,
        prompt=prompt,
        temperature=temperature,
        word_timestamps=word_timestamps,
    )
    await ticket.reserve(audio_seconds=job.duration_s)
    return await services.router.transcription_provider(entry).transcribe(job)


def _check_language(entry: CatalogEntry, language: str) -> str:
    code = language_code(language)
    if code is None or (entry.model.languages and code not in entry.model.languages):
        raise InvalidRequest(
            f"Language '{language}' is not supported by model '{entry.id}'. Use an ISO-639-1 "
            "code such as 'en', 'de' or 'zh' (see GET /api/models for the model's languages).",
            param="language",
            code="unsupported_value",
        )
    return code

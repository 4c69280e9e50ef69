"""Speech to text and translation: check the options and the upload's header, then start the
provider, which decodes the upload once it has admitted the job.

The order is what keeps a hostile upload cheap: the header is read (no decoding) and a key
that cannot pay for what it claims is refused at once; decoding then runs in the engine's slot,
bounded by ``VOXGATE_MAX_AUDIO_SECONDS`` and by what the key can afford, and stops as soon as
either is passed or the client leaves. The cost is reserved on the decoded duration.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import BinaryIO, cast

import anyio
import numpy as np

from voxgate.audio import WHISPER_SAMPLE_RATE, WhisperDecoder, audio_too_long, probe_duration
from voxgate.catalog import CatalogEntry
from voxgate.concurrency import iterate_in_thread, run_in_thread
from voxgate.errors import InvalidRequest
from voxgate.languages import language_code
from voxgate.memory import release_memory
from voxgate.providers.base import Task, Transcription, TranscriptionJob
from voxgate.services.container import Services
from voxgate.services.metering import Ticket

# Give the heap back to the OS after decoding more than this (10 min of audio is 38 MB).
_TRIM_AFTER_S = 600.0


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
    keywords: tuple[str, ...] = (),
    languages: tuple[str, ...] = (),
    stream: bool = False,
    segment_times: bool = True,
) -> Transcription:
    """Transcribe (or translate) ``source`` for ``ticket`` (which has authorized the model).

    Raises InvalidAudio / AudioTooLong (400), InsufficientQuota or RateLimited (429) and
    Overloaded (503); cancelling it stops waiting for the engine and decoding at once.
    """
    entry = ticket.entry
    assert entry is not None
    code = check_language(entry, language) if language else None
    candidates = tuple(dict.fromkeys(check_language(entry, x, "languages") for x in languages))
    if code is not None and candidates and code not in candidates:
        raise InvalidRequest(
            f"'language' ({language}) must be one of 'languages' when both are given.",
            param="languages",
            code="invalid_value",
        )
    max_s = services.settings.max_audio_seconds
    stated_s = await run_in_thread(probe_duration, source)
    allowance_s = await ticket.audio_allowance(stated_s)
    if stated_s is not None and stated_s > max_s:
        raise audio_too_long(max_s)

    async def load_audio() -> np.ndarray:
        audio = await decode_upload(
            source, ticket, max_s=max_s, stated_s=stated_s, allowance_s=allowance_s
        )
        await ticket.reserve(audio_seconds=len(audio) / WHISPER_SAMPLE_RATE)
        return audio

    job = TranscriptionJob(
        engine_model=entry.model.id,
        load_audio=load_audio,
        task=task,
        language=code,
        prompt=prompt,
        temperature=temperature,
        word_timestamps=word_timestamps,
        keywords=keywords,
        languages=candidates,
        stream=stream,
        segment_times=segment_times,
    )
    return await services.router.transcription_provider(entry).transcribe(job)


async def decode_upload(
    source: BinaryIO,
    ticket: Ticket,
    *,
    max_s: float,
    stated_s: float | None,
    allowance_s: float | None,
) -> np.ndarray:
    """Decode in a worker thread; refuse (429) as soon as the audio passes what the key could
    afford, re-checked then in case the budget or bucket has room again."""
    hint_s = min(s for s in (stated_s, allowance_s, max_s) if s is not None)
    decoder = WhisperDecoder(source, max_s=max_s, size_hint_s=hint_s)
    decoded_s = 0.0
    try:
        progress = cast(AsyncGenerator[float, None], iterate_in_thread(decoder.run))
        async with aclosing(progress):
            async for decoded_s in progress:
                if allowance_s is not None and decoded_s > allowance_s:
                    allowance_s = await ticket.audio_allowance(decoded_s)
        return decoder.audio()
    finally:
        decoder.discard()
        if decoded_s > _TRIM_AFTER_S:
            with anyio.CancelScope(shield=True):
                await run_in_thread(release_memory)


def check_language(entry: CatalogEntry, language: str, param: str = "language") -> str:
    code = language_code(language)
    if code is None or (entry.model.languages and code not in entry.model.languages):
        raise InvalidRequest(
            f"Language '{language}' is not supported by model '{entry.id}'. Use an ISO-639-1 "
            "code such as 'en', 'de' or 'zh' (see GET /api/models for the model's languages).",
            param=param,
            code="unsupported_value",
        )
    return code

"""Speech to text and translation: check the options and the upload's header, then start the
provider, which measures the upload once it has admitted the job and then transcribes it window
by window (``audio_windows``), decoding it again piece by piece.

The order is what keeps a hostile upload cheap: the header is read (no decoding) and a key
that cannot pay for what it claims is refused at once; decoding then runs in the engine's slot,
bounded by ``VOXGATE_MAX_AUDIO_SECONDS`` and by what the key can afford, and stops as soon as
either is passed or the client leaves. The cost is reserved on the decoded duration. The
measuring pass keeps no samples, so memory does not grow with the length of the upload.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import BinaryIO, cast

from voxgate.audio import (
    AudioMeter,
    MeasuredAudio,
    audio_too_long,
    pcm_pieces,
    probe_duration,
)
from voxgate.audio_windows import AUTO, VadOptions
from voxgate.catalog import CatalogEntry
from voxgate.concurrency import iterate_in_thread, run_in_thread
from voxgate.errors import InvalidRequest
from voxgate.languages import language_code
from voxgate.providers.base import Task, Transcription, TranscriptionJob
from voxgate.schemas import ServerVad
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
    keywords: tuple[str, ...] = (),
    languages: tuple[str, ...] = (),
    stream: bool = False,
    segment_times: bool = True,
    chunking: VadOptions = AUTO,
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

    async def load_audio() -> MeasuredAudio:
        duration_s = await _measure(source, ticket, max_s=max_s, allowance_s=allowance_s)
        await ticket.reserve(audio_seconds=duration_s)
        return MeasuredAudio(
            duration_s, lambda: pcm_pieces(source, max_s=max_s, measured_s=duration_s)
        )

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
        chunking=chunking,
        stated_s=stated_s,
    )
    return await services.router.transcription_provider(entry).transcribe(job)


async def _measure(
    source: BinaryIO, ticket: Ticket, *, max_s: float, allowance_s: float | None
) -> float:
    """Measure in a worker thread (packets' durations; decoding only when they are missing);
    refuse (429) as soon as the audio passes what the key could afford, re-checked then in
    case the budget or bucket has room again."""
    meter = AudioMeter(source, max_s=max_s)
    progress = cast(AsyncGenerator[float, None], iterate_in_thread(meter.run))
    async with aclosing(progress):
        async for decoded_s in progress:
            if allowance_s is not None and decoded_s > allowance_s:
                allowance_s = await ticket.audio_allowance(decoded_s)
    return meter.measured_s


def vad_options(strategy: ServerVad | str | None) -> VadOptions:
    """OpenAI's ``chunking_strategy`` in Silero's terms. Unset and ``"auto"`` are the server's
    defaults: long audio is always chunked here (OpenAI's unset means one block)."""
    if not isinstance(strategy, ServerVad):
        return AUTO
    return VadOptions(
        threshold=strategy.threshold,
        speech_pad_ms=strategy.prefix_padding_ms,
        min_silence_duration_ms=strategy.silence_duration_ms,
        explicit=True,
    )


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

"""Speech to text and translation: the parsed request, and the local engine's job built from it.

Pure: nothing here reads the upload, meters or routes (``services/relay.py`` owns the request's
life). What it checks (languages the model knows) is refused before anything is admitted or
decoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from voxgate import schemas
from voxgate.audio_windows import AUTO, VadOptions
from voxgate.catalog import CatalogEntry
from voxgate.errors import InvalidRequest
from voxgate.languages import language_code
from voxgate.providers.base import Admit, Task, TranscriptionJob
from voxgate.schemas import ServerVad
from voxgate.uploads import SpooledUpload


@dataclass(frozen=True)
class TranscriptionRequest:
    """A parsed form: ``fields`` exactly as the client sent them (order kept, file left
    out), for an upstream; ``options`` the same, validated, for the local engine."""

    task: Task
    path: str  # relative to the provider's base URL: audio/transcriptions or audio/translations
    fields: Sequence[tuple[str, str]]
    options: schemas.TranscriptionForm
    upload: SpooledUpload
    max_s: float  # VOXGATE_MAX_AUDIO_SECONDS
    word_timestamps: bool = False
    # The response shows segment times (srt, vtt, verbose_json, or streamed deltas asked for
    # them): the local engine then word-aligns its segments.
    segment_times: bool = True


def engine_job(
    model: CatalogEntry,
    request: TranscriptionRequest,
    admit: Admit,
    *,
    stated_s: float | None = None,
) -> TranscriptionJob:
    """The local engine's job for ``request`` on ``model`` (whose languages it is checked
    against: InvalidRequest, 400, naming the field). ``stated_s``, the length the upload's
    header states, sizes the job for the engine queue's estimates."""
    options = request.options
    code = check_language(model, options.language) if options.language else None
    candidates = tuple(
        dict.fromkeys(check_language(model, x, "languages") for x in options.languages or ())
    )
    if code is not None and candidates and code not in candidates:
        raise InvalidRequest(
            f"'language' ({options.language}) must be one of 'languages' when both are given.",
            param="languages",
            code="invalid_value",
        )
    return TranscriptionJob(
        engine_model=model.model.id,
        upload=request.upload,
        admit=admit,
        max_s=request.max_s,
        task=request.task,
        language=code,
        prompt=options.prompt,
        temperature=options.temperature,
        word_timestamps=request.word_timestamps,
        keywords=tuple(options.keywords or ()),
        languages=candidates,
        stream=options.stream,
        segment_times=request.segment_times,
        chunking=vad_options(options.chunking_strategy),
        stated_s=stated_s,
    )


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

"""Render a finished transcript as json, text, srt, verbose_json or vtt (pure functions).

Engines yield ``Segment``s; only this module knows what the five response formats look like, so
local and (later) upstream results render identically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from voxgate import schemas
from voxgate.languages import WHISPER_LANGUAGES
from voxgate.providers.base import Segment, Task, Word


def transcript_text(segments: Sequence[Segment]) -> str:
    return "".join(segment.text for segment in segments).strip()


def usage(duration_s: float) -> schemas.DurationUsage:
    """Billed seconds as OpenAI reports them for whisper-1: whole seconds, rounded up."""
    return schemas.DurationUsage(seconds=math.ceil(duration_s))


def logprobs(segments: Sequence[Segment]) -> list[schemas.Logprob]:
    """Per-word log probabilities (Whisper's word confidences; needs word timestamps)."""
    return [
        schemas.Logprob(
            token=word.word,
            logprob=math.log(max(word.probability, 1e-12)),
            bytes=list(word.word.encode()),
        )
        for segment in segments
        for word in segment.words
    ]


def render(
    response_format: schemas.TranscriptFormat,
    segments: Sequence[Segment],
    *,
    task: Task,
    language: str,
    duration_s: float,
    words: bool = False,
    with_segments: bool = True,
    include_logprobs: bool = False,
    guards: schemas.GuardsOut | None = None,
) -> tuple[str, str]:
    """Return (body, media type) for one of the five transcript formats."""
    if response_format == "text":
        return transcript_text(segments) + "\n", "text/plain; charset=utf-8"
    if response_format == "srt":
        return to_srt(segments), "text/plain; charset=utf-8"
    if response_format == "vtt":
        return to_vtt(segments), "text/vtt; charset=utf-8"
    if response_format == "verbose_json":
        verbose = schemas.TranscriptionVerbose(
            task=task,
            language=_language_name(task, language),
            duration=round(duration_s, 3),
            text=transcript_text(segments),
            segments=[_segment_out(s) for s in segments] if with_segments else None,
            words=[_word_out(w) for s in segments for w in s.words] if words else None,
            usage=usage(duration_s) if task == "transcribe" else None,
            guards=guards,
        )
        return verbose.model_dump_json(exclude_none=True), "application/json"
    body = schemas.TranscriptionJson(
        text=transcript_text(segments),
        usage=usage(duration_s) if task == "transcribe" else None,
        logprobs=logprobs(segments) if include_logprobs else None,
    )
    return body.model_dump_json(exclude_none=True), "application/json"


def to_srt(segments: Sequence[Segment]) -> str:
    blocks = [
        f"{n}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{s.text.strip()}\n"
        for n, s in enumerate(segments, start=1)
    ]
    return "\n".join(blocks)


def to_vtt(segments: Sequence[Segment]) -> str:
    blocks = [
        f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{s.text.strip()}\n"
        for s in segments
    ]
    return "\n".join(["WEBVTT\n", *blocks])


def _timestamp(seconds: float, decimal_marker: str) -> str:
    milliseconds = round(seconds * 1000)
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    secs, milliseconds = divmod(milliseconds, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{milliseconds:03d}"


def _segment_out(segment: Segment) -> schemas.SegmentOut:
    return schemas.SegmentOut(
        id=segment.id,
        seek=segment.seek,
        start=segment.start,
        end=segment.end,
        text=segment.text,
        tokens=list(segment.tokens),
        temperature=segment.temperature,
        avg_logprob=segment.avg_logprob,
        compression_ratio=segment.compression_ratio,
        no_speech_prob=segment.no_speech_prob,
    )


def _word_out(word: Word) -> schemas.WordOut:
    return schemas.WordOut(word=word.word.strip(), start=word.start, end=word.end)


def _language_name(task: Task, language: str) -> str:
    """verbose_json's language: the full lower-case name; always "english" for translations."""
    return "english" if task == "translate" else WHISPER_LANGUAGES.get(language, language)

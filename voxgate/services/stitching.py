"""The answers for the pieces of a long recording, stitched into one transcript (pure).

A remote upstream answered each piece on the piece's own timeline (``services/chunked.py``
sent them); here each answer is read (json, verbose_json or plain text), its segments and
words are moved by the piece's offset and numbered in order (``audio_windows.Stitcher``, as for
the local engine's windows), and the whole is rendered by ``formats`` in the client's
``response_format``. OpenAI lists words beside the segments; each goes to the segment it falls
in, so moving segments moves their words.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from voxgate import formats, schemas
from voxgate.audio_windows import Stitcher
from voxgate.providers.base import Segment, Task, Word


@dataclass(frozen=True)
class PieceAnswer:
    """One piece's transcript on the piece's own timeline."""

    offset_s: float  # where the piece starts in the file
    duration_s: float
    text: str
    segments: tuple[Segment, ...] = ()
    language: str | None = None
    logprobs: tuple[schemas.Logprob, ...] = ()


def parse_answer(
    offset_s: float, duration_s: float, body: bytes, content_type: str = "application/json"
) -> PieceAnswer:
    """An upstream's json / verbose_json (or plain text) answer for the piece at ``offset_s``.
    Raises ValueError / TypeError / KeyError for one that is not a transcript."""
    if "json" not in content_type:
        plain = body.decode("utf-8", "replace").strip()
        return PieceAnswer(offset_s, duration_s, plain, _segments([], [], plain, duration_s))
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        raise ValueError("not a transcript")
    text: str = data["text"]
    segments = _segments(data.get("segments") or [], data.get("words") or [], text, duration_s)
    language = data.get("language")
    logprobs = tuple(schemas.Logprob.model_validate(x) for x in data.get("logprobs") or [])
    language = language if isinstance(language, str) else None
    return PieceAnswer(offset_s, duration_s, text, segments, language, logprobs)


def _segments(
    raw_segments: list[Any], raw_words: list[Any], text: str, duration_s: float
) -> tuple[Segment, ...]:
    """Segments with their words (OpenAI lists words apart: each goes to the last segment that
    starts at or before it); an answer without segments is one segment over the whole piece."""
    segments = [_segment(n, raw) for n, raw in enumerate(raw_segments)]
    if not segments and (text.strip() or raw_words):
        segments = [Segment(id=0, seek=0, start=0.0, end=duration_s, text=text)]
    words = sorted((_word(raw) for raw in raw_words), key=lambda word: word.start)
    if words and segments:
        starts = [segment.start for segment in segments]
        placed: list[list[Word]] = [[] for _ in segments]
        for word in words:
            placed[max(0, bisect.bisect_right(starts, word.start) - 1)].append(word)
        segments = [replace(s, words=tuple(w)) for s, w in zip(segments, placed, strict=True)]
    return tuple(replace(s, text=spaced(s.text)) for s in segments)


def _segment(number: int, raw: Any) -> Segment:
    if not isinstance(raw, dict):
        raise TypeError("segment is not an object")
    return Segment(
        id=int(raw.get("id", number)),
        seek=int(raw.get("seek", 0)),
        start=float(raw["start"]),
        end=float(raw["end"]),
        text=str(raw.get("text", "")),
        tokens=tuple(int(token) for token in raw.get("tokens") or ()),
        temperature=float(raw.get("temperature", 0.0)),
        avg_logprob=float(raw.get("avg_logprob", 0.0)),
        compression_ratio=float(raw.get("compression_ratio", 0.0)),
        no_speech_prob=float(raw.get("no_speech_prob", 0.0)),
    )


def _word(raw: Any) -> Word:
    if not isinstance(raw, dict):
        raise TypeError("word is not an object")
    return Word(
        word=str(raw["word"]),
        start=float(raw["start"]),
        end=float(raw["end"]),
        probability=float(raw.get("probability", 1.0)),
    )


def spaced(text: str) -> str:
    """Segment texts are joined as they are (Whisper's start with a space); one piece's first
    must not run into the last word of the piece before it."""
    return text if not text or text[0].isspace() else " " + text


def stitch(answers: Sequence[PieceAnswer]) -> list[Segment]:
    """Every piece's segments on the file's timeline, numbered in order."""
    stitcher = Stitcher()
    return [
        stitcher.place_at(segment, answer.offset_s, answer.duration_s)
        for answer in answers
        for segment in answer.segments
    ]


def render(
    answers: Sequence[PieceAnswer],
    options: schemas.TranscriptionForm,
    *,
    task: Task,
    duration_s: float,
) -> tuple[str, str]:
    """The stitched transcript as (body, media type) in the client's ``response_format``;
    ``duration_s`` is voxgate's own measurement of the whole upload."""
    segments = stitch(answers)
    if "logprobs" in options.include and options.response_format == "json":
        body = schemas.TranscriptionJson(
            text=formats.transcript_text(segments),
            usage=formats.usage(duration_s) if task == "transcribe" else None,
            logprobs=[logprob for answer in answers for logprob in answer.logprobs],
        )
        return body.model_dump_json(exclude_none=True), "application/json"
    words = "word" in options.timestamp_granularities
    language = next((a.language for a in answers if a.language), options.language or "")
    return formats.render(
        options.response_format,
        segments,
        task=task,
        language=language,
        duration_s=duration_s,
        words=words,
        with_segments="segment" in options.timestamp_granularities or not words,
    )

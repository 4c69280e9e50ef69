"""Quality guards over decoded segments: no invented text on silence, noise or music, no loops.

Whisper, asked to transcribe audio with no speech in it, still writes something ("Thank you.",
"Thanks for watching!") and, on long ambient audio, can repeat one line or one phrase for the
rest of the window. The engine's own signals tell these cases apart from speech: a segment the
model itself thinks is silence (high ``no_speech_prob``) *and* decoded with low confidence (low
``avg_logprob``) is dropped. A word or phrase repeated four or more times in a row is a loop: cut
to one copy when the rest of the segment is real text, the whole segment dropped when the loop
is most of it or its text compresses like one (Whisper's own test, gzip ratio > 2.4: the batched
pipeline has no temperature fallback to re-decode it, and the sequential one has already tried
every temperature). A segment repeating the previous one's text for the third time is dropped.

Pure functions over ``Segment``s, applied lazily (a streamed transcript is filtered segment by
segment), so they work for any provider whose segments carry Whisper's signals; segments without
them (all zero, e.g. from an upstream that returns plain text) only get the repetition checks.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import AsyncGenerator, Iterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Literal

from voxgate.providers.base import Segment, Transcription

# Whisper's own thresholds (openai/whisper transcribe(): no_speech_threshold, logprob_threshold,
# compression_ratio_threshold), used by faster-whisper too.
NO_SPEECH_PROB = 0.6
LOW_AVG_LOGPROB = -1.0
LOOP_COMPRESSION_RATIO = 2.4
# A segment is flagged (kept, but reported) below this confidence: where Whisper itself would
# have re-decoded at a higher temperature.
FLAG_AVG_LOGPROB = LOW_AVG_LOGPROB
# A run of the same n-gram (1 to _MAX_NGRAM words) repeated this many times in a row is a loop:
# speech repeats a word twice ("the the") or a phrase three times at most.
_LOOP_REPEATS = 4
_MAX_NGRAM = 8
# The same text in this many consecutive segments is a loop; later copies are dropped.
_SAME_TEXT_RUN = 3

Reason = Literal["no_speech", "repetition", "repeated_segment", "low_confidence"]

_WORD = re.compile(r"\S+")
_NORMAL = re.compile(r"[^\w]+")


@dataclass(frozen=True)
class GuardAction:
    """One thing a guard did: ``dropped``, ``trimmed`` (loop cut out) or ``flagged`` (kept)."""

    action: Literal["dropped", "trimmed", "flagged"]
    reason: Reason
    start: float
    end: float


@dataclass
class GuardReport:
    """What the guards did to one transcript; filled in as its segments pass."""

    actions: list[GuardAction] = field(default_factory=list)

    def count(self, action: str) -> int:
        return sum(1 for a in self.actions if a.action == action)

    def header(self) -> str:
        """``dropped=N, trimmed=N, flagged=N``: the ``x-voxgate-guards`` response header."""
        return ", ".join(f"{a}={self.count(a)}" for a in ("dropped", "trimmed", "flagged"))


def is_no_speech(segment: Segment) -> bool:
    """The model's own verdict: probably not speech, and decoded with low confidence."""
    return segment.no_speech_prob > NO_SPEECH_PROB and segment.avg_logprob < LOW_AVG_LOGPROB


def compression_ratio(text: str) -> float:
    """gzip-style compression ratio of the text, as Whisper computes it."""
    data = text.encode()
    return len(data) / len(zlib.compress(data)) if data else 0.0


def collapse_loops(text: str) -> str:
    """``text`` with every run of one n-gram repeated ``_LOOP_REPEATS`` or more times in a row
    cut to a single copy (compared without case and punctuation; the first copy is kept as is)."""
    words = _WORD.findall(text)
    kept = loop_free(words)
    if len(kept) == len(words):
        return text
    leading = " " if text.startswith(" ") else ""
    return leading + " ".join(words[i] for i in kept)


def loop_free(words: Sequence[str]) -> list[int]:
    """Indices of ``words`` to keep so that no n-gram loop remains (first copy of each kept)."""
    keys = [_NORMAL.sub("", w.lower()) for w in words]
    kept: list[int] = []
    i = 0
    while i < len(keys):
        run = _longest_loop_at(keys, i)
        if run is None:
            kept.append(i)
            i += 1
            continue
        n, repeats = run
        kept.extend(range(i, i + n))
        i += n * repeats
    return kept


def _longest_loop_at(keys: list[str], i: int) -> tuple[int, int] | None:
    """(n, repeats) of the n-gram at ``i`` repeated the most words' worth, if it loops."""
    best: tuple[int, int] | None = None
    for n in range(1, _MAX_NGRAM + 1):
        gram = keys[i : i + n]
        if len(gram) < n or not any(gram):
            break
        repeats = 1
        while keys[i + repeats * n : i + (repeats + 1) * n] == gram:
            repeats += 1
        if repeats >= _LOOP_REPEATS and (best is None or n * repeats > best[0] * best[1]):
            best = (n, repeats)
    return best


class SegmentGuard:
    """Decides, segment by segment, what to keep; records what it did in ``report``.

    Kept segments are renumbered so ``id`` stays 0, 1, 2, … after drops.
    """

    def __init__(self, report: GuardReport | None = None) -> None:
        self.report = report if report is not None else GuardReport()
        self._next_id = 0
        self._last_text = ""
        self._same_run = 0

    def check(self, segment: Segment) -> Segment | None:
        reason = self._drop_reason(segment)
        if reason is None:
            segment, reason = self._trim(segment)
        if reason is None:
            reason = self._repeat_reason(segment)
        if reason is not None:
            self._record("dropped", reason, segment)
            return None
        if segment.avg_logprob < FLAG_AVG_LOGPROB:
            self._record("flagged", "low_confidence", segment)
        segment = replace(segment, id=self._next_id)
        self._next_id += 1
        return segment

    def filter(self, segments: Iterator[Segment]) -> Iterator[Segment]:
        for segment in segments:
            kept = self.check(segment)
            if kept is not None:
                yield kept

    async def filter_async(
        self, segments: AsyncGenerator[Segment, None]
    ) -> AsyncGenerator[Segment, None]:
        """Closing this closes ``segments`` at once (the engine's slot is freed with it)."""
        async with aclosing(segments) as source:
            async for segment in source:
                kept = self.check(segment)
                if kept is not None:
                    yield kept

    def _drop_reason(self, segment: Segment) -> Reason | None:
        if not _normal(segment.text):
            return "no_speech"
        if is_no_speech(segment):
            return "no_speech"
        return None

    def _trim(self, segment: Segment) -> tuple[Segment, Reason | None]:
        """Cut loops out of the segment: by its words when it has them (times stay right).
        A segment that is mostly loop, or compresses like one, is dropped (reason returned)."""
        pieces = [w.word for w in segment.words] if segment.words else _WORD.findall(segment.text)
        kept = loop_free(pieces)
        if len(kept) == len(pieces):
            looping = compression_ratio(segment.text) > LOOP_COMPRESSION_RATIO
            return segment, "repetition" if looping else None
        if len(kept) * 2 <= len(pieces):
            return segment, "repetition"
        self._record("trimmed", "repetition", segment)
        if segment.words:
            words = tuple(segment.words[i] for i in kept)
            text = "".join(w.word for w in words)
            end = words[-1].end
        else:
            words, end = (), segment.end
            text = (" " if segment.text.startswith(" ") else "") + " ".join(pieces[i] for i in kept)
        # The token ids no longer match the text; verbose_json then lists none for it.
        trimmed = replace(
            segment,
            text=text,
            tokens=(),
            words=words,
            end=end,
            compression_ratio=round(compression_ratio(text), 3),
        )
        return trimmed, None

    def _repeat_reason(self, segment: Segment) -> Reason | None:
        text = _normal(segment.text)
        self._same_run = self._same_run + 1 if text == self._last_text else 1
        self._last_text = text
        return "repeated_segment" if self._same_run >= _SAME_TEXT_RUN else None

    def _record(
        self, action: Literal["dropped", "trimmed", "flagged"], reason: Reason, segment: Segment
    ) -> None:
        self.report.actions.append(GuardAction(action, reason, segment.start, segment.end))


def _normal(text: str) -> str:
    return " ".join(_NORMAL.sub(" ", text.lower()).split())


def guard_transcription(transcription: Transcription) -> GuardReport:
    """Filter ``transcription``'s segments through a fresh guard (lazily, so streaming still
    streams); the report fills in as they are consumed."""
    guard = SegmentGuard()
    transcription.segments = guard.filter_async(transcription.segments)
    return guard.report

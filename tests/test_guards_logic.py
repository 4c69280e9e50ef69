"""The quality guards' decisions as pure functions over segments (the real-audio cases that
trigger them are in test_transcript_guards.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from voxgate.providers.base import Segment, Word
from voxgate.services.guards import GuardReport, SegmentGuard, collapse_loops, compression_ratio


def _segment(text: str, *, start: float = 0.0, end: float = 2.0, **signals: float) -> Segment:
    return Segment(id=7, seek=0, start=start, end=end, text=text, tokens=(1, 2, 3), **signals)


def test_speech_passes_untouched_and_is_renumbered() -> None:
    guard = SegmentGuard()
    first = guard.check(_segment(" Ask not what your country can do for you.", avg_logprob=-0.2))
    second = guard.check(_segment(" Ask what you can do.", avg_logprob=-0.3, no_speech_prob=0.9))
    assert first is not None and second is not None
    assert (first.id, second.id) == (0, 1)
    assert first.text == " Ask not what your country can do for you."
    assert first.tokens == (1, 2, 3)
    assert guard.report.actions == []


def test_no_speech_needs_both_signals() -> None:
    guard = SegmentGuard()
    assert guard.check(_segment(" Thank you.", no_speech_prob=0.9, avg_logprob=-1.2)) is None
    # Confident text despite a high no-speech probability is speech (Whisper's own rule).
    assert guard.check(_segment(" Hello there.", no_speech_prob=0.9, avg_logprob=-0.5)) is not None
    assert [(a.action, a.reason) for a in guard.report.actions] == [("dropped", "no_speech")]


def test_low_confidence_is_flagged_not_dropped() -> None:
    guard = SegmentGuard()
    kept = guard.check(_segment(" Fire fox.", avg_logprob=-1.05, no_speech_prob=0.1))
    assert kept is not None
    assert [(a.action, a.reason) for a in guard.report.actions] == [("flagged", "low_confidence")]
    assert guard.report.header() == "dropped=0, trimmed=0, flagged=1"


def test_phrase_loop_is_cut_to_one_copy() -> None:
    looped = " I went home. " + "And then I went home. " * 6 + "The end."
    assert collapse_loops(looped) == " I went home. And then I went home. The end."
    # Natural repetition survives: a doubled word, a phrase said three times.
    assert collapse_loops(" the the cat") == " the the cat"
    assert collapse_loops(" No, no, no, I said.") == " No, no, no, I said."
    assert collapse_loops(" one two three one two three one two three") == (
        " one two three one two three one two three"
    )


def test_trimmed_segment_keeps_its_first_copy_with_word_times() -> None:
    words = tuple(
        Word(word=w, start=i * 0.5, end=i * 0.5 + 0.4, probability=0.9)
        for i, w in enumerate([" Go", " on", " and", " sing", *([" la"] * 5), " now", " please."])
    )
    text = "".join(w.word for w in words)
    guard = SegmentGuard()
    kept = guard.check(Segment(0, 0, 0.0, 6.0, text, tokens=(5,) * 11, words=words))
    assert kept is not None
    assert kept.text == " Go on and sing la now please."
    assert [w.word for w in kept.words] == [
        " Go",
        " on",
        " and",
        " sing",
        " la",
        " now",
        " please.",
    ]
    assert kept.end == words[-1].end
    assert kept.tokens == ()  # they no longer match the text
    assert [(a.action, a.reason) for a in guard.report.actions] == [("trimmed", "repetition")]


def test_a_segment_that_is_mostly_loop_is_dropped() -> None:
    # Whisper base on 60 s of time-reversed speech (see test_transcript_guards.py) wrote this.
    guard = SegmentGuard()
    assert guard.check(_segment(" Ym o'r nhw'n eich y fag," + " yshdyn" * 40)) is None
    assert guard.check(_segment(" Syrach oes i'r gweithio'r ffosia'r bylod." * 8)) is None
    assert [(a.action, a.reason) for a in guard.report.actions] == [("dropped", "repetition")] * 2


def test_a_line_repeated_segment_after_segment_is_dropped_from_its_third_copy() -> None:
    guard = SegmentGuard()
    texts = [" Thank you for watching!"] * 5 + [" Goodbye."]
    kept = [guard.check(_segment(t, start=i, end=i + 1)) for i, t in enumerate(texts)]
    assert [k.text if k else None for k in kept] == [
        " Thank you for watching!",
        " Thank you for watching!",
        None,
        None,
        None,
        " Goodbye.",
    ]
    assert guard.report.count("dropped") == 3


def test_text_that_compresses_like_a_loop_is_dropped() -> None:
    noise = " " + "ha" * 60
    assert compression_ratio(noise) > 2.4
    guard = SegmentGuard()
    assert guard.check(_segment(noise)) is None
    assert guard.report.actions[0].reason == "repetition"


def test_empty_and_punctuation_only_segments_are_dropped() -> None:
    guard = SegmentGuard()
    assert guard.check(_segment(" ...")) is None
    assert guard.check(_segment("")) is None
    assert guard.report.count("dropped") == 2


def test_async_filter_closes_its_source_when_closed() -> None:
    closed = []

    async def source() -> AsyncGenerator[Segment, None]:
        try:
            for i in range(10):
                yield _segment(f" Sentence number {i}.", start=i, end=i + 1)
        finally:
            closed.append(True)

    async def take_two() -> list[str]:
        filtered = SegmentGuard(GuardReport()).filter_async(source())
        texts = [(await anext(filtered)).text, (await anext(filtered)).text]
        await filtered.aclose()
        return texts

    assert asyncio.run(take_two()) == [" Sentence number 0.", " Sentence number 1."]
    assert closed == [True]

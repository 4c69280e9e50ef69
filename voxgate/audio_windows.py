"""Long audio in bounded memory: PCM in, windows cut at silences out, segments stitched back.

A transcription of an hour must not hold the hour: the upload is decoded piece by piece into a
window of ``window_s`` seconds; when it is full, Silero VAD (faster-whisper's) looks at its last
``search_s`` seconds and the window is cut in the middle of the longest silence there, the rest
carried over into the next window. Each window is transcribed on its own and its segments are
moved onto the file's timeline by ``Stitcher`` (ids, times, ``seek`` and word times).

Nothing here knows an engine: windows are plain 16 kHz float32 arrays with their offset, so a
remote upstream can encode and send them as they are, and stitch what comes back the same way.
``VadOptions`` is OpenAI's ``chunking_strategy`` in the terms Silero VAD takes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from voxgate.audio import WHISPER_SAMPLE_RATE

if TYPE_CHECKING:  # providers.base imports this module for VadOptions
    from faster_whisper import vad as silero

    from voxgate.providers.base import Segment

# Never let faster-whisper or huggingface_hub reach for the network (the VAD model is bundled).
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@functools.cache
def _silero() -> ModuleType:
    """faster-whisper's Silero VAD, imported on first use: importing faster_whisper loads
    CTranslate2 (about 30 MB), which a pure gateway replica (no local engines) never needs."""
    from faster_whisper import vad

    return vad  # type: ignore[no-any-return]  # faster_whisper ships no type hints


# Four of Whisper's 30 s chunks: one batch of the batched pipeline at its default size, 7.7 MB.
WINDOW_S = 120.0
# Where a window may end: in its last quarter, at most this many seconds of it.
SEARCH_S = 30.0
# With no silence in the search region at all, cut at its quietest frame of this length.
_QUIET_FRAME_S = 0.03
# A gap between VAD's speech chunks shorter than this is no pause to cut in.
_MIN_GAP_S = 0.1
# Segment times are rounded to the millisecond, as elsewhere in voxgate.
_FRAMES_PER_S = 100  # Whisper's ``seek`` counts 10 ms mel frames


@dataclass(frozen=True)
class VadOptions:
    """Voice activity detection as ``chunking_strategy`` sets it (OpenAI's names → Silero's).

    ``threshold``: speech probability above which audio is speech. ``speech_pad_ms``
    (OpenAI's ``prefix_padding_ms``): audio kept around each speech chunk.
    ``min_silence_duration_ms`` (OpenAI's ``silence_duration_ms``): the silence that ends a
    chunk. The defaults are faster-whisper's batched pipeline's, what ``"auto"`` means here.
    ``explicit`` marks a client's ``server_vad``: VAD then filters short audio too.
    """

    threshold: float = 0.5
    speech_pad_ms: int = 400
    min_silence_duration_ms: int = 160
    explicit: bool = False

    def silero(self, *, max_speech_s: float = float("inf"), pad: bool = True) -> silero.VadOptions:
        return _silero().VadOptions(
            threshold=self.threshold,
            min_silence_duration_ms=self.min_silence_duration_ms,
            speech_pad_ms=self.speech_pad_ms if pad else 0,
            max_speech_duration_s=max_speech_s,
        )


AUTO = VadOptions()


@dataclass(frozen=True)
class Window:
    """A piece of the audio and where it starts in the file."""

    offset_s: float
    audio: np.ndarray

    @property
    def duration_s(self) -> float:
        return len(self.audio) / WHISPER_SAMPLE_RATE


class Windower:
    """Cuts a stream of PCM pieces into windows at silences, holding one window at a time."""

    def __init__(self, vad: VadOptions = AUTO, *, window_s: float = WINDOW_S) -> None:
        if window_s < 1.0:
            raise ValueError("window_s must be at least a second")
        self._vad = vad
        self._window = int(window_s * WHISPER_SAMPLE_RATE)
        self._search = int(min(SEARCH_S, window_s / 4) * WHISPER_SAMPLE_RATE)

    def windows(self, pieces: Iterable[np.ndarray]) -> Iterator[Window]:
        """Consume ``pieces`` lazily; yield each window as soon as it is cut."""
        buffer = np.empty(self._window, dtype=np.float32)
        length = 0
        offset = 0  # samples of the file before ``buffer``
        for piece in pieces:
            while len(piece):
                take = min(len(piece), self._window - length)
                buffer[length : length + take] = piece[:take]
                length += take
                piece = piece[take:]
                if length < self._window:
                    continue
                cut = self.cut(buffer)
                yield Window(offset / WHISPER_SAMPLE_RATE, buffer[:cut].copy())
                buffer[: length - cut] = buffer[cut:length]
                length -= cut
                offset += cut
        if length:
            yield Window(offset / WHISPER_SAMPLE_RATE, buffer[:length].copy())

    def cut(self, audio: np.ndarray) -> int:
        """Where a full window ends: the quietest frame of the longest silence in its last part.

        Not the silence's middle: VAD ignores bursts shorter than an utterance (a breath, a
        plosive), and the middle of a gap in the long recording fell on one (RMS 0.35).
        """
        start = len(audio) - self._search
        region = audio[start:]
        speech = _silero().get_speech_timestamps(region, self._vad.silero(pad=False))
        if not speech:
            return len(audio)  # all silence: keep it whole, carry nothing
        edges = [0, *(int(chunk[edge]) for chunk in speech for edge in ("start", "end"))]
        edges.append(len(region))
        gaps = [(edges[i + 1] - edges[i], edges[i]) for i in range(0, len(edges), 2)]
        width, gap_start = max(gaps)
        if width >= _MIN_GAP_S * WHISPER_SAMPLE_RATE:
            return start + gap_start + _quietest_frame(region[gap_start : gap_start + width])
        # No pause at all (a gap this short is VAD warming up at the region's start).
        return start + _quietest_frame(region)


#: Neighbouring utterances are decoded together up to this span: Whisper then has a sentence or
#: two of context (the 53 s sonnet: 14 word errors, as the bare engine, against 20 decoded one
#: utterance at a time, and twice as fast), while chunks stay well short of the 30 s in which
#: Whisper base dropped whole sentences.
MERGE_S = 15.0


def speech_chunks(
    audio: np.ndarray, vad: VadOptions, *, max_speech_s: float
) -> list[tuple[float, float]]:
    """The utterances VAD finds in ``audio``, as (start, end) seconds, each ≤ ``max_speech_s``,
    neighbours joined up to ``MERGE_S``.

    An engine (or a remote upstream) decodes each on its own, as it would short pieces.
    """
    found = _silero().get_speech_timestamps(audio, vad.silero(max_speech_s=max_speech_s))
    utterances = [
        (int(chunk["start"]) / WHISPER_SAMPLE_RATE, int(chunk["end"]) / WHISPER_SAMPLE_RATE)
        for chunk in found
    ]
    merged: list[tuple[float, float]] = []
    for start, end in utterances:
        if merged and end - merged[-1][0] <= MERGE_S:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _quietest_frame(region: np.ndarray) -> int:
    """The middle of the lowest-energy short frame: the least harmful place for a cut. Of
    frames about as quiet (digital silence: all of them), the one nearest the region's middle,
    away from the speech on either side."""
    frame = int(_QUIET_FRAME_S * WHISPER_SAMPLE_RATE)
    if len(region) < frame:
        return len(region) // 2
    usable = len(region) // frame * frame
    energy = np.square(region[:usable].reshape(-1, frame)).sum(axis=1)
    quiet = np.flatnonzero(energy <= energy.min() * 2 + 1e-6)
    middle = (len(energy) - 1) / 2
    return int(quiet[np.argmin(np.abs(quiet - middle))]) * frame + frame // 2


class Stitcher:
    """Moves each window's segments onto the whole file's timeline, numbered in order.

    Times are clamped to their window (an engine may place a word end past the audio), so the
    stitched segments stay in order across windows.
    """

    def __init__(self) -> None:
        self._next_id = 0

    def place(self, segment: Segment, window: Window) -> Segment:
        return self.place_at(segment, window.offset_s, window.duration_s)

    def place_at(self, segment: Segment, offset: float, duration_s: float) -> Segment:
        """``place`` for a piece known only by where it starts and how long it is (a remote
        upstream's answer for a piece that was encoded and sent away)."""
        end = offset + duration_s

        def moved(seconds: float) -> float:
            return round(min(max(seconds + offset, offset), end), 3)

        placed = replace(
            segment,
            id=self._next_id,
            seek=segment.seek + round(offset * _FRAMES_PER_S),
            start=moved(segment.start),
            end=moved(segment.end),
            words=tuple(
                replace(word, start=moved(word.start), end=moved(word.end))
                for word in segment.words
            ),
        )
        self._next_id += 1
        return placed

"""The seam between services and whatever actually does the work.

A provider turns a job into domain objects: a transcription provider yields ``Segment``s, a speech
provider yields ``PcmChunk``s. Providers know nothing of HTTP, output formats or wire schemas:
the API renders. The embedded engines are the provider named ``local``; remote OpenAI-compatible
upstreams will implement the same two protocols.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from voxgate.audio import MeasuredAudio
from voxgate.audio_windows import AUTO, VadOptions

Task = Literal["transcribe", "translate"]


@dataclass(frozen=True)
class Word:
    word: str
    start: float
    end: float
    probability: float


@dataclass(frozen=True)
class Segment:
    """One decoded segment, with Whisper's quality signals (used by verbose_json)."""

    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: tuple[int, ...] = ()
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: tuple[Word, ...] = ()


AudioLoader = Callable[[], Awaitable[MeasuredAudio]]


@dataclass(frozen=True)
class TranscriptionJob:
    """What to transcribe and how.

    ``load_audio`` measures the audio (decoding the upload once, keeping nothing, and
    reserving its cost) and returns it ready to be decoded again piece by piece. A provider
    awaits it only once it has admitted the job (the local engine: in its engine slot), so
    decoding runs under the same admission as inference, and a job refused or abandoned in the
    queue is never decoded and holds no reservation. ``chunking`` is the VAD the audio is
    windowed and chunked with (``audio_windows``).
    """

    engine_model: str
    load_audio: AudioLoader
    task: Task = "transcribe"
    language: str | None = None
    prompt: str | None = None
    temperature: float | None = None
    word_timestamps: bool = False
    # Words or phrases to bias decoding towards (OpenAI's ``keywords``).
    keywords: tuple[str, ...] = ()
    # Candidate language codes: detection picks among these (ignored when ``language`` is set).
    languages: tuple[str, ...] = ()
    # The consumer streams: hand over each segment as soon as it is decoded, even at some cost
    # in throughput (the local engine then decodes long audio one window per batch).
    stream: bool = False
    # The response shows segment times (srt, vtt, verbose_json); plain text needs none, which
    # saves the local engine its word-alignment pass.
    segment_times: bool = True
    chunking: VadOptions = AUTO
    # The audio's length as its header states it (None: not stated), known before any
    # decoding: what the engine queue estimates the job's cost by.
    stated_s: float | None = None


@dataclass
class Transcription:
    """A transcription under way: the language is known up front, segments arrive lazily.

    The provider holds engine resources until ``segments`` is exhausted or closed, so consumers
    iterate it inside ``contextlib.aclosing``.
    """

    language: str
    language_probability: float
    duration_s: float
    segments: AsyncGenerator[Segment, None]

    async def all_segments(self) -> list[Segment]:
        async with aclosing(self.segments) as segments:
            return [segment async for segment in segments]


@dataclass(frozen=True)
class SpeechJob:
    """What to say. ``voice`` is an engine voice id already resolved by the catalog."""

    engine_model: str
    text: str
    voice: str
    speed: float = 1.0


@dataclass(frozen=True)
class PcmChunk:
    """Mono signed 16-bit samples at ``sample_rate``.

    ``characters`` is how many input characters start being spoken in this chunk (set on the
    first chunk of each piece of text), so a stream cut short is billed for what it carried.
    """

    samples: np.ndarray
    sample_rate: int
    characters: int = 0

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


class TranscriptionProvider(Protocol):
    async def transcribe(self, job: TranscriptionJob) -> Transcription:
        """Start transcribing; raise before the first segment for anything wrong with the job."""
        ...


class SpeechProvider(Protocol):
    def synthesize(self, job: SpeechJob) -> AsyncGenerator[PcmChunk, None]:
        """Yield audio as soon as each piece (a sentence) is synthesised."""
        ...


class Provider(TranscriptionProvider, SpeechProvider, Protocol):
    """Something the router can send any job to (the local engines, a remote upstream)."""

"""The seam between services and whatever actually does the work.

A provider turns a job into domain objects: a transcription provider yields ``Segment``s, a speech
provider yields ``PcmChunk``s. Providers know nothing of HTTP, output formats or wire schemas:
the API renders. The embedded engines are the provider named ``local``, one target among others
in a model's chain; a remote OpenAI-compatible upstream (``providers/upstream/``) answers in the
client's own format, so the relay passes its bytes on instead of domain objects.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from voxgate.audio import MeasuredAudio, pcm_pieces
from voxgate.audio_windows import AUTO, VadOptions
from voxgate.uploads import SpooledUpload

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


#: Metering's one step in a transcription job, taken once the provider has admitted it (the local
#: engine: in its slot) and before any engine work: count the upload's seconds, refusing what
#: the key cannot afford, and reserve their cost. Returns the seconds billed; raises to refuse.
#: The provider knows nothing else of metering.
Admit = Callable[[], Awaitable[float]]


@dataclass(frozen=True)
class TranscriptionJob:
    """What to transcribe and how.

    ``upload`` is the spooled file itself: a provider reads it through readers of its own
    (``upload.reader()``), so any number of attempts go over the same bytes. The local engine
    awaits ``admit`` in its engine slot, so measuring runs under the same admission as
    inference and a job refused or abandoned in the queue is never decoded and holds no
    reservation; it then decodes at most ``max_s`` and what ``admit`` measured (``pcm_pieces``).
    ``chunking`` is the VAD the audio is windowed and chunked with (``audio_windows``).
    """

    engine_model: str
    upload: SpooledUpload
    admit: Admit
    max_s: float
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

    def audio(self, measured_s: float) -> MeasuredAudio:
        """The upload, once ``admit`` measured it, to be decoded again piece by piece."""
        return MeasuredAudio(
            measured_s,
            lambda: pcm_pieces(self.upload.reader(), max_s=self.max_s, measured_s=measured_s),
        )


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

"""OpenAI's and CometAPI's wire types: requests, responses, stream events, envelopes.

Field names, defaults and limits follow OpenAI's published spec (``CreateSpeechRequest``,
``CreateTranscriptionRequest``, …) and CometAPI's ``/api/models`` envelope. Only ``api/`` imports
this module.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from voxgate.audio import SpeechFormat

TranscriptFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
TimestampGranularity = Literal["word", "segment"]
TranscriptionInclude = Literal["logprobs"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests -------------------------------------------------------------------------------


class CustomVoice(_Wire):
    id: str


class SpeechRequest(_Wire):
    model: str = Field(min_length=1)
    input: str = Field(min_length=1, max_length=4096)
    voice: str | CustomVoice
    instructions: str | None = Field(default=None, max_length=4096)
    response_format: SpeechFormat = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"


class TranscriptionForm(_Wire):
    """The non-file fields of a transcription or translation form, validated."""

    model: str = Field(min_length=1)
    language: str | None = None
    prompt: str | None = None
    response_format: TranscriptFormat = "json"
    temperature: float = Field(default=0.0, ge=0.0, le=1.0)
    timestamp_granularities: list[TimestampGranularity] = ["segment"]
    include: list[TranscriptionInclude] = []
    stream: bool = False
    chunking_strategy: str | dict[str, str] | None = None


# --- responses ------------------------------------------------------------------------------


class DurationUsage(BaseModel):
    type: Literal["duration"] = "duration"
    seconds: float


class Logprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TranscriptionJson(BaseModel):
    text: str
    usage: DurationUsage | None = None
    logprobs: list[Logprob] | None = None


class WordOut(BaseModel):
    word: str
    start: float
    end: float


class SegmentOut(BaseModel):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class TranscriptionVerbose(BaseModel):
    task: Literal["transcribe", "translate"]
    language: str
    duration: float
    text: str
    segments: list[SegmentOut] | None = None
    words: list[WordOut] | None = None
    usage: DurationUsage | None = None


class TranscriptTextDelta(BaseModel):
    type: Literal["transcript.text.delta"] = "transcript.text.delta"
    delta: str
    logprobs: list[Logprob] | None = None


class TranscriptTextDone(BaseModel):
    type: Literal["transcript.text.done"] = "transcript.text.done"
    text: str
    logprobs: list[Logprob] | None = None
    usage: DurationUsage | None = None


class SpeechAudioDelta(BaseModel):
    type: Literal["speech.audio.delta"] = "speech.audio.delta"
    audio: str


class TokenUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int


class SpeechAudioDone(BaseModel):
    type: Literal["speech.audio.done"] = "speech.audio.done"
    usage: TokenUsage


# --- models ---------------------------------------------------------------------------------


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class CatalogPricing(BaseModel):
    currency: str = "USD"
    unit: str
    input: float | None
    output: float | None
    per_request: float | None
    per_second: float | None


class CatalogVoice(BaseModel):
    id: str
    name: str


class CatalogRecord(BaseModel):
    created: int
    id: str
    code: str
    provider: str
    provider_code: str
    name: str
    description: str
    model_type: str
    features: list[str]
    endpoints: list[str]
    pricing: CatalogPricing
    alias_of: str | None
    languages: list[str]
    voices: list[CatalogVoice]


class CatalogPage(BaseModel):
    success: bool = True
    page: int
    page_size: int
    total: int
    data: list[CatalogRecord]


# --- errors ---------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(BaseModel):
    error: ErrorDetail

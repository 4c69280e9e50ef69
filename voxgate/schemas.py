"""OpenAI's and CometAPI's wire types: requests, responses, stream events, envelopes.

Field names, defaults and limits follow OpenAI's published spec (``CreateSpeechRequest``,
``CreateTranscriptionRequest``, …) and CometAPI's ``/api/models`` envelope. Only ``api/`` imports
this module.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
)

from voxgate.audio import SpeechFormat

TranscriptFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
TimestampGranularity = Literal["word", "segment"]
TranscriptionInclude = Literal["logprobs"]


#: C0 and C1 control characters except tab, LF and CR; DEL; unpaired UTF-16 surrogates (JSON
#: can carry "\ud800", Python strings can hold it, no engine or database can use it).
_UNPRINTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
MAX_PROMPT_CHARS = 4096  # Whisper reads only the last ~224 tokens of it anyway


def _printable(value: str) -> str:
    """Refuse what engines choke on (Piper: "embedded null character" → 500; eSpeak stops
    reading at a NUL) before any work is done, for every text field of every request."""
    if found := _UNPRINTABLE.search(value):
        raise ValueError(
            f"must not contain control characters, NUL or unpaired surrogates "
            f"(U+{ord(found.group()):04X} at position {found.start()})"
        )
    return value


Text = Annotated[str, AfterValidator(_printable)]
"""A string field of a request: any Unicode text but control characters (tab, CR, LF kept)."""


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests -------------------------------------------------------------------------------


class CustomVoice(_Wire):
    id: Text


class SpeechRequest(_Wire):
    model: Text = Field(min_length=1)
    input: Text = Field(min_length=1, max_length=4096)
    voice: Text | CustomVoice
    instructions: Text | None = Field(default=None, max_length=4096)
    response_format: SpeechFormat = "mp3"
    # Strict, as OpenAI's spec says "number": no `true` as 1.0, no "2" as 2.0.
    speed: float = Field(default=1.0, ge=0.25, le=4.0, strict=True)
    stream_format: Literal["audio", "sse"] = "audio"


MAX_KEYWORDS = 50
MAX_LANGUAGES = 20
Keyword = Annotated[Text, Field(min_length=1, max_length=100)]
"""One ``keywords[]`` entry: a word or short phrase. Whisper reads them in its prompt window
(224 tokens, shared with ``prompt``), so the list is bounded."""


MAX_VAD_MS = 10_000  # beyond 10 s, padding or a silence that ends a chunk means no chunking


class ServerVad(_Wire):
    """OpenAI's ``chunking_strategy`` object (its defaults; form parts arrive as strings)."""

    type: Literal["server_vad"]
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    prefix_padding_ms: int = Field(default=300, ge=0, le=MAX_VAD_MS)
    silence_duration_ms: int = Field(default=200, ge=0, le=MAX_VAD_MS)


def _json_object(value: Any) -> Any:
    """``chunking_strategy`` may also come as one part holding the object as JSON."""
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            return json.loads(value)
        except ValueError:
            raise ValueError('must be "auto" or a JSON object') from None
    return value


def _chunking_branch(value: Any) -> str:
    return "ServerVad" if isinstance(value, dict | ServerVad) else "Auto"


ChunkingStrategy = Annotated[
    Annotated[Literal["auto"], Tag("Auto")] | Annotated[ServerVad, Tag("ServerVad")],
    Discriminator(_chunking_branch),
    BeforeValidator(_json_object),
]
"""``"auto"`` or a ``server_vad`` object; each branch reports its own error (no cross-talk)."""


class TranscriptionForm(_Wire):
    """The non-file fields of a transcription or translation form, validated."""

    model: Text = Field(min_length=1)
    language: Text | None = None
    prompt: Text | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    response_format: TranscriptFormat = "json"
    temperature: float = Field(default=0.0, ge=0.0, le=1.0)
    timestamp_granularities: list[TimestampGranularity] = ["segment"]
    include: list[TranscriptionInclude] = []
    stream: bool = False
    chunking_strategy: ChunkingStrategy | None = None
    # OpenAI's newer fields: hint words for the decoder, candidate languages for detection, and
    # diarization's speaker labels and samples (refused: there is no diarization engine).
    keywords: list[Keyword] | None = Field(default=None, max_length=MAX_KEYWORDS)
    languages: list[Text] | None = Field(default=None, min_length=1, max_length=MAX_LANGUAGES)
    known_speaker_names: list[Text] | None = Field(default=None, max_length=4)
    known_speaker_references: list[Text] | None = Field(default=None, max_length=4)


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


class GuardActionOut(BaseModel):
    action: Literal["dropped", "trimmed", "flagged"]
    reason: Literal["no_speech", "repetition", "repeated_segment", "low_confidence"]
    start: float
    end: float


class GuardsOut(BaseModel):
    """voxgate's extra: what the quality guards did (the SDK's models tolerate extra keys)."""

    dropped: int
    trimmed: int
    flagged: int
    actions: list[GuardActionOut]


class TranscriptionVerbose(BaseModel):
    task: Literal["transcribe", "translate"]
    language: str
    duration: float
    text: str
    segments: list[SegmentOut] | None = None
    words: list[WordOut] | None = None
    usage: DurationUsage | None = None
    guards: GuardsOut | None = None


class TranscriptTextDelta(BaseModel):
    type: Literal["transcript.text.delta"] = "transcript.text.delta"
    delta: str
    logprobs: list[Logprob] | None = None
    # voxgate's extension, sent only on request (SEGMENT_TIMES_HEADER): the segment's times.
    start: float | None = None
    end: float | None = None


class TranscriptTextDone(BaseModel):
    type: Literal["transcript.text.done"] = "transcript.text.done"
    text: str
    logprobs: list[Logprob] | None = None
    usage: DurationUsage | None = None
    guards: GuardsOut | None = None


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
    openai_voices: list[str] = []  # OpenAI voice names this voice answers (catalog `openai`)


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


# --- admin: API keys (POST/GET/PATCH/DELETE /admin/keys) ------------------------------------
# These fix the JSON shape only. Value ranges (name length, budget >= 0, limits >= 1, known
# model ids, a future expiry) are checked by services/key_admin.py, which `voxgate keys` shares.


class _StrictWire(_Wire):
    """No coercion: ``"rpm": true`` or ``"budget_usd": "5"`` is a mistake, not a value."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ApiKeyUpdateRequest(_StrictWire):
    """Only the fields sent change; null clears a budget, limit, allowlist or expiry."""

    name: Text | None = None
    budget_usd: float | None = None
    rpm: int | None = None
    audio_seconds_per_minute: int | None = None
    characters_per_minute: int | None = None
    max_concurrency: int | None = None
    models: list[Text] | None = None
    expires_at: int | Text | None = Field(default=None, description="ISO 8601 or Unix seconds")


class ApiKeyCreateRequest(ApiKeyUpdateRequest):
    """A new key: a name is required, everything else is optional (unlimited when absent)."""

    name: Text


class ApiKeyLimits(BaseModel):
    rpm: int | None
    audio_seconds_per_minute: int | None
    characters_per_minute: int | None
    max_concurrency: int | None


class ApiKeyObject(BaseModel):
    """A stored key as the admin API shows it: never its secret, only a redacted form."""

    object: Literal["api_key"] = "api_key"
    id: str
    name: str
    redacted_value: str
    created_at: int
    expires_at: int | None
    revoked: bool
    revoked_at: int | None
    models: list[str] | None
    budget_usd: float | None
    spent_usd: float
    reserved_usd: float
    remaining_usd: float | None
    limits: ApiKeyLimits


class ApiKeyCreated(ApiKeyObject):
    key: str = Field(description="The secret. Shown in this response only; store it now.")


class ApiKeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ApiKeyObject]


# --- usage and costs (OpenAI's organization usage API) --------------------------------------
# GET /v1/organization/usage/{audio_transcriptions,audio_translations,audio_speeches} and
# GET /v1/organization/costs. Projects and users do not exist in voxgate: ``project_id`` and
# ``user_id`` are always null. A field the request did not group by is null too.


class _UsageResult(BaseModel):
    num_model_requests: int
    project_id: None = None
    user_id: None = None
    api_key_id: str | None = None
    model: str | None = None


class AudioTranscriptionsUsageResult(_UsageResult):
    """Transcriptions *and* translations: OpenAI reports both under audio_transcriptions."""

    object: Literal["organization.usage.audio_transcriptions.result"] = (
        "organization.usage.audio_transcriptions.result"
    )
    seconds: float


class AudioTranslationsUsageResult(_UsageResult):
    """Translations only: a voxgate extension (OpenAI has no audio_translations usage)."""

    object: Literal["organization.usage.audio_translations.result"] = (
        "organization.usage.audio_translations.result"
    )
    seconds: float


class AudioSpeechesUsageResult(_UsageResult):
    object: Literal["organization.usage.audio_speeches.result"] = (
        "organization.usage.audio_speeches.result"
    )
    characters: int


class CostAmount(BaseModel):
    value: float
    currency: Literal["usd"] = "usd"


class CostsResult(BaseModel):
    """``model`` is a voxgate extension: OpenAI groups costs by project, line item and key."""

    object: Literal["organization.costs.result"] = "organization.costs.result"
    amount: CostAmount
    line_item: str | None = None
    project_id: None = None
    api_key_id: str | None = None
    model: str | None = None


UsageResult = (
    AudioTranscriptionsUsageResult
    | AudioTranslationsUsageResult
    | AudioSpeechesUsageResult
    | CostsResult
)


class UsageBucket(BaseModel):
    """``[start_time, end_time)``; ``results`` is empty when nothing billable happened in it."""

    object: Literal["bucket"] = "bucket"
    start_time: int
    end_time: int
    results: list[UsageResult]


class UsagePage(BaseModel):
    object: Literal["page"] = "page"
    data: list[UsageBucket]
    has_more: bool
    next_page: str | None

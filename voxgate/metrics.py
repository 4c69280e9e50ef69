"""Every Prometheus metric voxgate exports, defined once, with the helpers that record them.

The metrics live in this process's default registry: each replica exports its own, and
Prometheus sums them across replicas. Labels are bounded by construction: ``endpoint`` is one of
the routes below (anything else is ``other``), ``model`` a catalog id (or ``""`` before one is
known), ``engine`` and ``provider`` come from the catalog, ``reason`` and ``outcome`` from the
fixed sets below. No request id, key id or secret is ever a label.

Recording is always safe to call: the metrics are cheap in-memory counters whether or not
``/metrics`` is served (``VOXGATE_METRICS``).
"""

from __future__ import annotations

from typing import Literal, get_args

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from voxgate.catalog import ENDPOINT_FEATURES

# No ``*_created`` series: they double the output and say little.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: Routes that get their own ``endpoint`` label; every other path is counted as ``other``.
ENDPOINTS = frozenset(
    {
        *ENDPOINT_FEATURES,
        "/v1/models",
        "/api/models",
        "/v1/organization/usage/audio_speeches",
        "/v1/organization/usage/audio_transcriptions",
        "/v1/organization/usage/audio_translations",
        "/v1/organization/costs",
        "/admin/keys",
        "/health",
        "/health/live",
        "/health/ready",
        "/metrics",
    }
)

RejectionReason = Literal["budget", "rate_limit", "concurrency", "engine_full"]
#: error ``code`` → rejection reason (429s by policy, 503s by a full engine).
_REJECTION_CODES: dict[str, RejectionReason] = {
    "insufficient_quota": "budget",
    "rate_limit_exceeded": "rate_limit",
    "concurrency_limit_exceeded": "concurrency",
    "server_overloaded": "engine_full",
}
UpstreamOutcome = Literal["success", "error", "timeout", "refused"]

# Request durations run from milliseconds (/v1/models) to many minutes (hours of audio).
_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
_TTFB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5)
_WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter("voxgate_requests_total", "Requests answered.", ["endpoint", "model", "status"])
REQUEST_DURATION = Histogram(
    "voxgate_request_duration_seconds",
    "From the request's arrival to its last byte (or the client leaving).",
    ["endpoint", "model"],
    buckets=_DURATION_BUCKETS,
)
TIME_TO_FIRST_BYTE = Histogram(
    "voxgate_time_to_first_byte_seconds",
    "From the request's arrival to the first byte of its response body.",
    ["endpoint", "model"],
    buckets=_TTFB_BUCKETS,
)
AUDIO_SECONDS = Counter(
    "voxgate_audio_seconds_total",
    "Seconds of input audio billed (transcriptions, translations) or of speech delivered.",
    ["endpoint", "model"],
)
CHARACTERS = Counter("voxgate_characters_total", "Input characters billed for speech.", ["model"])
REALTIME_FACTOR = Histogram(
    "voxgate_realtime_factor",
    "Engine time / audio duration of one completed local job (below 1: faster than real time).",
    ["model"],
    buckets=_RTF_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "voxgate_engine_queue_depth", "Requests waiting for a local engine's worker.", ["engine"]
)
QUEUE_WAIT = Histogram(
    "voxgate_engine_queue_wait_seconds",
    "Time a request waited for a local engine's worker.",
    ["engine"],
    buckets=_WAIT_BUCKETS,
)
REJECTIONS = Counter(
    "voxgate_rejections_total", "Requests refused by policy or capacity.", ["reason"]
)
for _reason in get_args(RejectionReason):
    REJECTIONS.labels(_reason)  # every reason exported from the start, at 0
UPSTREAM_ATTEMPTS = Counter(
    "voxgate_upstream_attempts_total",
    "Calls to remote providers, by how they ended.",
    ["provider", "outcome"],
)
FALLBACKS = Counter(
    "voxgate_fallbacks_total", "Requests served by a fallback provider, by model.", ["model"]
)


def endpoint_label(path: str) -> str:
    """A bounded ``endpoint`` label for a request path."""
    if path in ENDPOINTS:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{model}"
    if path.startswith("/admin/keys/"):
        return "/admin/keys/{key_id}/revoke" if path.endswith("/revoke") else "/admin/keys/{key_id}"
    return "other"


def observe_request(
    endpoint: str, model: str, status: int, duration_s: float, ttfb_s: float | None
) -> None:
    REQUESTS.labels(endpoint, model, str(status)).inc()
    REQUEST_DURATION.labels(endpoint, model).observe(duration_s)
    if ttfb_s is not None:
        TIME_TO_FIRST_BYTE.labels(endpoint, model).observe(ttfb_s)


def observe_usage(endpoint: str, model: str, *, audio_seconds: float, characters: int) -> None:
    """What a settled request was billed for (called once per request, at settle)."""
    if audio_seconds > 0:
        AUDIO_SECONDS.labels(endpoint, model).inc(audio_seconds)
    if characters > 0:
        CHARACTERS.labels(model).inc(characters)


def observe_realtime_factor(model: str, engine_s: float, audio_s: float) -> None:
    if audio_s > 0:
        REALTIME_FACTOR.labels(model).observe(engine_s / audio_s)


def set_queue_depth(engine: str, waiting: int) -> None:
    QUEUE_DEPTH.labels(engine).set(waiting)


def observe_queue_wait(engine: str, wait_s: float) -> None:
    QUEUE_WAIT.labels(engine).observe(wait_s)


def rejection_reason(code: str | None) -> RejectionReason | None:
    """The rejection an error ``code`` stands for, or None if it is not one."""
    return _REJECTION_CODES.get(code or "")


def count_rejection(reason: RejectionReason) -> None:
    REJECTIONS.labels(reason).inc()


def count_upstream_attempt(provider: str, outcome: UpstreamOutcome) -> None:
    """One call to a remote provider ended this way (for ``providers/`` and ``routing``)."""
    UPSTREAM_ATTEMPTS.labels(provider, outcome).inc()


def count_fallback(model: str) -> None:
    """A request for ``model`` was served by a provider after its first choice failed."""
    FALLBACKS.labels(model).inc()


def exposition() -> tuple[bytes, str]:
    """This process's metrics in Prometheus' text format, and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST

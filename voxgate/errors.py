"""The error tree: every failure voxgate reports, with its HTTP status and OpenAI type and code.

    VoxgateError
    ├── InvalidRequest          400 invalid_request_error  (a field's value; ``param`` names it)
    │   ├── InvalidAudio        400 invalid_request_error / invalid_audio
    │   │   └── AudioTooLong    400 invalid_request_error / audio_too_long
    │   └── UnsupportedModel    400 invalid_request_error / model_not_supported
    ├── AuthenticationFailed    401 invalid_request_error / invalid_api_key
    ├── PermissionDenied        403 invalid_request_error / permission_denied
    ├── NotFound                404 invalid_request_error / not_found
    │   └── ModelNotFound       404 invalid_request_error / model_not_found
    ├── RequestTimeout          408 invalid_request_error / request_timeout
    ├── PayloadTooLarge         413 invalid_request_error / payload_too_large
    ├── RateLimited             429 requests / rate_limit_exceeded        (retryable)
    ├── InsufficientQuota       429 insufficient_quota / insufficient_quota (do not retry)
    ├── Overloaded              503 server_error / server_overloaded      (retryable)
    ├── DependencyUnavailable   503 server_error                          (retryable)
    │   ├── DatabaseUnavailable 503 server_error / database_unavailable
    │   └── LimitsUnavailable   503 server_error / limits_unavailable     (Redis, fail-closed)
    ├── EngineFailed            500 server_error / engine_error           (retryable)
    ├── UpstreamRejected        4xx as the upstream said (its message, type, param)
    ├── UpstreamFailed          502 server_error / upstream_error         (retryable)
    │   ├── UpstreamAuthFailed  502 server_error / upstream_auth_failed   (operator problem)
    │   └── UpstreamUnavailable 503 server_error / upstream_unavailable   (retryable)
    └── InternalError           500 server_error / internal_error         (retryable)

Providers and services raise these; ``api/errors.py`` alone renders them into OpenAI's envelope
``{"error": {"message", "type", "param", "code"}}``. ``retryable`` is what clients (and later the
router's retries) act on, never the message text.
"""

from __future__ import annotations


class VoxgateError(Exception):
    status_code = 400
    type = "invalid_request_error"
    code: str | None = None
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after_s = retry_after_s


class InvalidRequest(VoxgateError):
    code = "invalid_value"


class InvalidAudio(InvalidRequest):
    code = "invalid_audio"


class AudioTooLong(InvalidAudio):
    """Decoded audio past VOXGATE_MAX_AUDIO_SECONDS: a small upload may hold hours of audio."""

    code = "audio_too_long"


class UnsupportedModel(InvalidRequest):
    """A known model used on an endpoint or with an option it does not support."""

    code = "model_not_supported"


class AuthenticationFailed(VoxgateError):
    status_code = 401
    code = "invalid_api_key"


class PermissionDenied(VoxgateError):
    status_code = 403
    code = "permission_denied"


class NotFound(VoxgateError):
    status_code = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class RequestTimeout(VoxgateError):
    """The request body arrived too slowly (or stalled); the connection is closed after this."""

    status_code = 408
    code = "request_timeout"


class PayloadTooLarge(VoxgateError):
    status_code = 413
    code = "payload_too_large"


class RateLimited(VoxgateError):
    status_code = 429
    type = "requests"
    code = "rate_limit_exceeded"
    retryable = True


class InsufficientQuota(VoxgateError):
    """The key's budget cannot cover the request. OpenAI's wording: retrying will not help."""

    status_code = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class Overloaded(VoxgateError):
    status_code = 503
    type = "server_error"
    code = "server_overloaded"
    retryable = True


class DependencyUnavailable(VoxgateError):
    """A service voxgate needs (database, Redis) cannot be reached. Clears when it is back."""

    status_code = 503
    type = "server_error"
    code = "dependency_unavailable"
    retryable = True

    def __init__(self, message: str, *, retry_after_s: int | None = 2) -> None:
        super().__init__(message, retry_after_s=retry_after_s)


class DatabaseUnavailable(DependencyUnavailable):
    code = "database_unavailable"


class LimitsUnavailable(DependencyUnavailable):
    """Redis holds the rate and concurrency limits and is down (``LIMITS_ON_REDIS_DOWN=closed``)."""

    code = "limits_unavailable"


class EngineFailed(VoxgateError):
    status_code = 500
    type = "server_error"
    code = "engine_error"
    retryable = True


class InternalError(VoxgateError):
    """Anything unexpected: a bug, or a dependency (database, Redis) that failed."""

    status_code = 500
    type = "server_error"
    code = "internal_error"
    retryable = True


class UpstreamRejected(VoxgateError):
    """An upstream refused the request itself (400/404/413/422): the client's problem, passed
    on with the upstream's message and never retried or failed over."""

    code = "invalid_value"

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.status_code = status_code
        if type:
            self.type = type


class UpstreamFailed(VoxgateError):
    """Every target of the model failed (or a stream broke after it began)."""

    status_code = 502
    type = "server_error"
    code = "upstream_error"
    retryable = True


class UpstreamAuthFailed(UpstreamFailed):
    """An upstream refused voxgate's own credentials (401/403): the operator must fix the
    provider's key; never shown as the client's auth error."""

    code = "upstream_auth_failed"
    retryable = False


class UpstreamUnavailable(UpstreamFailed):
    """Every target is rate limited, overloaded or has its circuit open: try again later."""

    status_code = 503
    code = "upstream_unavailable"

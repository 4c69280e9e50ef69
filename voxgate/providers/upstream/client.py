"""One OpenAI-compatible upstream: a shared ``httpx.AsyncClient`` and what its answers mean.

One client per provider, for the whole process: connections are pooled and kept alive, so a
request pays no TCP (or TLS) set-up. ``open`` sends a request and returns as soon as the
response head is in, its body still unread, so the caller can stream it on as it arrives.

What an upstream's status means, decided here and nowhere else:

- 2xx: success.
- 401/403: the upstream refused voxgate's own key. An operator problem: the client gets 502
  (never its own auth error), it is logged, and the provider's breaker opens at once.
- 408, 409, 429, 5xx, a connection error or a timeout: the attempt failed and may be retried
  (``AttemptFailed``, with the upstream's Retry-After when it gave one).
- any other 4xx (400, 404, 413, 422, ...): the request itself is wrong. The client gets the
  same status with the upstream's message; it is neither retried nor failed over.

Only the provider's own key is sent; the client's headers (its voxgate key above all) are not.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterable
from typing import Any

import httpx

from voxgate.errors import UpstreamAuthFailed, UpstreamRejected
from voxgate.providers.config import Provider
from voxgate.providers.upstream.breaker import Breaker

log = logging.getLogger("voxgate.upstream")
# httpx logs every request at INFO: one line per attempt is noise here (and costs time).
logging.getLogger("httpx").setLevel(logging.WARNING)

RETRYABLE_STATUSES = frozenset({408, 409, 429})
_ERROR_BODY_MAX = 64 * 1024


class AttemptFailed(Exception):
    """An attempt that may be retried or failed over (nothing reached the client yet)."""

    def __init__(
        self,
        reason: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
        timed_out: bool = False,
        final: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        # Retrying the same attempt cannot help (its parts were retried already): next target.
        self.final = final
        self.timed_out = timed_out
        self.status = status
        self.retry_after_s = retry_after_s


class UpstreamClient:
    def __init__(self, provider: Provider) -> None:
        spec = provider.spec
        self.name = provider.name
        self.spec = spec
        self.breaker = Breaker(spec.breaker_failures, spec.breaker_cooldown_s)
        headers = {**spec.headers, "accept-encoding": "identity"}
        if provider.api_key:
            headers["authorization"] = f"Bearer {provider.api_key}"
        self._client = httpx.AsyncClient(
            base_url=spec.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(spec.timeout_s, connect=spec.connect_timeout_s),
            limits=httpx.Limits(
                max_connections=spec.max_connections,
                max_keepalive_connections=spec.max_connections,
                keepalive_expiry=30.0,
            ),
            follow_redirects=False,
        )

    async def open(
        self,
        path: str,
        *,
        json_body: dict[str, Any] | None = None,
        content: AsyncIterable[bytes] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """POST ``path`` and return the response once its head is in (body unread; the caller
        closes it). Raises AttemptFailed, UpstreamAuthFailed or UpstreamRejected."""
        request = self._client.build_request(
            "POST", path, json=json_body, content=content, headers=headers
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException:
            raise AttemptFailed("timeout", timed_out=True) from None
        except httpx.HTTPError as exc:
            raise AttemptFailed(f"connection error ({type(exc).__name__})") from None
        status = response.status_code
        if status < 300:
            return response
        try:
            body = await _read_bounded(response)
        finally:
            await response.aclose()
        envelope = _envelope(body)
        message = str(envelope.get("message") or body[:500].decode(errors="replace") or status)
        if status in (401, 403):
            log.error(
                "provider %s refused voxgate's key (HTTP %d): %s; check its api_key_env",
                self.name,
                status,
                message,
            )
            raise UpstreamAuthFailed(
                f"The upstream provider '{self.name}' refused this server's credentials. "
                "The server's operator must fix its configuration."
            )
        if status in RETRYABLE_STATUSES or status >= 500 or status < 400:
            raise AttemptFailed(
                f"HTTP {status}", status=status, retry_after_s=_retry_after(response)
            )
        raise UpstreamRejected(
            message,
            status_code=status,
            type=_text(envelope.get("type")),
            param=_text(envelope.get("param")),
            code=_text(envelope.get("code")),
        )

    async def aclose(self) -> None:
        await self._client.aclose()


async def _read_bounded(response: httpx.Response) -> bytes:
    data = bytearray()
    try:
        async for chunk in response.aiter_raw():
            data += chunk
            if len(data) >= _ERROR_BODY_MAX:
                break
    except httpx.HTTPError:
        pass  # an error body cut short still says what it can
    return bytes(data[:_ERROR_BODY_MAX])


def _envelope(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body)
    except ValueError:
        return {}
    error = parsed.get("error") if isinstance(parsed, dict) else None
    return error if isinstance(error, dict) else {}


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _retry_after(response: httpx.Response) -> float | None:
    """``retry-after-ms`` (OpenAI's, precise) or ``Retry-After`` in seconds."""
    for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = response.headers.get(header)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue  # an HTTP date: ignored, the backoff applies
    return None

"""Model id → the chain of targets that may serve it, walked with retries, breakers, fallback.

Every model has a chain (``ModelSpec.chain``): a shipped model's is implicit, the local engines
alone (``local:<model id>``); a model from the config file lists its ``serve`` targets, tried in
order:

- a remote target is skipped at once while its provider's breaker is open;
- a failed attempt (connection error, timeout, 408/409/429/5xx, all before the first byte) is
  retried up to the provider's ``max_retries`` with exponential backoff and full jitter, waiting
  at least the upstream's Retry-After (one longer than ``retry_after_max_s`` moves on at once);
- then the next target; the local engines are a target like any other (``local:whisper-base``);
- a 4xx about the request is raised as it is: another target would refuse it too.

The router only decides who serves; the attempt itself (what is sent, what counts as started)
is the caller's, so there is never a retry once a byte has reached the client.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from voxgate.catalog import CatalogEntry
from voxgate.errors import (
    UnsupportedModel,
    UpstreamAuthFailed,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamUnavailable,
    VoxgateError,
)
from voxgate.metrics import count_fallback, count_upstream_attempt
from voxgate.providers.config import Target
from voxgate.providers.local import LocalProvider
from voxgate.providers.upstream.client import AttemptFailed, UpstreamClient

log = logging.getLogger("voxgate.routing")

T = TypeVar("T")
Attempt = Callable[[Target, UpstreamClient | None], Awaitable[T]]
_BUSY_STATUSES = (429, 503)


def backoff_s(attempt: int, base_s: float, max_s: float) -> float:
    """Full jitter: uniform in [0, min(max, base * 2^attempt)] (AWS's recommendation)."""
    return random.uniform(0.0, min(max_s, base_s * 2**attempt))


class Router:
    def __init__(self, local: LocalProvider, upstreams: dict[str, UpstreamClient]) -> None:
        self.local = local
        self.upstreams = upstreams

    def chain(self, entry: CatalogEntry) -> tuple[Target, ...]:
        """``entry``'s targets in the order they are tried (a shipped model: just itself)."""
        return tuple(Target.parse(text) for text in entry.model.chain)

    async def walk(self, entry: CatalogEntry, attempt: Attempt[T]) -> tuple[Target, T]:
        """Run ``attempt`` on each target in turn until one succeeds; returns which and what.

        Raises UpstreamRejected (the request's fault), or, when every target failed,
        UpstreamAuthFailed / UpstreamUnavailable / UpstreamFailed or the local engine's error.
        """
        chain = self.chain(entry)
        last: BaseException | None = None
        for position, target in enumerate(chain):
            more = position + 1 < len(chain)
            if target.local:
                try:
                    served = await attempt(target, None)
                    return _served(entry, position, target), served
                except VoxgateError as exc:
                    if not (exc.retryable and more):
                        raise
                    log.warning("%s failed for %s (%s); trying the next target", target.label,
                                entry.id, exc.code)  # fmt: skip
                    last = exc
                    continue
            upstream = self.upstreams.get(target.provider)
            if upstream is None:
                raise UnsupportedModel(
                    f"Model '{entry.id}' names provider '{target.provider}', which is not "
                    "configured on this server.",
                    param="model",
                )
            try:
                result = await self.retrying(upstream, target, attempt)
                return _served(entry, position, target), result
            except (AttemptFailed, UpstreamAuthFailed, _CircuitOpen) as exc:
                last = exc
                if more:
                    log.warning("%s failed for %s (%s); falling back to %s", target.label,
                                entry.id, _reason(exc), chain[position + 1].label)  # fmt: skip
        raise _final_error(entry, last)

    async def retrying(
        self, upstream: UpstreamClient, target: Target, attempt: Attempt[T], *, gate: bool = True
    ) -> T:
        """``attempt`` on one target under its provider's retry policy and breaker.

        ``gate=False``: a part of an attempt that already passed the breaker (a piece of long
        audio), so it does not take, or wait for, the half-open probe again.
        """
        spec, breaker = upstream.spec, upstream.breaker
        for number in range(spec.max_retries + 1):
            if gate and not breaker.allow():
                raise _CircuitOpen(upstream.name)
            try:
                result = await attempt(target, upstream)
            except AttemptFailed as exc:
                if exc.final:  # its parts were retried and counted already
                    breaker.released()
                    raise
                breaker.failed(exc.reason)
                count_upstream_attempt(upstream.name, "timeout" if exc.timed_out else "error")
                if number == spec.max_retries:
                    raise
                delay = backoff_s(number, spec.backoff_base_s, spec.backoff_max_s)
                if exc.retry_after_s is not None:
                    if exc.retry_after_s > spec.retry_after_max_s:
                        raise  # waiting that long is worse than the next target
                    delay = max(delay, exc.retry_after_s)
                log.info("%s: %s; retry %d in %.2f s", target.label, exc.reason, number + 1, delay)
                await asyncio.sleep(delay)
                continue
            except UpstreamAuthFailed:
                breaker.failed("credentials refused", trip=True)
                count_upstream_attempt(upstream.name, "error")
                raise
            except UpstreamRejected:
                breaker.succeeded()  # it answered: the provider is up
                count_upstream_attempt(upstream.name, "refused")
                raise
            except BaseException:
                breaker.released()  # cancelled (the client left) or our own failure
                raise
            breaker.succeeded()
            count_upstream_attempt(upstream.name, "success")
            return result
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        for upstream in self.upstreams.values():
            await upstream.aclose()

    def health(self) -> dict[str, dict[str, object]]:
        return {name: upstream.breaker.report() for name, upstream in self.upstreams.items()}


def _served(entry: CatalogEntry, position: int, target: Target) -> Target:
    if position:
        count_fallback(entry.id)
    return target


class _CircuitOpen(Exception):
    def __init__(self, provider: str) -> None:
        super().__init__(f"provider {provider}: circuit open")
        self.provider = provider


def _reason(exc: BaseException) -> str:
    if isinstance(exc, AttemptFailed):
        return exc.reason
    if isinstance(exc, VoxgateError):
        return exc.code or type(exc).__name__
    return str(exc)


def _final_error(entry: CatalogEntry, last: BaseException | None) -> VoxgateError:
    if isinstance(last, VoxgateError):
        return last  # the local engine's own (retryable) error, or the upstream's auth failure
    reason = _reason(last) if last is not None else "no target"
    busy = isinstance(last, _CircuitOpen) or (
        isinstance(last, AttemptFailed) and last.status in _BUSY_STATUSES
    )
    message = f"Every provider that serves model '{entry.id}' failed (last: {reason})."
    if busy:
        return UpstreamUnavailable(message + " Try again shortly.", retry_after_s=1)
    return UpstreamFailed(message)

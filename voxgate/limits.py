"""Per-key rate and concurrency limits: their vocabulary, shared by ``services/limits.py``
(the in-memory limiter) and ``storage/redis.py`` (the shared one), so storage never imports
services.

Rates (requests, audio seconds, characters per minute) are leaky buckets that drain
continuously: a bucket holds what was used, drains at ``limit / 60`` per second, and a request
fits if its cost fits in what is left. The buckets of one ``charge`` call are checked and charged
together, all or nothing. A refusal says when the
request would fit (``Retry-After``); a request bigger than a whole minute's limit never fits and
is refused without one.

Concurrency is a set of leased slots per key; leases are renewed while requests run, so a
replica that dies frees its slots within ``SLOT_LEASE_S``, or at once when it restarts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from voxgate.errors import RateLimited

Dimension = Literal["requests", "audio-seconds", "characters"]
WINDOW_S = 60.0
SLOT_LEASE_S = 30.0

_UNITS: dict[Dimension, str] = {
    "requests": "requests",
    "audio-seconds": "seconds of audio",
    "characters": "characters",
}


@dataclass(frozen=True)
class Charge:
    """Charge ``cost`` against a bucket of ``limit`` per minute."""

    dimension: Dimension
    limit: int
    cost: float


@dataclass(frozen=True)
class RateState:
    """A bucket after a charge, as the ``x-ratelimit-*`` headers report it."""

    dimension: Dimension
    limit: int
    remaining: float
    reset_s: float  # until the bucket is empty again

    @classmethod
    def after(cls, charge: Charge, used: float) -> RateState:
        """The state of ``charge``'s bucket once it holds ``used``."""
        return cls(
            charge.dimension, charge.limit, charge.limit - used, used * WINDOW_S / charge.limit
        )

    def headers(self) -> dict[str, str]:
        return {
            f"x-ratelimit-limit-{self.dimension}": str(self.limit),
            f"x-ratelimit-remaining-{self.dimension}": str(math.floor(max(0.0, self.remaining))),
            f"x-ratelimit-reset-{self.dimension}": go_duration(self.reset_s),
        }


def go_duration(seconds: float) -> str:
    """OpenAI's reset format: ``24ms``, ``1.2s``, ``6m0s``."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    tenths = math.ceil(seconds * 10) / 10
    if tenths < 60:
        return f"{tenths:g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"


def refusal(key_id: str, charge: Charge, used: float, retry_after_s: float | None) -> RateLimited:
    units = _UNITS[charge.dimension]
    message = (
        f"Rate limit reached for {units} per minute on key {key_id}: limit {charge.limit}, "
        f"used {used:g}, requested {charge.cost:g}."
    )
    if retry_after_s is None:
        message += " This request alone exceeds the limit; split it or raise the key's limit."
        too_big = RateLimited(message)
        too_big.retryable = False
        return too_big
    wait = max(1, math.ceil(retry_after_s))
    return RateLimited(f"{message} Please try again in {wait}s.", retry_after_s=wait)


def concurrency_refusal(key_id: str, limit: int) -> RateLimited:
    return RateLimited(
        f"Too many concurrent requests on key {key_id}: limit {limit}. Wait for one to finish.",
        code="concurrency_limit_exceeded",
        retry_after_s=1,
    )


class Limiter(Protocol):
    async def charge(self, key_id: str, charges: Sequence[Charge]) -> list[RateState]:
        """Charge every bucket or none; raise RateLimited naming the first that is full."""
        ...

    async def acquire_slot(self, key_id: str, request_id: str, limit: int) -> None:
        """Take one of ``limit`` concurrency slots; raise RateLimited if all are taken."""
        ...

    async def release_slot(self, key_id: str, request_id: str) -> None:
        """Give a slot back. Never raises: a slot not given back expires with its lease."""
        ...

    async def ping(self) -> bool:
        """Whether the limits' store answers now (for readiness)."""
        ...

    async def close(self) -> None: ...

"""The in-memory limiter: one process's rate buckets and concurrency slots.

The limits' vocabulary (buckets, refusals, the ``Limiter`` protocol) is in ``voxgate/limits.py``,
shared with the Redis limiter in ``storage/redis.py``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from voxgate.limits import (
    SLOT_LEASE_S,
    WINDOW_S,
    Charge,
    Dimension,
    Limiter,
    RateState,
    concurrency_refusal,
    refusal,
)

__all__ = ["SLOT_LEASE_S", "WINDOW_S", "Charge", "Limiter", "MemoryLimiter", "RateState", "refusal"]


class MemoryLimiter:
    """One process's limits. Every method runs without awaiting, so each is atomic."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, Dimension], tuple[float, float]] = {}
        self._slots: dict[str, set[str]] = {}

    async def charge(self, key_id: str, charges: Sequence[Charge]) -> list[RateState]:
        now = time.monotonic()
        levels = []
        for charge in charges:
            used, at = self._buckets.get((key_id, charge.dimension), (0.0, now))
            rate = charge.limit / WINDOW_S
            used = max(0.0, used - (now - at) * rate)
            if used + charge.cost > charge.limit:
                wait = None if charge.cost > charge.limit else (used + charge.cost - charge.limit)
                raise refusal(key_id, charge, used, None if wait is None else wait / rate)
            levels.append(used + charge.cost)
        states = []
        for charge, used in zip(charges, levels, strict=True):
            self._buckets[(key_id, charge.dimension)] = (used, now)
            states.append(RateState.after(charge, used))
        return states

    async def acquire_slot(self, key_id: str, request_id: str, limit: int) -> None:
        slots = self._slots.setdefault(key_id, set())
        if len(slots) >= limit:
            raise concurrency_refusal(key_id, limit)
        slots.add(request_id)

    async def release_slot(self, key_id: str, request_id: str) -> None:
        self._slots.get(key_id, set()).discard(request_id)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        pass

"""Limits shared by every replica: the same buckets and slots as ``MemoryLimiter``, in Redis.

Each check-and-charge is one Lua script, so it is atomic across replicas, and it reads the clock
with Redis ``TIME``, so replicas with skewed clocks still agree. Slot leases are renewed every
``SLOT_LEASE_S / 3`` by one task per process.

When Redis cannot be reached, ``on_down`` decides: ``closed`` refuses what needs a limit with
``LimitsUnavailable`` (503), ``open`` serves it without the shared limits. Either way a warning
is logged at most every ``DOWN_LOG_EVERY_S``, and the next command after Redis is back simply
reconnects. Giving a slot back never fails: its lease expires by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from typing import Literal

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from voxgate.errors import LimitsUnavailable
from voxgate.limits import (
    SLOT_LEASE_S,
    WINDOW_S,
    Charge,
    RateState,
    concurrency_refusal,
    refusal,
)

log = logging.getLogger("voxgate.limits")
DOWN_LOG_EVERY_S = 30.0
OnDown = Literal["closed", "open"]

# KEYS: one hash per bucket. ARGV: window, then limit and cost per bucket.
# Returns {1, used_1, …} when charged, or {0, index, used, wait} (wait -1: never fits).
_CHARGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window = tonumber(ARGV[1])
local levels = {}
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i]); local cost = tonumber(ARGV[2 * i + 1])
  local rate = limit / window
  local state = redis.call('HMGET', KEYS[i], 'used', 'at')
  local used = tonumber(state[1]) or 0
  local at = tonumber(state[2]) or now
  used = math.max(0, used - math.max(0, now - at) * rate)
  if used + cost > limit then
    local wait = -1
    if cost <= limit then wait = (used + cost - limit) / rate end
    return {0, i, tostring(used), tostring(wait)}
  end
  levels[i] = used + cost
end
local out = {1}
for i = 1, #KEYS do
  redis.call('HSET', KEYS[i], 'used', tostring(levels[i]), 'at', tostring(now))
  redis.call('EXPIRE', KEYS[i], math.ceil(window) + 1)
  out[i + 1] = tostring(levels[i])
end
return out
"""

# KEYS[1]: sorted set of request ids scored by lease expiry (ms). ARGV: limit, request id, lease.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS: slot sets; ARGV: lease, then one request id per key. Renews leases still held.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now + tonumber(ARGV[1]), ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], ARGV[1])
end
return #KEYS
"""


def _bucket(key_id: str, dimension: str) -> str:
    return f"voxgate:rate:{key_id}:{dimension}"


def _slots(key_id: str) -> str:
    return f"voxgate:slots:{key_id}"


class RedisLimiter:
    def __init__(self, url: str, *, on_down: OnDown = "closed") -> None:
        # Fail within seconds when Redis is gone, rather than after the OS's TCP timeout.
        self._redis = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=2,
            socket_timeout=5,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        )
        self._on_down = on_down
        self._charge = self._redis.register_script(_CHARGE)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._renew = self._redis.register_script(_RENEW)
        self._held: dict[str, str] = {}  # request id → key id, for lease renewal
        self._renewer: asyncio.Task[None] | None = None
        self._down_logged_at = -math.inf

    async def charge(self, key_id: str, charges: Sequence[Charge]) -> list[RateState]:
        keys = [_bucket(key_id, charge.dimension) for charge in charges]
        args: list[float] = [WINDOW_S]
        for charge in charges:
            args += [charge.limit, charge.cost]
        try:
            result = await self._charge(keys=keys, args=args)
        except RedisError as exc:
            self._down(exc)
            return []  # fail-open: served without this limit
        if int(result[0]) == 0:
            charge = charges[int(result[1]) - 1]
            wait = float(result[3])
            raise refusal(key_id, charge, float(result[2]), None if wait < 0 else wait)
        states = []
        for charge, level in zip(charges, result[1:], strict=True):
            used = float(level)
            states.append(RateState.after(charge, used))
        return states

    async def acquire_slot(self, key_id: str, request_id: str, limit: int) -> None:
        lease_ms = int(SLOT_LEASE_S * 1000)
        try:
            taken = await self._acquire(keys=[_slots(key_id)], args=[limit, request_id, lease_ms])
        except RedisError as exc:
            self._down(exc)
            return  # fail-open: no slot to hold or renew
        if not taken:
            raise concurrency_refusal(key_id, limit)
        self._held[request_id] = key_id
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew_forever())

    async def release_slot(self, key_id: str, request_id: str) -> None:
        """Best effort: if Redis is down the lease expires within ``SLOT_LEASE_S``."""
        self._held.pop(request_id, None)
        try:
            await self._redis.zrem(_slots(key_id), request_id)
        except RedisError as exc:
            self._log_down(
                f"could not give back a concurrency slot ({type(exc).__name__}); "
                f"its lease expires within {SLOT_LEASE_S:g}s"
            )

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except RedisError:
            return False

    def _down(self, exc: RedisError) -> None:
        """Apply the outage policy: raise LimitsUnavailable (closed) or return (open)."""
        if self._on_down == "open":
            self._log_down(
                f"Redis is unreachable ({type(exc).__name__}): serving without rate and "
                "concurrency limits (VOXGATE_LIMITS_ON_REDIS_DOWN=open)"
            )
            return
        self._log_down(
            f"Redis is unreachable ({type(exc).__name__}): refusing limited requests with 503 "
            "(VOXGATE_LIMITS_ON_REDIS_DOWN=closed)"
        )
        raise LimitsUnavailable(
            "Rate limits cannot be checked right now. Please retry shortly."
        ) from exc

    def _log_down(self, message: str) -> None:
        now = time.monotonic()
        if now - self._down_logged_at >= DOWN_LOG_EVERY_S:
            self._down_logged_at = now
            log.warning(message)

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(SLOT_LEASE_S / 3)
            held = list(self._held.items())
            if not held:
                continue
            try:
                lease_ms = int(SLOT_LEASE_S * 1000)
                keys = [_slots(key_id) for _, key_id in held]
                await self._renew(keys=keys, args=[lease_ms, *(rid for rid, _ in held)])
            except RedisError as exc:
                self._log_down(f"renewing concurrency leases in Redis failed: {type(exc).__name__}")
            except Exception:
                log.exception("renewing concurrency leases in Redis failed")

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        await self._redis.aclose()

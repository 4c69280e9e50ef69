"""Per-provider circuit breaker and recent error rate.

After ``failures`` consecutive failed attempts the breaker opens: requests skip the provider at
once instead of each waiting for its timeout. After ``cooldown_s`` it is half-open: one request
is let through as a probe; its success closes the breaker, its failure opens it again. An
upstream that refuses voxgate's own key (401/403) opens it at once: retrying cannot help.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Literal

State = Literal["closed", "open", "half_open"]
_WINDOW_S = 60.0


class Breaker:
    def __init__(self, failures: int, cooldown_s: float) -> None:
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._consecutive = 0
        self._opened_at: float | None = None
        self._probing = False
        self._outcomes: deque[tuple[float, bool]] = deque()  # (time, failed) in the window
        self.last_error: str | None = None

    @property
    def state(self) -> State:
        if self._opened_at is None:
            return "closed"
        if time.monotonic() - self._opened_at >= self.cooldown_s:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """Whether an attempt may go to the provider now (taking the probe when half-open)."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def succeeded(self) -> None:
        self._record(failed=False)
        self._consecutive = 0
        self._opened_at = None
        self._probing = False

    def failed(self, reason: str, *, trip: bool = False) -> None:
        self._record(failed=True)
        self.last_error = reason
        self._consecutive += 1
        if trip or self._probing or self._consecutive >= self.failures:
            self._opened_at = time.monotonic()
        self._probing = False

    def released(self) -> None:
        """An attempt that ended with neither verdict (the client left): free the probe."""
        self._probing = False

    def error_rate(self) -> float:
        self._expire()
        if not self._outcomes:
            return 0.0
        return sum(failed for _, failed in self._outcomes) / len(self._outcomes)

    def report(self) -> dict[str, object]:
        """What /health shows for this provider."""
        self._expire()
        return {
            "state": self.state,
            "error_rate": round(self.error_rate(), 3),
            "attempts_last_minute": len(self._outcomes),
            "consecutive_failures": self._consecutive,
            "last_error": self.last_error,
        }

    def _record(self, *, failed: bool) -> None:
        self._outcomes.append((time.monotonic(), failed))
        self._expire()

    def _expire(self) -> None:
        cutoff = time.monotonic() - _WINDOW_S
        while self._outcomes and self._outcomes[0][0] < cutoff:
            self._outcomes.popleft()

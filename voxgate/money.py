"""Money is counted in integer micro-USD everywhere it is stored or summed, so totals are exact."""

from __future__ import annotations

MICROS_PER_USD = 1_000_000


def usd_to_micros(usd: float) -> int:
    return round(usd * MICROS_PER_USD)


def micros_to_usd(micros: int) -> float:
    return micros / MICROS_PER_USD

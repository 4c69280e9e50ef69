"""Keep the heap from holding on to what the engines free.

glibc serves a large ``malloc`` with its own ``mmap`` and unmaps it on ``free``, but only above
a threshold that it raises, by default, to the size of every mapped block freed (up to 32 MB),
and the trim threshold with it (to 64 MB). After the first real inference (Silero VAD's and the
feature extractor's buffers, CTranslate2's activations), blocks of up to 32 MB came from the
heap and stayed there freed but resident: a server 100 to 135 MB above its idle RSS for good, and
as much more at every peak (docs/benchmarks.md, "Long audio"). ``bound_heap`` fixes the mmap
threshold where glibc starts it, which turns that adjustment off for both.

``release_memory`` (``malloc_trim(0)``) returns what is free after big jobs anyway. Other C
libraries (musl) have neither call and keep their own policy: both are then no-ops.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable

_M_MMAP_THRESHOLD = -3  # mallopt(3)'s parameter, from glibc's malloc.h
#: glibc's own starting value: blocks from this size are mapped on their own, so unmapped
#: (returned to the OS) when freed.
MMAP_THRESHOLD = 128 * 1024


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def bound_heap() -> bool:
    """Fix glibc's mmap threshold (see the module docstring); False where there is no
    ``mallopt`` or the operator already chose the thresholds (``MALLOC_MMAP_THRESHOLD_``,
    ``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES``): their choice is kept."""
    chosen = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if any(name in os.environ for name in chosen) or "_threshold=" in tunables:
        return False
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def release_memory() -> bool:
    """Return free heap pages to the OS (blocking, milliseconds); False where unsupported."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True

"""Give freed heap memory back to the operating system after big jobs.

Decoding hours of audio and running Whisper on it leave glibc's heap full of free but mapped
pages, so a server's RSS stayed at gigabytes after the job. ``malloc_trim(0)`` returns them;
Whisper calls it after each long window's VAD and after each long window. (Fixing glibc's mmap
threshold with ``mallopt`` instead kept the heap as small but doubled the page faults and cost
Whisper 10 to 30 % more CPU: docs/benchmarks.md, "Long audio".)
Other C libraries (musl) have no such call and keep their own policy: it is then a no-op.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


def release_memory() -> bool:
    """Return free heap pages to the OS (blocking, milliseconds); False where unsupported."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True

"""Giving freed memory back to the operating system after a bulk load."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

_trim: Callable[[int], int] | None
try:
    # glibc keeps freed heap pages; after parsing 100,000 lines the
    # transient records would otherwise stay resident (about 30 MB).
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _trim = _libc.malloc_trim
except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
    _trim = None


def release_free_memory() -> None:
    """Return freed heap memory to the OS, where the C library allows it."""
    if _trim is not None:
        _trim(0)

"""After a bulk load: giving freed memory back to the operating system, and
keeping what stays out of the garbage collector's way."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
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


# Whether settle_long_lived freezes: only in the scheduler's own process,
# which turns it on once start-up is done (scheduler.tap.settle_collector).
# Tests run many schedulers in one process, and a frozen object's cycles
# are never collected.
_settling = False


def settle_after_loads(on: bool = True) -> None:
    """Let :func:`settle_long_lived` freeze (*on*) or do nothing."""
    global _settling
    _settling = on


def collect_young() -> None:
    """Collect the cyclic garbage of the two young generations (cheap: few
    objects), so that a :func:`settle_long_lived` soon after freezes little of it."""
    if _settling:
        gc.collect(1)


def settle_long_lived() -> None:
    """Take every object alive now out of the cyclic collector's passes (``gc.freeze``).

    For after a bulk load (tasks.db at start-up, ``LOAD``): a million tasks,
    and the dicts of the book and the engine that hold them, otherwise sit
    in the collector's generations, and every pass that reaches them walks
    a million objects: 20-75 ms for a pass of the young generations while
    a new book's dict is young, 380-640 ms for a full one
    (docs/performance.md, "A million tasks").  Frozen objects are still freed by reference counting
    when they go (a later ``LOAD`` replaces the tasks and frees them); what
    is lost is the collection of reference cycles among the objects alive
    at this moment that become garbage later (a connection open now and
    closed later: a few KB each).  ``LOAD`` is an operator's action, not a
    per-request one, so that stays small; never call this per request.
    Nothing unless :func:`settle_after_loads` turned it on.
    """
    if _settling:
        gc.freeze()

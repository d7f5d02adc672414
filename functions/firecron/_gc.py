"""How firecron eases the cyclic garbage collector on its two heavy paths.

:func:`gc_eased` (a dispatcher tick): gen-2 collections walking the whole pre-tick
heap cost a large share of a big tick (bench/fanout.py measures it), so the pre-tick
heap is frozen and young objects are collected less often.

:func:`gc_paused` (reading or applying a large schedules file). Why: reading a schedules file of 100,000 entries, or planning an apply of as many,
allocates millions of objects that all stay alive until the end. Every collection
pass over them finds nothing, and those passes were a third of ``validate``'s time.
Reference counting still frees everything that is dropped; only reference cycles
wait for the collector, which runs again as usual once the pause ends.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["gc_eased", "gc_paused"]


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic collector for the ``with`` block; restore its previous state after.

    Nested pauses are fine: only the outermost one re-enables it.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_TICK_GC_THRESHOLD = 10_000
_tick_gc_depth = 0
_tick_gc_saved = gc.get_threshold()


@contextlib.contextmanager
def gc_eased() -> Iterator[None]:
    """Collect garbage less eagerly inside the block; restored when the outermost one ends.

    The heap as it is on entry is frozen (never scanned) and young objects are collected
    every 10,000 allocations instead of 700. Nesting is fine (ticks may overlap in one
    process).
    """
    global _tick_gc_depth, _tick_gc_saved
    _tick_gc_depth += 1
    if _tick_gc_depth == 1:
        _tick_gc_saved = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(_TICK_GC_THRESHOLD, *_tick_gc_saved[1:])
    try:
        yield
    finally:
        _tick_gc_depth -= 1
        if _tick_gc_depth == 0:
            gc.set_threshold(*_tick_gc_saved)
            gc.unfreeze()

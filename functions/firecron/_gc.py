"""Pausing the cyclic garbage collector while a large structure is built.

Why: reading a schedules file of 100,000 entries, or planning an apply of as many,
allocates millions of objects that all stay alive until the end. Every collection
pass over them finds nothing, and those passes were a third of ``validate``'s time.
Reference counting still frees everything that is dropped; only reference cycles
wait for the collector, which runs again as usual once the pause ends.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["gc_paused"]


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

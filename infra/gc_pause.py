"""Holding Python's cyclic garbage collector over a stretch of work, shared by every part that does so.

Layer: infra (imports nothing of ours). At fleet size three stretches allocate tens of thousands of objects
that all survive them: building a simulated fleet's snapshot (`sandbox.cluster`), decoding a fleet's
Prometheus answers (`tools.prometheus_source`), and the daemon's tick (`opsmedic.daemon.loop`), which
collects between ticks instead, off the path from a reading to a decision. CPython's collector runs every
700 allocations and walks the young survivors each time; held, it runs once afterwards, with its counts.

The pause is counted across threads: stretches overlap (a Prometheus read in a worker thread inside a tick),
and the collector comes back only when the last of them ends, and only if it was on before the first.
Reference counting still frees everything that is not a cycle while the collector waits.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_holders = 0
_was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic collector held for the block (counted: overlapping blocks in any thread nest)."""
    global _holders, _was_enabled
    with _lock:
        if _holders == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _was_enabled:
                gc.enable()

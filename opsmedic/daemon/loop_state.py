"""What the daemon's loop thread shares with every other thread: its flags, its latest snapshot, its mailbox.

Layer: interfaces (`opsmedic.daemon`); standard library and `core.domain` only. The loop (`loop`) writes the
flags; HTTP handlers, the alert thread and Slack's threads read them, and hand the loop work through
`call_in_loop`, so that the world (the simulator in particular) is touched by one thread only.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from core.domain import ClusterSnapshot

LOOP_CALL_TIMEOUT_S = 60.0


class LoopState:
    """The loop's state as the other threads see it. Plain attributes: each has one writer (the loop, or
    the service's start/stop), and a reader that sees an older value only sees the previous tick's."""

    def __init__(self) -> None:
        self.acting = False  # this replica leads: it starts and resumes graphs
        self.started = False
        self.stopping = False
        self.ticks = 0
        self.last_tick_wall: float | None = None
        self.last_tick_ms: float | None = None
        self.source_ok: bool | None = None
        self.source_error: str | None = None
        self.latest_snapshot: ClusterSnapshot | None = None
        self.stop_event = threading.Event()
        self.wake_event = threading.Event()
        self.thread: threading.Thread | None = None
        self._calls: queue.Queue[tuple[Callable[[], Any], Future[Any]]] = queue.Queue()

    def wake(self) -> None:
        self.wake_event.set()

    def call_in_loop(self, fn: Callable[[], Any], timeout_s: float = LOOP_CALL_TIMEOUT_S) -> Any:
        """Run `fn` on the loop thread and return its result: the world (the simulator in particular) is
        touched by one thread only, so a chat request that acts is serialised with the graphs."""
        if threading.current_thread() is self.thread or self.thread is None:
            return fn()
        fut: Future[Any] = Future()
        self._calls.put((fn, fut))
        self.wake_event.set()
        return fut.result(timeout=timeout_s)

    def run_calls(self, *, cancel: bool = False) -> None:
        """On the loop thread: run what other threads handed over (refuse it when shutting down)."""
        while True:
            try:
                fn, fut = self._calls.get_nowait()
            except queue.Empty:
                return
            if cancel:
                fut.set_exception(RuntimeError("the daemon is shutting down"))
                continue
            try:
                fut.set_result(fn())
            except Exception as exc:
                fut.set_exception(exc)

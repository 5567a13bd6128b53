"""Polling helper shared by the tests that wait on a server or a background loop (a module with a unique
name, so that it imports from any test folder)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(pred: Callable[[], Any], timeout: float = 15.0, every: float = 0.05, what: str = "condition") -> Any:
    """Call `pred` every `every` seconds until it returns something truthy, and return that; fail the test
    naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        out = pred()
        if out:
            return out
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)

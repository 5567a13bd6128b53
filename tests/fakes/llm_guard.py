"""A guard that refuses real model requests: every HTTP request must go to 127.0.0.1 / localhost.

Layer: test support (`tests/fakes`, outside the product; standard library plus httpx, imported lazily). Tests turn
it on with an autouse fixture (`tests/chat/conftest.py`, `tests/agents/llm/conftest.py`), so that a
mis-set `OPSMEDIC_LLM_BASE_URL` or `OPENAI_API_KEY` on a developer's machine can never send a prompt —
and its telemetry — to a real provider, or spend money, from a test run.

It works at the one choke point every client shares: `httpx.Client.send` / `AsyncClient.send` (and the
same methods of `httpx2`, which newer `openai` releases use). A request to any other host raises
`RealModelRequestRefused` before a socket is opened. `check_base_url` is the same rule for a URL, so
code can refuse early with a clear message.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
_ENV_VARS = ("OPSMEDIC_LLM_BASE_URL", "OPENAI_BASE_URL", "OPENAI_API_BASE")


class RealModelRequestRefused(RuntimeError):
    """A request to a non-local host was attempted while the guard is on."""


def is_local(url: str) -> bool:
    host = (urlsplit(url if "//" in url else f"//{url}").hostname or "").lower()
    return host in LOCAL_HOSTS


def check_base_url(url: str | None) -> None:
    """Raise unless `url` is unset or local."""
    if url and not is_local(url):
        raise RealModelRequestRefused(
            f"refusing a real model endpoint in tests: {url} (only 127.0.0.1/localhost is allowed; "
            "use fakes.fake_openai.FakeOpenAI)")


_lock = threading.Lock()
_depth = 0
_saved: list[tuple[Any, str, Callable[..., Any]]] = []


def _client_classes() -> Iterator[tuple[Any, bool]]:
    for mod_name in ("httpx", "httpx2"):
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        yield mod.Client, False
        yield mod.AsyncClient, True


def _wrap(original: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
    def check(request: Any) -> None:
        url = str(getattr(request, "url", ""))
        if not is_local(url):
            raise RealModelRequestRefused(f"refusing a request to {url}: tests may only reach 127.0.0.1")

    if is_async:
        async def send_async(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            check(request)
            return await original(self, request, *args, **kwargs)

        return send_async

    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        check(request)
        return original(self, request, *args, **kwargs)

    return send


def enable() -> None:
    """Turn the guard on (nested calls are counted; `disable` undoes one `enable`)."""
    global _depth
    for var in _ENV_VARS:
        check_base_url(os.environ.get(var))
    with _lock:
        _depth += 1
        if _depth > 1:
            return
        for cls, is_async in _client_classes():
            original = cls.send
            _saved.append((cls, "send", original))
            cls.send = _wrap(original, is_async)


def disable() -> None:
    global _depth
    with _lock:
        if _depth == 0:
            return
        _depth -= 1
        if _depth:
            return
        while _saved:
            cls, name, original = _saved.pop()
            setattr(cls, name, original)


def enabled() -> bool:
    return _depth > 0


@contextmanager
def guarded() -> Iterator[None]:
    """`with guarded(): ...` — the guard on for the block (what the test fixtures use)."""
    enable()
    try:
        yield
    finally:
        disable()

"""The daemon's edge: who may call what, how big a body may be, and what a JSON body may contain.

Layer: interfaces (`opsmedic.daemon`); Starlette/ASGI only. One pure ASGI middleware (`Edge`) sits in front
of every route of the daemon's app (and the console mounted on it), so that no handler has to remember a
check and the hostile-input suite (`tests/security/`) can hold the whole edge to one rule set:

- **Authentication, before any body is read.** `POST /alerts/alertmanager` needs
  `Authorization: Bearer <token>` with a token from `OPSMEDIC_ALERT_TOKENS` (503 "alert intake is not
  configured" without one: there is no unauthenticated intake). Reads (`/api/*`, `/console/api/*`,
  `/console/events`, `/docs`, `/openapi.json`) need an API token (`OPSMEDIC_API_TOKENS`) or a console
  session, unless `OPSMEDIC_PUBLIC_READ=true`. `/healthz`, `/readyz`, `/metrics`, the console's pages and
  its sign-in stay open; `/slack/events` is authenticated by Slack's signature in its handler. Tokens are
  compared in constant time, each against every configured token.
- **Throttling of wrong tokens, per source address** (`Throttle`): 10 failures a minute, then 429 for a
  minute. Failures are counted per address, so nobody is locked out by failures from elsewhere; and a
  token that already succeeded from the locked address keeps working there (a client behind the same NAT
  as the guesser is not locked out), while a new token from it is not even checked (no oracle to guess with).
- **Body size, counted as it arrives** (chunked bodies included): the body is read incrementally and the
  request answered 413 as soon as it passes the route's limit; nothing beyond the limit is buffered.
- **JSON hygiene** (`check_json`): a JSON body must be UTF-8, at most `MAX_JSON_DEPTH` deep, without
  NaN/Infinity, lone surrogates or control characters (tab, newline and carriage return excepted);
  otherwise 400 naming where. The alert route does its own, more forgiving check
  (`tools.alertmanager.parse_webhook` replaces bad characters and says so), because dropping a real
  alert over a stray control character would be worse than storing a replacement character. The checks
  themselves live in `infra.json_hygiene`, which the console's views share.
- **The alert port.** With `--alerts-port`, the alert route answers only there, and only it (and the
  health routes) answer there, so that a NetworkPolicy (which sees ports, not paths) can admit
  Alertmanager's namespace to it alone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from infra.json_hygiene import (
    MAX_JSON_DEPTH,
    JsonRefused,
    check_json,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ALERT_PATH = "/alerts/alertmanager"
SLACK_PATH = "/slack/events"
MAX_ALERT_BODY = 4 * 1024 * 1024
MAX_SLACK_BODY = 1024 * 1024
MAX_BODY = 256 * 1024  # every other route: approvals, chat, sign-in carry a few kilobytes at most
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# the console's pages and sign-in are open (one must reach the sign-in form); its data is not
CONSOLE_OPEN = frozenset({"/console", "/console/api/session", "/console/api/logout"})
READ_PREFIXES = ("/api/", "/console/api/", "/console/events")
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})


# ------------------------------------------------------------------------------------------- tokens


def match_token(given: str, tokens: Iterable[str]) -> str | None:
    """The configured token equal to `given`, compared in constant time against every one (so the time taken
    says nothing about which token, or how much of one, matched)."""
    # digests of equal length: compare_digest's time then says nothing about the tokens' lengths either
    raw = hashlib.sha256(given.encode("utf-8", "replace")).digest()
    found = None
    for token in tokens:
        if hmac.compare_digest(raw, hashlib.sha256(token.encode()).digest()):
            found = token
    return found


def bearer(headers: Mapping[str, str]) -> str | None:
    """The bearer token of an `Authorization` header; None when absent or another scheme."""
    value = headers.get("authorization")
    if not value:
        return None
    scheme, _, cred = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not cred.strip():
        return None
    return cred.strip()


# ----------------------------------------------------------------------------------------- throttle


@dataclass
class Throttle:
    """Wrong tokens per source address: `limit` failures within `window_s` lock the address for `lock_s`.

    While an address is locked, only tokens that already succeeded from it are checked (and pass); any
    other token gets 429 unchecked. Bounded memory: at most `max_addresses` addresses are tracked."""

    limit: int = 10
    window_s: float = 60.0
    lock_s: float = 60.0
    max_addresses: int = 10_000
    clock: Callable[[], float] = time.monotonic
    _fails: dict[str, list[float]] = field(default_factory=dict)
    _locked: dict[str, float] = field(default_factory=dict)
    _good: dict[str, set[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    refused: int = 0
    failures: int = 0

    @staticmethod
    def _digest(token: str) -> str:
        return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()

    def locked(self, addr: str, token: str | None) -> bool:
        """True when `addr` is locked out and `token` is not one that succeeded from it before."""
        now = self.clock()
        with self._lock:
            until = self._locked.get(addr)
            if until is None:
                return False
            if now >= until:
                del self._locked[addr]
                return False
            if token is not None and self._digest(token) in self._good.get(addr, ()):
                return False
            self.refused += 1
            return True

    def failed(self, addr: str) -> None:
        now = self.clock()
        with self._lock:
            self.failures += 1
            if len(self._fails) >= self.max_addresses and addr not in self._fails:
                self._fails = {a: t for a, t in self._fails.items() if t and now - t[-1] < self.window_s}
                if len(self._fails) >= self.max_addresses:
                    self._fails.clear()  # a spray from very many addresses: forget rather than grow
            recent = [t for t in self._fails.get(addr, []) if now - t < self.window_s]
            recent.append(now)
            self._fails[addr] = recent
            if len(recent) >= self.limit:
                self._locked[addr] = now + self.lock_s
                self._fails.pop(addr, None)

    def succeeded(self, addr: str, token: str) -> None:
        with self._lock:
            good = self._good.setdefault(addr, set())
            if len(good) < 64:
                good.add(self._digest(token))
            if len(self._good) > self.max_addresses:
                self._good.clear()


# ----------------------------------------------------------------------------------------- the edge


@dataclass
class EdgePolicy:
    """What the edge enforces, read live from callables so that tests and reloads see one truth."""

    alert_tokens: Callable[[], list[str]]
    api_tokens: Callable[[], Mapping[str, str]]
    public_read: Callable[[], bool]
    alerts_port: Callable[[], int | None] = lambda: None
    session_ok: Callable[[Scope], bool] = lambda scope: False
    throttle: Throttle = field(default_factory=Throttle)
    max_body: int = MAX_BODY
    max_alert_body: int = MAX_ALERT_BODY
    max_slack_body: int = MAX_SLACK_BODY
    max_json_depth: int = MAX_JSON_DEPTH
    counters: dict[str, int] = field(default_factory=dict)

    def count(self, what: str) -> None:
        self.counters[what] = self.counters.get(what, 0) + 1


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in scope.get("headers") or []:
        out[k.decode("latin-1").lower()] = v.decode("latin-1")
    return out


async def _answer(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
           (b"cache-control", b"no-store")]
    for k, v in (headers or {}).items():
        raw.append((k.lower().encode(), v.encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


def _kind(path: str) -> str:
    """open | alert | slack | read | console-open | other."""
    if path in OPEN_PATHS:
        return "open"
    if path == ALERT_PATH:
        return "alert"
    if path == SLACK_PATH:
        return "slack"
    if path in DOCS_PATHS or path.startswith(READ_PREFIXES):
        return "console-open" if path in CONSOLE_OPEN else "read"
    if path == "/console" or path.startswith("/console/"):
        return "console-open"
    return "other"


class Edge:
    """The ASGI middleware (see the module docstring)."""

    def __init__(self, app: ASGIApp, policy: EdgePolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        p = self.policy
        path = str(scope.get("path") or "/")
        kind = _kind(path)
        headers = _headers(scope)
        addr = (scope.get("client") or ("?", 0))[0] or "?"

        # the alert port serves the alert route (and health) only; the main port no longer serves it
        alerts_port = p.alerts_port()
        if alerts_port is not None:
            local = (scope.get("server") or (None, None))[1]
            on_alert_port = local == alerts_port
            if on_alert_port and kind not in ("alert", "open"):
                await _answer(send, 404, {"error": "the alert port serves POST /alerts/alertmanager only"})
                return
            if not on_alert_port and kind == "alert":
                await _answer(send, 404, {"error": "alerts are taken on the alert port (--alerts-port)"})
                return

        refusal = self._authenticate(kind, headers, addr, scope)
        if refusal is not None:
            status, reply, extra = refusal
            p.count(f"refused_{status}")
            await _answer(send, status, reply, extra)
            return

        limit = p.max_alert_body if kind == "alert" else p.max_slack_body if kind == "slack" else p.max_body
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await _answer(send, 400, {"error": "invalid Content-Length", "field": "headers.content-length"})
                return
            if int(declared) > limit:
                p.count("refused_413")
                await _answer(send, 413, {"error": f"body larger than {limit} bytes", "field": "body"},
                              {"connection": "close"})
                return
        # read the body as it arrives and stop at the limit (a chunked body has no Content-Length to trust)
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away: nothing to answer
            chunk = message.get("body", b"") or b""
            size += len(chunk)
            if size > limit:
                p.count("refused_413")
                await _answer(send, 413, {"error": f"body larger than {limit} bytes", "field": "body"},
                              {"connection": "close"})
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        del chunks

        if body and kind not in ("alert", "slack") and self._is_json(headers, body):
            try:
                check_json(body, max_depth=p.max_json_depth)
            except JsonRefused as exc:
                p.count("refused_400")
                await _answer(send, 400, {"error": exc.what, "field": exc.where})
                return

        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect notice, as the server sends it

        await self.app(scope, replay, send)

    @staticmethod
    def _is_json(headers: Mapping[str, str], body: bytes) -> bool:
        ctype = headers.get("content-type", "").lower()
        return "json" in ctype or not ctype or body.lstrip()[:1] in (b"{", b"[")

    def _authenticate(self, kind: str, headers: Mapping[str, str], addr: str,
                      scope: Scope) -> tuple[int, dict[str, Any], dict[str, str] | None] | None:
        p = self.policy
        if kind == "alert":
            tokens = p.alert_tokens()
            if not tokens:
                return 503, {"error": "alert intake is not configured (OPSMEDIC_ALERT_TOKENS)"}, None
            return self._check(bearer(headers), tokens, addr, "an alert token (OPSMEDIC_ALERT_TOKENS)")
        if kind != "read":
            return None
        given = bearer(headers)
        if given is None and (p.public_read() or p.session_ok(scope)):
            return None
        if given is None:
            return 401, {"error": "authentication required: a bearer token from OPSMEDIC_API_TOKENS, or sign in "
                                  "to the console"}, {"www-authenticate": "Bearer"}
        return self._check(given, list(p.api_tokens()), addr, "an API token (OPSMEDIC_API_TOKENS)")

    def _check(self, given: str | None, tokens: list[str], addr: str,
               what: str) -> tuple[int, dict[str, Any], dict[str, str] | None] | None:
        p = self.policy
        if p.throttle.locked(addr, given):
            return 429, {"error": "too many wrong tokens from this address; wait a minute"}, {"retry-after": "60"}
        if given is None:
            return 401, {"error": f"a bearer token is required: {what}"}, {"www-authenticate": "Bearer"}
        if match_token(given, tokens) is None:
            p.throttle.failed(addr)
            return 401, {"error": "unknown token"}, {"www-authenticate": 'Bearer error="invalid_token"'}
        p.throttle.succeeded(addr, given)
        return None

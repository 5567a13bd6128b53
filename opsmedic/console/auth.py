"""Who is looking at the console, and proof that a state-changing request came from the console itself.

Layer: interfaces (`opsmedic.console`).

**Sign-in.** An `Authenticator` turns a credential into a `Principal`. The one shipped is
`TokenAuthenticator`: the same `OPSMEDIC_API_TOKENS` map (`token:user,...`) that the daemon's
`POST /api/approvals/{id}` accepts as bearer tokens, compared in constant time. An OIDC sign-in plugs in
through the same seam (an authenticator whose `authenticate` validates an ID token — or an authorization
code exchanged server-side — and returns the principal); the session and CSRF handling do not change.

**Sessions.** A successful sign-in creates a server-side session (a 256-bit random id, kept in memory,
idle timeout and absolute lifetime) whose id travels in an `HttpOnly; SameSite=Strict` cookie (`Secure`
when the console is served over HTTPS). Restarting the process signs everybody out.

**CSRF.** Double-submit, checked server-side: every page load gets a random CSRF token in a readable
cookie; every state-changing request (sign-in, sign-out, approve, reject) must repeat it in the
`X-CSRF-Token` header, and once signed in the token must also be the one bound to the session (rotated at
sign-in). A missing or wrong token is a 403. SameSite=Strict and an Origin check add defence in depth.

**Roles.** Reading needs a signed-in user or an API bearer token, unless the console is mounted with
`public_read` (the daemon's `OPSMEDIC_PUBLIC_READ=true`, meant for loopback demos). Acting needs a signed-in principal,
and the approval store decides whether that principal is an approver of the request (the policy's approver
list) — the console shows the buttons only to them, and the store refuses everyone else.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

SESSION_COOKIE = "opsmedic_session"
CSRF_COOKIE = "opsmedic_csrf"
CSRF_HEADER = "X-CSRF-Token"


@dataclass(frozen=True)
class Principal:
    """A signed-in person: `user` is the name the approval store knows (e.g. a Slack user id)."""

    user: str
    display: str = ""
    method: str = "token"


@runtime_checkable
class Authenticator(Protocol):
    """Turns a credential into a principal (None: refused). `method` names the sign-in the page offers."""

    method: str

    def authenticate(self, credential: str) -> Principal | None: ...


class TokenAuthenticator:
    """Sign-in with an API token (the `OPSMEDIC_API_TOKENS` map); read live so that a reload takes effect."""

    method = "token"

    def __init__(self, tokens: Callable[[], Mapping[str, str]] | Mapping[str, str]) -> None:
        self._tokens = tokens

    def _map(self) -> Mapping[str, str]:
        return self._tokens() if callable(self._tokens) else self._tokens

    def authenticate(self, credential: str) -> Principal | None:
        given = credential.strip().encode()
        found: str | None = None
        for token, user in self._map().items():  # constant time per token, and every token compared
            if hmac.compare_digest(given, token.encode()):
                found = user
        return Principal(user=found, display=found) if found is not None else None

    def configured(self) -> bool:
        return bool(self._map())


@dataclass
class Session:
    id: str
    principal: Principal
    csrf: str
    created: float
    seen: float


@dataclass
class SessionStore:
    """In-memory sessions with an idle timeout and an absolute lifetime."""

    idle_s: float = 8 * 3600.0
    max_age_s: float = 24 * 3600.0
    clock: Callable[[], float] = time.monotonic
    _sessions: dict[str, Session] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def create(self, principal: Principal) -> Session:
        now = self.clock()
        s = Session(id=secrets.token_urlsafe(32), principal=principal, csrf=new_csrf_token(), created=now, seen=now)
        with self._lock:
            self._sweep(now)
            self._sessions[s.id] = s
        return s

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        now = self.clock()
        with self._lock:
            s = self._sessions.get(session_id)
            if s is None:
                return None
            if now - s.seen > self.idle_s or now - s.created > self.max_age_s:
                del self._sessions[session_id]
                return None
            s.seen = now
            return s

    def delete(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._sessions.pop(session_id, None)

    def _sweep(self, now: float) -> None:
        dead = [k for k, s in self._sessions.items()
                if now - s.seen > self.idle_s or now - s.created > self.max_age_s]
        for k in dead:
            del self._sessions[k]

    def __len__(self) -> int:
        return len(self._sessions)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_ok(cookie: str | None, header: str | None, session: Session | None) -> bool:
    """The double-submit check: the header repeats the cookie, and (signed in) it is the session's token."""
    if not cookie or not header:
        return False
    if not hmac.compare_digest(cookie.encode(), header.encode()):
        return False
    if session is not None and not hmac.compare_digest(header.encode(), session.csrf.encode()):
        return False
    return True


class SignInThrottle:
    """At most `limit` failed sign-ins per client address per `window_s` (guessing tokens is slow work)."""

    def __init__(self, limit: int = 10, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._fails: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, who: str) -> bool:
        now = self._clock()
        with self._lock:
            recent = [t for t in self._fails.get(who, []) if now - t < self.window_s]
            self._fails[who] = recent
            return len(recent) >= self.limit

    def failed(self, who: str) -> None:
        with self._lock:
            self._fails.setdefault(who, []).append(self._clock())
            if len(self._fails) > 10_000:  # bounded memory under a spray from many addresses
                self._fails.clear()

"""The console's routes, its background recorder and its live-update stream, mounted on the daemon's app.

Layer: interfaces (`opsmedic.console`). Everything lives under `/console`:

===================================  ==============================================================
`GET /console`                       redirect to the fleet page
`GET /console/{page}`                the pages (fleet, incidents, incidents/{id}, approvals, models, audit):
                                     one HTML shell, rendered by the static scripts
`GET /console/static/{v}/...`        scripts, styles, the vendored chart library (uPlot); {v} is the assets'
                                     version (any value serves the current files)
`GET /console/events`                Server-Sent Events: `update` whenever incidents, approvals, the audit log
                                     or the snapshot change (snapshot-only changes at most once a second)
`GET /console/api/session`           who is signed in, and how one signs in
`POST /console/api/session`          sign in with an API token (CSRF) -> HttpOnly SameSite=Strict cookie
`POST /console/api/logout`           sign out (CSRF)
`GET /console/api/overview`          the header: world, clock, counts
`GET /console/api/fleet`             heatmap data for every GPU
`GET /console/api/incidents[/{id}]`  incidents; one with its timeline, plan, decisions, approvals, plots
`GET /console/api/approvals`         pending and recently decided requests
`POST /console/api/approvals/{id}`   approve / reject (signed-in approver, CSRF) -> the graph resumes
`GET /console/api/models`            models, serving versions, SLOs, traffic tracks (stable / canary) and
                                     their series, the last failed canary analysis, data validation and
                                     the retrain block, marks (faults, aborts, rollbacks), action history
`GET /console/api/audit`             the audit log (search, filter) with the chain's verification
===================================  ==============================================================

Reads never take the driver's lock and run in the thread pool (they may read SQLite). The recorder
thread polls the source's latest snapshot, feeds the metric history, pins each new incident's series and
bumps a revision number that the event stream watches.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from string import Template
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from agents.interrupts import ApprovalWait
from core.errors import ApprovalError
from infra.json_hygiene import SafeJSONResponse
from opsmedic.console import views
from opsmedic.console.auth import (
    CSRF_COOKIE,
    CSRF_HEADER,
    SESSION_COOKIE,
    Authenticator,
    Principal,
    Session,
    SessionStore,
    SignInThrottle,
    TokenAuthenticator,
    csrf_ok,
    new_csrf_token,
)
from opsmedic.console.history import MetricHistory
from opsmedic.console.source import ConsoleSource, as_source

log = logging.getLogger("opsmedic.console")

STATIC = Path(__file__).resolve().parent / "static"
PAGES: dict[str, str] = {"fleet": "Fleet", "incidents": "Incidents", "approvals": "Approvals", "models": "Models",
                         "audit": "Audit"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY", "Cache-Control": "no-store"}
MAX_PINNED = 200


class SignIn(BaseModel):
    token: str = Field(min_length=1, max_length=4096)


class ConsoleDecision(BaseModel):
    decision: Literal["approve", "reject"]
    digest: str = Field(min_length=64, max_length=64, description="the digest of the action the page showed")
    reason: str | None = Field(default=None, max_length=2000)


def _asset_version() -> str:
    h = hashlib.sha256()
    for p in sorted(STATIC.rglob("*")):
        if p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:10]


class Console:
    """The console's state: the source, the metric history, sessions, and the revision the stream watches."""

    def __init__(self, source: ConsoleSource, *, authenticator: Authenticator | None = None,
                 history: MetricHistory | None = None, poll_s: float = 0.1, public_read: bool = True,
                 stream_max_s: float = 25.0) -> None:
        self.source = source
        self.auth: Authenticator = authenticator or TokenAuthenticator(source.api_tokens)
        self.history = history or MetricHistory()
        self.sessions = SessionStore()
        self.throttle = SignInThrottle()
        self.poll_s = poll_s
        self.public_read = public_read
        self.stream_max_s = stream_max_s
        self.rev = 0
        self.snap_at: float | None = None
        self._sig: Any = None
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._step_lock = threading.Lock()
        self.asset_version = _asset_version()

    # ---------------------------------------------------------------------------------- recorder

    def ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="opsmedic-console", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5.0)
        self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set() and not self.source.stopping():
            try:
                self.step()
            except Exception:  # a store closed under us at shutdown, a bad snapshot: log, carry on
                log.exception("console recorder step failed")
                self._stop.wait(1.0)
            self._stop.wait(self.poll_s)

    def step(self) -> None:
        """Record a new snapshot, pin new incidents' series, and bump the revision when something changed."""
        with self._step_lock:
            self._step()

    def _step(self) -> None:
        src = self.source
        snap = src.snapshot()
        if snap is not None and (self.snap_at is None or snap.at_s != self.snap_at):
            self.history.record(snap)
            self.snap_at = snap.at_s
        incidents = src.incidents()
        for inc_id, inc in incidents.items():
            if inc_id not in self._seen:
                self._seen.add(inc_id)
                self.history.pin(inc_id, inc.resource, inc.resource_kind, snap)
        states = src.states()
        pinned = self.history.pinned_keys()
        if len(pinned) > MAX_PINNED:  # forget the plots of the oldest finished incidents
            done = sorted((i for i in pinned if (st := states.get(i)) is not None and st.outcome != "open"),
                          key=lambda i: incidents[i].opened_at_s if i in incidents else 0.0)
            for inc_id in done[:len(pinned) - MAX_PINNED]:
                self.history.unpin(inc_id)
        waiting = src.waiting()
        sig = (
            tuple(sorted((i, len(st.timeline), st.outcome, len(st.results), len(st.verifications))
                         for i, st in states.items())),
            tuple(sorted((i, w.kind, w.request_id if isinstance(w, ApprovalWait) else "")
                         for i, w in waiting.items())),
            len(incidents),
            src.audit.count(),
        )
        if sig != self._sig:
            self._sig = sig
            self.rev += 1

    def status(self) -> dict[str, Any]:
        return {"rev": self.rev, "snap_at": self.snap_at}

    # -------------------------------------------------------------------------------------- auth

    def session_of(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(SESSION_COOKIE))

    def principal(self, request: Request) -> Principal | None:
        s = self.session_of(request)
        return s.principal if s is not None else None

    def check_csrf(self, request: Request) -> Session | None:
        """403 unless the request carries the double-submitted CSRF token (and comes from our origin)."""
        origin = request.headers.get("origin")
        if origin is not None:
            host = request.headers.get("host", "")
            if origin.split("://", 1)[-1].rstrip("/") != host:
                raise HTTPException(403, "cross-origin request refused")
        session = self.session_of(request)
        if not csrf_ok(request.cookies.get(CSRF_COOKIE), request.headers.get(CSRF_HEADER), session):
            raise HTTPException(403, "missing or invalid CSRF token: reload the page and try again")
        return session

    def audit_verification(self) -> dict[str, Any]:
        # walked again on every view: a cache keyed by the entry count (or the head hash) said "ok" after
        # an in-place edit, which changes neither
        return self.source.audit.verify().model_dump(mode="json")


def _cookie_secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"


def _set_csrf(response: Response, request: Request, token: str) -> None:
    response.set_cookie(CSRF_COOKIE, token, httponly=False, samesite="strict", secure=_cookie_secure(request),
                        path="/console")


def _json(data: Any, status: int = 200) -> JSONResponse:
    # SafeJSONResponse: a stored NaN or lone surrogate is shown replaced, never a 500 for the whole view
    return SafeJSONResponse(data, status_code=status, headers={"Cache-Control": "no-store"})


def render_shell(console: Console, page: str, request: Request, *, incident_id: str | None = None) -> HTMLResponse:
    template = Template((STATIC / "shell.html").read_text(encoding="utf-8"))
    nav = []
    for key, label in PAGES.items():
        current = ' aria-current="page"' if key == page else ""
        nav.append(f'<li><a href="/console/{key}"{current}>{label}</a></li>')
    title = PAGES.get(page, "Console")
    if incident_id:
        title = f"Incident {incident_id}"
    body = template.substitute(
        title=html.escape(title), page=html.escape(page), nav="\n        ".join(nav), v=console.asset_version,
        incident=html.escape(incident_id or ""), auth_method=html.escape(console.auth.method))
    response = HTMLResponse(body, headers=SECURITY_HEADERS)
    session = console.session_of(request)
    token = session.csrf if session is not None else request.cookies.get(CSRF_COOKIE)
    if not token or len(token) < 32:
        token = new_csrf_token()
    _set_csrf(response, request, token)
    return response


def build_router(console: Console) -> APIRouter:
    r = APIRouter(prefix="/console", tags=["console"], include_in_schema=True)

    def reader(request: Request) -> Principal | None:
        console.ensure_started()
        who = console.principal(request)
        if who is None:
            # an API client reads with its bearer token (on the daemon, the edge middleware has checked and
            # throttled it already; a console mounted elsewhere checks it here)
            auth = request.headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                who = console.auth.authenticate(token.strip())
                if who is None:
                    raise HTTPException(401, "unknown token")
        if who is None and not console.public_read:
            raise HTTPException(401, "sign in to read the console")
        return who

    # ----------------------------------------------------------------------------------- pages

    @r.get("", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/console/fleet", status_code=307)

    @r.get("/incidents/{incident_id}", include_in_schema=False)
    def incident_page(incident_id: str, request: Request) -> HTMLResponse:
        console.ensure_started()
        return render_shell(console, "incidents", request, incident_id=incident_id)

    # ------------------------------------------------------------------------------------ auth

    @r.get("/api/session")
    def session(request: Request) -> JSONResponse:
        who = console.principal(request)
        configured = getattr(console.auth, "configured", None)
        return _json({"signed_in": who is not None, "user": who.user if who else None,
                      "method": console.auth.method,
                      "sign_in_available": bool(configured()) if callable(configured) else True})

    @r.post("/api/session")
    def sign_in(body: SignIn, request: Request) -> JSONResponse:
        console.check_csrf(request)
        client = request.client.host if request.client else "?"
        if console.throttle.blocked(client):
            return _json({"error": "too many failed sign-ins; wait a minute"}, 429)
        who = console.auth.authenticate(body.token)
        if who is None:
            console.throttle.failed(client)
            return _json({"error": "unknown token"}, 401)
        old = request.cookies.get(SESSION_COOKIE)
        console.sessions.delete(old)  # no session fixation: always a fresh id
        s = console.sessions.create(who)
        resp = _json({"signed_in": True, "user": who.user, "method": who.method})
        resp.set_cookie(SESSION_COOKIE, s.id, httponly=True, samesite="strict", secure=_cookie_secure(request),
                        path="/console", max_age=int(console.sessions.max_age_s))
        _set_csrf(resp, request, s.csrf)  # rotated at sign-in, and bound to the session
        log.info("console sign-in", extra={"user": who.user, "method": who.method})
        return resp

    @r.post("/api/logout")
    def sign_out(request: Request) -> JSONResponse:
        s = console.check_csrf(request)
        if s is not None:
            console.sessions.delete(s.id)
        resp = _json({"signed_in": False})
        resp.delete_cookie(SESSION_COOKIE, path="/console")
        _set_csrf(resp, request, new_csrf_token())
        return resp

    # ------------------------------------------------------------------------------------ data

    @r.get("/api/overview")
    def overview(request: Request) -> JSONResponse:
        reader(request)
        src = console.source
        states = src.states()
        return _json({"world": src.describe(), "now_s": src.now(), "snapshot_at_s": console.snap_at,
                      "open_incidents": sum(1 for st in states.values() if st.outcome == "open"),
                      "incidents": len(src.incidents()), "pending_approvals": len(src.pending_approvals()),
                      "rev": console.rev, "history": console.history.stats()})

    @r.get("/api/fleet")
    def fleet(request: Request) -> JSONResponse:
        reader(request)
        src = console.source
        return _json(views.fleet_payload(src.snapshot(), src.incidents(), src.states()))

    @r.get("/api/incidents")
    def incidents(request: Request) -> JSONResponse:
        reader(request)
        return _json({"now_s": console.source.now(), "incidents": views.incident_list(console.source)})

    @r.get("/api/incidents/{incident_id}")
    def incident(incident_id: str, request: Request) -> JSONResponse:
        reader(request)
        src = console.source
        inc = src.incidents().get(incident_id)
        if inc is None:
            raise HTTPException(404, f"no incident {incident_id}")
        series = console.history.series(inc.resource, inc.resource_kind, src.snapshot(), key=incident_id)
        detail = views.incident_detail(src, incident_id, series)
        return _json({**(detail or {}), "now_s": src.now()})

    @r.get("/api/approvals")
    def approvals(request: Request) -> JSONResponse:
        who = reader(request)
        return _json({**views.approvals_payload(console.source, who.user if who else None),
                      "user": who.user if who else None})

    @r.post("/api/approvals/{request_id}")
    def decide(request_id: str, body: ConsoleDecision, request: Request) -> JSONResponse:
        session = console.check_csrf(request)
        if session is None:
            return _json({"error": "sign in to approve or reject"}, 401)
        who = session.principal.user
        src = console.source
        req = src.approvals.get(request_id)
        if req is None:
            raise HTTPException(404, f"no approval request {request_id}")
        reason = body.reason or (f"rejected by {who} in the console" if body.decision == "reject" else None)
        try:
            out = src.decide(request_id, body.decision, by=who, digest=body.digest, reason=reason)
        except ApprovalError as exc:
            status = 403 if who not in req.approvers else 409
            return _json({"error": str(exc)}, status)
        log.info("console decision", extra={"request_id": request_id, "decision": body.decision, "user": who})
        console.step()  # the stream tells every page at once
        return _json({"request": out.model_dump(mode="json"), "by": who})

    @r.get("/api/models")
    def models(request: Request) -> JSONResponse:
        reader(request)
        data = views.models_payload(console.source)
        for m in data["models"]:
            m["series"] = console.history.model_series(m["name"])
        return _json(data)

    @r.get("/api/audit")
    def audit(request: Request, q: str = Query("", max_length=200), kind: str = Query("", max_length=64),
              incident: str = Query("", max_length=200), limit: int = Query(100, ge=1, le=1000),
              offset: int = Query(0, ge=0)) -> JSONResponse:
        reader(request)
        entries = console.source.audit.entries()
        data = views.audit_payload(entries, q=q, kind=kind, incident=incident, limit=limit, offset=offset)
        data["verification"] = console.audit_verification()
        return _json(data)

    # ---------------------------------------------------------------------------------- stream

    @r.get("/events")
    async def events(request: Request) -> StreamingResponse:
        reader(request)

        async def stream() -> AsyncIterator[str]:
            yield "retry: 1500\n\n"
            started = time.monotonic()
            last_rev: int | None = None
            last_snap: float | None = None
            last_sent = 0.0
            last_beat = time.monotonic()
            while True:
                now = time.monotonic()
                st = console.status()
                rev_changed = st["rev"] != last_rev
                snap_changed = st["snap_at"] != last_snap and now - last_sent >= 1.0
                if rev_changed or snap_changed:
                    last_rev, last_snap, last_sent = st["rev"], st["snap_at"], now
                    data = {**st, "state_changed": rev_changed, "now_s": console.source.now()}
                    yield f"event: update\ndata: {json.dumps(data)}\n\n"
                    last_beat = now
                elif now - last_beat > 10.0:
                    yield ": keep-alive\n\n"
                    last_beat = now
                if now - started > console.stream_max_s or console.source.stopping():
                    return  # the browser reconnects (retry); a bounded stream never holds up a shutdown
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.2)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @r.get("/{page}", include_in_schema=False)  # last: the other one-segment routes (events) match first
    def page(page: str, request: Request) -> HTMLResponse:
        if page not in PAGES:
            raise HTTPException(404, f"no console page {page!r}")
        console.ensure_started()
        return render_shell(console, page, request)

    return r


def mount(app: FastAPI, source: Any, *, authenticator: Authenticator | None = None,
          public_read: bool = True) -> Console:
    """Mount the console on `app`; returns the `Console` (its recorder starts with the app's lifespan, or at
    the first request, and stops with the lifespan)."""
    existing = getattr(app.state, "console", None)
    if isinstance(existing, Console):  # mounted already (the daemon's app factory may do it itself)
        return existing
    console = Console(as_source(source), authenticator=authenticator, public_read=public_read)
    app.state.console = console
    # /console/static/{version}/...: a new release gets new URLs (no stale script from a cache), and the
    # pages' relative module imports stay inside one version
    app.mount("/console/static/{version}", StaticFiles(directory=STATIC), name="console-static")
    app.include_router(build_router(console))

    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with inner(a) as state:
            await run_in_threadpool(console.ensure_started)
            try:
                yield state
            finally:
                await run_in_threadpool(console.stop)

    app.router.lifespan_context = lifespan
    return console

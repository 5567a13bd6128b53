"""The daemon's HTTP API: a FastAPI app over one `DaemonService`.

Layer: interfaces (`opsmedic.daemon`). Handlers stay thin and never block the event loop on anything
slow: reads copy the service's in-memory views, writes go to the approval store or the alert queue, and
anything that touches SQLite or Slack's signature check runs in the thread pool. OpenAPI docs are at
`/docs` (and `/openapi.json`). Authentication, body limits and JSON hygiene happen before any handler, in
the `opsmedic.daemon.edge` middleware; every JSON answer goes through `SafeJSONResponse`, so that no
stored value (NaN, a lone surrogate) can make a view answer 500.

==========================  ===============================================================================
`GET /healthz`              liveness: the process answers and its loop is alive and not stuck
`GET /readyz`               readiness: started, ticking, telemetry reachable; says leader or standby (503
                            when not ready)
`GET /metrics`              Prometheus text: incidents, decisions by verdict, actions, approvals pending,
                            tick duration, leadership, alerts, Slack
`POST /alerts/alertmanager` Alertmanager webhook v4 (bearer token from OPSMEDIC_ALERT_TOKENS; 503 when none
                            is configured): 202 stored and queued, 400 malformed (names the field), 429 queue
                            full, 503 on a standby (Alertmanager retries; the leader takes alerts)
`POST /slack/events`        Slack interactivity and events: signed requests only (401 otherwise or on replay)
`GET /api/incidents[/{id}]` incidents; one with its diagnosis, plan, decisions, approvals, results, timeline
                            (reads need an API token or a console session: see `edge`)
`GET /api/approvals`        pending approval requests
`POST /api/approvals/{id}`  approve / reject (bearer token from OPSMEDIC_API_TOKENS); resumes the graph
`POST /api/chat`            the ops chat (`opsmedic.chat.answer`), 501 while that module is absent
`POST /api/chat/stream`     the same, streamed as server-sent events (token ..., done)
==========================  ===============================================================================
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from core.errors import ApprovalError
from infra.json_hygiene import SafeJSONResponse, slack_body_problem
from opsmedic import __version__
from opsmedic.daemon.edge import (
    MAX_ALERT_BODY,
    MAX_SLACK_BODY,
    Edge,
    EdgePolicy,
    Scope,
)
from opsmedic.daemon.metrics import CONTENT_TYPE
from opsmedic.daemon.service import DaemonService

__all__ = ["MAX_ALERT_BODY", "MAX_SLACK_BODY", "SafeJSONResponse", "create_app"]
log = logging.getLogger("opsmedic.daemon")
CHAT_CONCURRENCY = 8  # chat answers read the audit log: CPU-bound, so more at once only queue for the GIL


class ApprovalDecision(BaseModel):
    decision: Literal["approve", "reject"]
    reason: str | None = Field(default=None, max_length=2000)
    digest: str | None = Field(default=None, description="the action digest the caller saw; refused if it "
                                                         "no longer matches the request")


class ChatRequest(BaseModel):
    question: str = Field(min_length=1, max_length=4000)
    conversation: str | None = Field(default=None, max_length=200,
                                     description="continue this conversation (default: one per user)")


_bearer = HTTPBearer(auto_error=False, description="a token from OPSMEDIC_API_TOKENS (token:user,...)")


def create_app(service: DaemonService, *, manage_lifecycle: bool = True, console: bool = True) -> FastAPI:
    """The app; with `manage_lifecycle` the service starts and stops with the server (uvicorn's lifespan:
    SIGTERM -> graceful stop); with `console` the web console is served under /console."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            await run_in_threadpool(service.start)
        try:
            yield
        finally:
            alert_pool.shutdown(wait=True)  # alerts being stored finish before the service stops
            if manage_lifecycle:
                await run_in_threadpool(service.stop)

    app = FastAPI(title="opsmedic daemon", version=__version__, lifespan=lifespan,
                  default_response_class=SafeJSONResponse,
                  description="Governed self-healing for GPU clusters: incidents, approvals, alerts, Slack.")
    app.state.service = service
    app.state.alerts_port = service.config.alerts_port  # the bound port replaces it when serving (port 0)

    def session_ok(scope: Scope) -> bool:
        console = getattr(app.state, "console", None)
        if console is None:
            return False
        from starlette.requests import HTTPConnection

        return console.session_of(HTTPConnection(scope)) is not None

    app.state.edge = EdgePolicy(alert_tokens=lambda: list(service.config.alert_tokens),
                                api_tokens=lambda: service.config.api_tokens,
                                public_read=lambda: bool(service.config.public_read),
                                alerts_port=lambda: app.state.alerts_port, session_ok=session_ok)
    app.add_middleware(Edge, policy=app.state.edge)
    if hasattr(service, "metrics"):
        from opsmedic.daemon.metrics import counters_family

        policy: EdgePolicy = app.state.edge
        service.metrics.add_reader(lambda: [
            counters_family("opsmedic_edge_refused", "Requests the edge refused before any handler, by status "
                            "(401 token, 413 body size, 400 JSON, 429 throttled, 503 intake off).", "status",
                            {k.removeprefix("refused_"): v for k, v in dict(policy.counters).items()})])
    chat_slots = asyncio.Semaphore(CHAT_CONCURRENCY)
    alert_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="opsmedic-intake")

    def user(creds: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> str:
        tokens = service.config.api_tokens
        if not tokens:
            raise HTTPException(401, "no API tokens are configured (OPSMEDIC_API_TOKENS)",
                                headers={"WWW-Authenticate": "Bearer"})
        if creds is None or creds.scheme.lower() != "bearer":
            raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
        given = creds.credentials.encode()
        found = None
        for token, name in tokens.items():  # compare with every token, in constant time each
            if hmac.compare_digest(given, token.encode()):
                found = name
        if found is None:
            raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return found

    # ------------------------------------------------------------------------------------- health

    # Health answers on the event loop itself (async, no thread-pool slot), so that a burst of slow API
    # requests occupying the pool never makes the daemon look dead to its liveness probe.
    @app.get("/healthz", tags=["health"])
    async def healthz() -> JSONResponse:
        alive, body = service.liveness()
        return SafeJSONResponse(body, status_code=200 if alive else 503)

    @app.get("/readyz", tags=["health"])
    async def readyz() -> JSONResponse:
        ready, body = service.readiness()
        return SafeJSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"])
    def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    # ------------------------------------------------------------------------------------- alerts

    @app.post("/alerts/alertmanager", tags=["alerts"], status_code=202)
    async def alertmanager(request: Request) -> JSONResponse:
        body = await request.body()  # authenticated and size-limited by the edge before it was read
        # threads of their own: a burst of slow reads filling the shared pool never delays the intake
        out = await asyncio.get_running_loop().run_in_executor(alert_pool, service.submit_alerts, body)
        headers = {"Retry-After": str(out.retry_after_s)} if out.retry_after_s else None
        return SafeJSONResponse(out.body, status_code=out.status, headers=headers)

    # -------------------------------------------------------------------------------------- slack

    @app.post("/slack/events", tags=["slack"])
    async def slack_events(request: Request) -> Response:
        slack = service.slack
        if slack is None or slack.app is None:
            return SafeJSONResponse({"error": "Slack is not configured (OPSMEDIC_SLACK_SIGNING_SECRET)"}, 404)
        body = await request.body()  # size-limited by the edge (MAX_SLACK_BODY) as it arrived
        headers = dict(request.headers)
        refused = await run_in_threadpool(slack.verify, body, headers)
        if refused is not None:
            return SafeJSONResponse({"error": refused}, 401)
        problem = slack_body_problem(body, headers.get("content-type", ""))
        if problem is not None:  # signed, but not what Slack sends: never hand it to Bolt
            return SafeJSONResponse({"error": f"malformed Slack request: {problem}"}, 400)
        try:
            status, resp_headers, text = await run_in_threadpool(slack.dispatch, body, request.url.query, headers)
        except Exception as exc:  # Bolt choking on a signed body is the sender's fault: a 400, logged
            log.warning("Slack request not dispatched", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
            return SafeJSONResponse({"error": "malformed Slack request"}, 400)
        return Response(content=text, status_code=status, headers=resp_headers)

    # ---------------------------------------------------------------------------------------- api

    @app.get("/api/incidents", tags=["incidents"])
    def incidents() -> list[dict[str, Any]]:
        return service.incident_summaries()

    @app.get("/api/incidents/{incident_id}", tags=["incidents"])
    def incident(incident_id: str) -> dict[str, Any]:
        detail = service.incident_detail(incident_id)
        if detail is None:
            raise HTTPException(404, f"no incident {incident_id}")
        return detail

    @app.get("/api/approvals", tags=["approvals"])
    def approvals() -> list[dict[str, Any]]:
        return [r.model_dump(mode="json") for r in service.pending_approvals()]

    @app.post("/api/approvals/{request_id}", tags=["approvals"])
    def decide(request_id: str, body: ApprovalDecision, who: str = Depends(user)) -> JSONResponse:
        req = service.driver.approvals.get(request_id)
        if req is None:
            raise HTTPException(404, f"no approval request {request_id}")
        reason = body.reason or (f"rejected by {who} through the API" if body.decision == "reject" else None)
        try:
            out = service.decide(request_id, body.decision, by=who, digest=body.digest, reason=reason, via="api")
        except ApprovalError as exc:
            status = 403 if who not in req.approvers else 409
            return SafeJSONResponse({"error": str(exc), "request": req.model_dump(mode="json")}, status_code=status)
        return SafeJSONResponse({"request": out.model_dump(mode="json"), "by": who,
                             "resume": "the incident's graph resumes on the daemon's next step"})

    @app.post("/api/chat", tags=["chat"])
    async def chat(body: ChatRequest, who: str = Depends(user)) -> JSONResponse:
        if not service.chat_available():
            return SafeJSONResponse({"error": "the chat interface is not installed in this build"}, 501)
        from opsmedic.chat import answer

        def run() -> Any:
            ctx = service.chat_context("http")
            if body.conversation:
                ctx.conversation = f"http:{who}:{body.conversation}"  # scoped to the user: no reading others'
            return answer(body.question, who, ctx)

        async with chat_slots:  # waiting requests hold no thread: the pool stays free for the rest of the API
            reply = await run_in_threadpool(run)
        data = reply.as_dict() if hasattr(reply, "as_dict") else {"answer": str(reply)}
        return SafeJSONResponse(data)

    @app.post("/api/chat/stream", tags=["chat"])
    async def chat_stream(body: ChatRequest, who: str = Depends(user)) -> Response:
        """The same answer as `/api/chat`, streamed as server-sent events: `token` events while the model
        writes (one event with the whole text when no LLM is configured), then `done` with the reply."""
        if not service.chat_available():
            return SafeJSONResponse({"error": "the chat interface is not installed in this build"}, 501)
        from opsmedic.chat import answer

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=1024)
        streamed = False

        def on_token(text: str) -> None:
            nonlocal streamed
            streamed = True
            loop.call_soon_threadsafe(queue.put_nowait, ("token", text))

        def run() -> None:
            ctx = service.chat_context("http")
            if body.conversation:
                ctx.conversation = f"http:{who}:{body.conversation}"
            try:
                reply = answer(body.question, who, ctx, on_token=on_token)
                data = reply.as_dict() if hasattr(reply, "as_dict") else {"answer": str(reply)}
                if not streamed:
                    loop.call_soon_threadsafe(queue.put_nowait, ("token", data.get("text") or data.get("answer", "")))
                loop.call_soon_threadsafe(queue.put_nowait, ("done", data))
            except Exception as exc:  # the client gets an error event instead of a cut stream
                loop.call_soon_threadsafe(queue.put_nowait, ("error", {"error": type(exc).__name__}))

        async def events() -> AsyncIterator[bytes]:
            async with chat_slots:
                task = loop.run_in_executor(None, run)
                while True:
                    kind, data = await queue.get()
                    yield f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()
                    if kind in ("done", "error"):
                        break
                await task

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/api/status", tags=["health"])
    def status() -> dict[str, Any]:
        return service.readiness()[1]

    if console:
        from opsmedic.console import mount_console

        mount_console(app, service, public_read=bool(service.config.public_read))
    return app

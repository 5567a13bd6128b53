"""A local stand-in for PagerDuty's Events API v2 (`POST /v2/enqueue`), for tests: it checks every request
against the documented schema, independently of opsmedic's own model of it, and answers as PagerDuty does.

- 202 `{"status": "success", "message": "Event processed", "dedup_key": ...}` for a valid event;
- 400 `{"status": "invalid event", "message": "Event object is invalid", "errors": [...]}` otherwise;
- 429 (rate limited) for the next `rate_limited` requests, 500 for the next `failing` ones.

Schema (developer.pagerduty.com, "Send an Alert Event"): `routing_key` (32 characters), `event_action`
(`trigger` | `acknowledge` | `resolve`), `dedup_key` (at most 255 characters; required unless triggering),
and for a trigger a `payload` with `summary` (at most 1024 characters), `source`, `severity` (`critical` |
`error` | `warning` | `info`), optional `timestamp` (ISO 8601), `component`, `group`, `class` and
`custom_details` (an object). Accepted events are kept in `events`; alerts by dedup key in `alerts`, with
their state (`triggered`, `acknowledged`, `resolved`).
"""

from __future__ import annotations

import json
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOP_KEYS = {"routing_key", "event_action", "dedup_key", "payload", "client", "client_url", "links", "images"}
PAYLOAD_KEYS = {"summary", "source", "severity", "timestamp", "component", "group", "class", "custom_details"}


def problems(event: Any) -> list[str]:
    """What is wrong with an Events API v2 alert event (empty when valid)."""
    if not isinstance(event, dict):
        return ["Event object must be a JSON object"]
    errs: list[str] = []
    extra = set(event) - TOP_KEYS
    if extra:
        errs.append(f"Unknown fields: {sorted(extra)}")
    key = event.get("routing_key")
    if not isinstance(key, str) or len(key) != 32:
        errs.append("Length of 'routing_key' is incorrect (should be 32 characters)")
    action = event.get("event_action")
    if action not in ("trigger", "acknowledge", "resolve"):
        errs.append("'event_action' is invalid (must be one of the following: 'trigger', 'acknowledge' or 'resolve')")
    dedup = event.get("dedup_key")
    if dedup is not None and (not isinstance(dedup, str) or not 0 < len(dedup) <= 255):
        errs.append("'dedup_key' must be a string of at most 255 characters")
    if action in ("acknowledge", "resolve") and not dedup:
        errs.append("'dedup_key' is required for acknowledge and resolve events")
    if action == "trigger":
        p = event.get("payload")
        if not isinstance(p, dict):
            errs.append("'payload' is missing or not an object")
        else:
            extra = set(p) - PAYLOAD_KEYS
            if extra:
                errs.append(f"Unknown payload fields: {sorted(extra)}")
            s = p.get("summary")
            if not isinstance(s, str) or not s:
                errs.append("'payload.summary' is missing or blank")
            elif len(s) > 1024:
                errs.append("'payload.summary' is too long (maximum is 1024 characters)")
            if not isinstance(p.get("source"), str) or not p.get("source"):
                errs.append("'payload.source' is missing or blank")
            if p.get("severity") not in ("critical", "error", "warning", "info"):
                errs.append("'payload.severity' is invalid (must be one of the following: 'critical', "
                            "'warning', 'error' or 'info')")
            ts = p.get("timestamp")
            if ts is not None:
                try:
                    datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
                except ValueError:
                    errs.append("'payload.timestamp' is not a valid ISO 8601 timestamp")
            cd = p.get("custom_details")
            if cd is not None and not isinstance(cd, dict):
                errs.append("'payload.custom_details' must be an object")
    return errs


class FakePagerDuty:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.refused: list[tuple[int, Any]] = []
        self.alerts: dict[str, str] = {}
        self.rate_limited = 0
        self.failing = 0
        self.requests = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                return None

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                code, body = fake.handle(self.path, self.headers.get("Content-Type", ""), raw)
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v2/enqueue"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> FakePagerDuty:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def handle(self, path: str, ctype: str, raw: bytes) -> tuple[int, dict[str, Any] | None]:
        with self._lock:
            self.requests += 1
            if path != "/v2/enqueue":
                return 404, {"status": "not found"}
            if self.rate_limited > 0:
                self.rate_limited -= 1
                return 429, None
            if self.failing > 0:
                self.failing -= 1
                return 500, {"status": "error"}
            try:
                event = json.loads(raw)
            except ValueError:
                event = None
            errs = ["Content-Type must be application/json"] if "application/json" not in ctype else []
            errs += problems(event) if event is not None else ["Event object is not valid JSON"]
            if errs:
                self.refused.append((400, event))
                return 400, {"status": "invalid event", "message": "Event object is invalid", "errors": errs}
            assert isinstance(event, dict)
            dedup = str(event.get("dedup_key") or f"generated-{len(self.events)}")
            self.events.append(event)
            state = {"trigger": "triggered", "acknowledge": "acknowledged", "resolve": "resolved"}[
                event["event_action"]]
            if event["event_action"] == "trigger" or dedup in self.alerts:
                self.alerts[dedup] = state
            return 202, {"status": "success", "message": "Event processed", "dedup_key": dedup}

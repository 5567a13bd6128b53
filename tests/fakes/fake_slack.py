"""A small, faithful fake of the Slack Web API on 127.0.0.1, for tests and offline demos.

Layer: interfaces (a test double shipped with the package, like `fakes.backend`; standard library only).
The daemon's Slack code runs the real `slack_sdk.WebClient` with `base_url` pointed here, so what is
faked is only the far side of the wire, and it answers the way Slack does:

- `POST /api/<method>` with a form-encoded or JSON body, the token in `Authorization: Bearer` (or a
  `token` field); HTTP 200 with `{"ok": false, "error": ...}` for application errors (`not_authed`,
  `invalid_auth`, `channel_not_found`, `message_not_found`, `invalid_blocks`, `no_text`,
  `unknown_method`), like Slack.
- `auth.test`, `chat.postMessage` (threads included), `chat.update`, `chat.postEphemeral`.
- Block Kit is checked for the limits that bite in production (50 blocks, 3,000-character section text,
  150-character header, 2,000-character button value, 255-character action_id), so a message that
  Slack would refuse is refused here too.
- Every call is recorded (`calls`, `calls_of(method)`); `fail_next(method, count, status)` makes the
  next calls answer HTTP 500 (or 429 with Retry-After, or 503) to test retries.

Run it alone with `python -m fakes.fake_slack [--port N]`; it prints its base URL.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

TEAM_ID = "T0OPSMEDIC"
BOT_USER_ID = "U0OPSBOT"
BOT_ID = "B0OPSBOT"
MAX_BLOCKS = 50
MAX_SECTION_TEXT = 3000
MAX_HEADER_TEXT = 150
MAX_BUTTON_VALUE = 2000
MAX_ACTION_ID = 255


@dataclass
class Call:
    """One request as the fake saw it, and what it answered."""

    method: str
    params: dict[str, Any]
    status: int
    response: dict[str, Any]
    at: float = field(default_factory=time.time)


@dataclass
class _Failure:
    method: str | None  # None: any method
    remaining: int
    status: int


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeSlack


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        return  # quiet: the fake records calls instead of printing them

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch(b"")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("content-length") or 0)
        self._dispatch(self.rfile.read(length) if length else b"")

    def _dispatch(self, body: bytes) -> None:
        path, _, query = self.path.partition("?")
        if not path.startswith("/api/"):
            self._send(404, {"ok": False, "error": "not_found"})
            return
        method = path[len("/api/"):]
        params = _params(body, self.headers.get("content-type", ""), query)
        status, payload, headers = self.server.fake.handle(method, params, self.headers.get("authorization"))
        self._send(status, payload, headers)

    def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json; charset=utf-8")
        self.send_header("content-length", str(len(raw)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(raw)


def _params(body: bytes, content_type: str, query: str) -> dict[str, Any]:
    out: dict[str, Any] = {k: v[-1] for k, v in parse_qs(query).items()}
    if not body:
        return out
    if "json" in content_type:
        try:
            data = json.loads(body)
        except json.JSONDecodeError:
            return {**out, "__invalid_json__": True}
        if isinstance(data, dict):
            out.update(data)
        return out
    out.update({k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()})
    return out


def _blocks_problem(blocks: Any) -> str | None:
    """Why Slack would refuse these blocks (`invalid_blocks`), or None."""
    if isinstance(blocks, str):
        try:
            blocks = json.loads(blocks)
        except json.JSONDecodeError:
            return "blocks is not valid JSON"
    if not isinstance(blocks, list):
        return "blocks must be an array"
    if len(blocks) > MAX_BLOCKS:
        return f"no more than {MAX_BLOCKS} blocks"
    for i, b in enumerate(blocks):
        if not isinstance(b, dict) or not isinstance(b.get("type"), str):
            return f"blocks[{i}] has no type"
        text = b.get("text")
        if b["type"] == "header":
            if not isinstance(text, dict) or text.get("type") != "plain_text":
                return f"blocks[{i}]: a header's text must be plain_text"
            if len(str(text.get("text", ""))) > MAX_HEADER_TEXT:
                return f"blocks[{i}]: header text longer than {MAX_HEADER_TEXT}"
        if b["type"] == "section":
            if text is None and not b.get("fields"):
                return f"blocks[{i}]: a section needs text or fields"
            if isinstance(text, dict) and len(str(text.get("text", ""))) > MAX_SECTION_TEXT:
                return f"blocks[{i}]: section text longer than {MAX_SECTION_TEXT}"
            for f in b.get("fields") or []:
                if len(str(f.get("text", ""))) > 2000:
                    return f"blocks[{i}]: a field longer than 2000"
            if len(b.get("fields") or []) > 10:
                return f"blocks[{i}]: more than 10 fields"
        if b["type"] == "actions":
            for el in b.get("elements") or []:
                if len(str(el.get("value", ""))) > MAX_BUTTON_VALUE:
                    return f"blocks[{i}]: button value longer than {MAX_BUTTON_VALUE}"
                if not el.get("action_id") or len(str(el["action_id"])) > MAX_ACTION_ID:
                    return f"blocks[{i}]: every element needs an action_id of at most {MAX_ACTION_ID}"
    return None


def _decode_blocks(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


class FakeSlack:
    """The fake Web API. `start()` serves it on 127.0.0.1 and returns the base URL for `WebClient`."""

    def __init__(self, token: str = "xoxb-opsmedic-test", *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.token = token
        self._host, self._port = host, port
        self.calls: list[Call] = []
        # (channel, ts) -> message as Slack stores it (text, blocks, thread_ts, user)
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}
        self._failures: list[_Failure] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._seq = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------- serving

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the fake Slack is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/api/"

    def start(self) -> str:
        server = _Server((self._host, self._port), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="fake-slack", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeSlack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------- test controls

    def fail_next(self, method: str | None = None, count: int = 1, status: int = 500) -> None:
        """The next `count` calls of `method` (any method when None) answer HTTP `status`."""
        with self._lock:
            self._failures.append(_Failure(method, count, status))

    def calls_of(self, method: str, *, ok: bool | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method and (ok is None or c.response.get("ok") is ok)]

    def wait_for(self, predicate: Callable[[FakeSlack], bool], timeout: float = 10.0) -> bool:
        """Block until `predicate(self)` holds (re-checked after every call), or the timeout passes."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._cond:  # woken by the next call; a short timeout covers a call we just missed
                self._cond.wait(timeout=min(left, 0.2))

    def thread(self, channel: str, ts: str) -> list[dict[str, Any]]:
        """The replies posted in a message's thread, oldest first."""
        with self._lock:
            return [m for (ch, _), m in sorted(self.messages.items(), key=lambda kv: float(kv[0][1]))
                    if ch == channel and m.get("thread_ts") == ts]

    # ---------------------------------------------------------------------------------------- API

    def handle(self, method: str, params: dict[str, Any], authorization: str | None
               ) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._cond:
            status, payload, headers = self._handle(method, params, authorization)
            self.calls.append(Call(method, params, status, payload))
            self._cond.notify_all()
            return status, payload, headers

    def _injected(self, method: str) -> _Failure | None:
        for f in self._failures:
            if f.remaining > 0 and (f.method is None or f.method == method):
                f.remaining -= 1
                return f
        return None

    def _next_ts(self) -> str:
        self._seq += 1
        return f"{int(time.time())}.{self._seq:06d}"

    def _handle(self, method: str, p: dict[str, Any], authorization: str | None
                ) -> tuple[int, dict[str, Any], dict[str, str]]:
        failure = self._injected(method)
        if failure is not None:
            if failure.status == 429:
                return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "1"}
            return failure.status, {"ok": False, "error": "fatal_error"}, {}
        if p.get("__invalid_json__"):
            return 200, {"ok": False, "error": "invalid_json"}, {}
        token = (authorization or "").removeprefix("Bearer ").strip() or str(p.get("token") or "")
        if not token:
            return 200, {"ok": False, "error": "not_authed"}, {}
        if token != self.token:
            return 200, {"ok": False, "error": "invalid_auth"}, {}
        fn = {"auth.test": self._auth_test, "chat.postMessage": self._post, "chat.update": self._update,
              "chat.postEphemeral": self._ephemeral}.get(method)
        if fn is None:
            return 200, {"ok": False, "error": "unknown_method", "req_method": method}, {}
        return 200, fn(p), {}

    @staticmethod
    def _auth_test(p: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": "https://opsmedic-test.slack.com/", "team": "opsmedic", "user": "opsmedic",
                "team_id": TEAM_ID, "user_id": BOT_USER_ID, "bot_id": BOT_ID, "is_enterprise_install": False}

    @staticmethod
    def _content_problem(p: dict[str, Any]) -> str | None:
        if not p.get("channel"):
            return "channel_not_found"
        if str(p["channel"])[:1] not in ("C", "G", "D"):
            return "channel_not_found"
        if p.get("blocks") not in (None, "", []):
            if _blocks_problem(p["blocks"]) is not None:
                return "invalid_blocks"
        elif not p.get("text") and not p.get("attachments"):
            return "no_text"
        return None

    def _post(self, p: dict[str, Any]) -> dict[str, Any]:
        problem = self._content_problem(p)
        if problem:
            return {"ok": False, "error": problem}
        channel = str(p["channel"])
        # a thread may hang off a person's message, which the fake never saw posted: accept any thread_ts
        thread_ts = p.get("thread_ts") or None
        ts = self._next_ts()
        msg = {"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "text": p.get("text") or "",
               "blocks": _decode_blocks(p.get("blocks")) or [], "ts": ts,
               **({"thread_ts": str(thread_ts)} if thread_ts else {})}
        self.messages[(channel, ts)] = msg
        return {"ok": True, "channel": channel, "ts": ts, "message": msg}

    def _update(self, p: dict[str, Any]) -> dict[str, Any]:
        problem = self._content_problem(p)
        if problem:
            return {"ok": False, "error": problem}
        key = (str(p["channel"]), str(p.get("ts") or ""))
        if key not in self.messages:
            return {"ok": False, "error": "message_not_found"}
        msg = self.messages[key]
        if "text" in p:
            msg["text"] = p.get("text") or ""
        if "blocks" in p:
            msg["blocks"] = _decode_blocks(p.get("blocks")) or []
        msg["edited"] = {"user": BOT_USER_ID, "ts": self._next_ts()}
        return {"ok": True, "channel": key[0], "ts": key[1], "text": msg["text"], "message": dict(msg)}

    def _ephemeral(self, p: dict[str, Any]) -> dict[str, Any]:
        problem = self._content_problem(p)
        if problem:
            return {"ok": False, "error": problem}
        if not p.get("user"):
            return {"ok": False, "error": "user_not_in_channel"}
        return {"ok": True, "message_ts": self._next_ts()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fakes.fake_slack", description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--token", default="xoxb-opsmedic-test")
    args = ap.parse_args(argv)
    fake = FakeSlack(args.token, port=args.port)
    print(fake.start(), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

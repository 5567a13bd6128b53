"""Helpers for the hostile-input suite: a real daemon on a quiet cluster, a tally of every request tried, the
malformed bodies, raw-socket floods, and Slack's v0 signatures.

The daemon is `opsmedic daemon` in this process (its real service, loop, stores, Bolt app and the edge
middleware) under a real uvicorn on 127.0.0.1; Slack is `fakes.fake_slack`. Requests with valid tokens
leave from 127.0.0.1; guesses with wrong tokens from 127.0.0.2, so that the per-address throttle they trip
is observed without locking the honest client out.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import select
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
QUIET = HERE / "quiet.yaml"
SECRET = "hostile-suite-signing-secret-0123"
BOT_TOKEN = "xoxb-opsmedic-hostile"
CHANNEL = "C0HOSTILE"
API_TOKEN = "tok-hostile-approver-0123456789"
API_TOKENS = f"{API_TOKEN}:U0OPSMEDIC"
ALERT_TOKEN = "alert-hostile-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
ALERT_AUTH = {"Authorization": f"Bearer {ALERT_TOKEN}"}
GOOD_ADDRESS = "127.0.0.1"
GUESS_ADDRESS = "127.0.0.2"


@dataclass
class Tally:
    """Every request tried and what it got; `violations` are answers that broke the suite's rules."""

    tried: int = 0
    codes: Counter[int] = field(default_factory=Counter)
    by_class: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    accepted_alerts: int = 0

    def note(self, what: str, status: int, expect: tuple[int, ...] | None = None, *, four_xx: bool = False) -> None:
        self.tried += 1
        self.codes[status] += 1
        self.by_class[what.split(" ", 1)[0]] += 1
        if status >= 500 and status != 503:
            self.violations.append(f"{what}: {status}")
        elif status == 503 and not what.startswith("alert-unconfigured"):
            self.violations.append(f"{what}: 503")
        elif expect is not None and status not in expect:
            self.violations.append(f"{what}: {status}, expected {expect}")
        elif four_xx and not 400 <= status < 500:
            self.violations.append(f"{what}: {status}, expected a 4xx")

    @property
    def five_xx(self) -> int:
        return sum(n for code, n in self.codes.items() if code >= 500)


class HostileDaemon:
    def __init__(self, tmp: Path, slack_url: str, database: str | None = None, **config: Any) -> None:
        from core.settings import load_settings
        from opsmedic.daemon.config import DaemonConfig
        from opsmedic.daemon.service import DaemonService

        self.backend = "postgres" if database else "sqlite"
        self.database = database or f"sqlite:///{tmp / 'opsmedic.db'}"
        self.tally = Tally()
        self.settings = load_settings(database_url=self.database, retrieval=False, data_dir=tmp / "data",
                                      slack_signing_secret=SECRET, slack_bot_token=BOT_TOKEN)
        cfg: dict[str, Any] = {"port": 0, "speed": 10.0, "scenario": QUIET, "fresh": True, "api_tokens": API_TOKENS,
                               "alert_tokens": ALERT_TOKEN, "slack_channel": CHANNEL, "slack_api_url": slack_url,
                               "slack_backoff_s": 0.05, "shutdown_timeout_s": 10.0}
        cfg.update(config)
        self.config = DaemonConfig.model_validate(cfg)
        self.service = DaemonService(self.config, self.settings)
        self._server: Any = None
        self.url = ""
        self.host, self.port = "127.0.0.1", 0

    def start(self) -> HostileDaemon:
        from opsmedic.daemon.app import create_app
        from opsmedic.daemon.server import ThreadedServer

        self._server = ThreadedServer(create_app(self.service)).start()
        self.url = self._server.url
        self.host, port = self.url.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    def client(self, address: str = GOOD_ADDRESS, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 15.0),
                            transport=httpx.HTTPTransport(local_address=address), **kw)


# ------------------------------------------------------------------------------------------- bodies


def webhook(alerts: list[dict[str, Any]], **top: Any) -> dict[str, Any]:
    return {"version": "4", "groupKey": '{}:{alertname="x"}', "truncatedAlerts": 0, "status": "firing",
            "receiver": "opsmedic", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://127.0.0.1:9093", "alerts": alerts, **top}


def alert(name: str = "GpuXid", resource: tuple[str, str] = ("node-77", "3"), **extra: Any) -> dict[str, Any]:
    """An alert; by default about a GPU this cluster does not have (so that an accepted one acts on nothing)."""
    labels = {"alertname": name, "Hostname": resource[0], "gpu": resource[1], "xid": "79", "severity": "critical"}
    labels.update(extra.pop("labels", {}))
    out = {"status": "firing", "labels": labels, "annotations": {"summary": f"{name} on {resource[0]}"},
           "startsAt": "2025-01-01T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
           "fingerprint": hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]}
    out.update(extra)
    return out


def deep(n: int) -> bytes:
    return b'{"a":' * n + b"1" + b"}" * n


# a JSON body class -> bytes; every endpoint that takes a body gets each of them
MALFORMED: dict[str, bytes] = {
    "empty": b"",
    "truncated": b'{"version": "4", "alerts": [{"status": "fir',
    "deep": deep(5_000),
    "deep-list": b"[" * 200_000,
    "array": b"[]",
    "string": b'"just a string"',
    "number": b"42",
    "null": b"null",
    "nan": b'{"decision": NaN, "question": NaN, "token": NaN, "version": NaN}',
    "infinity": b'{"decision": -Infinity, "question": 1e999}',
    "surrogate": b'{"decision": "\\ud800", "question": "\\udfff?", "token": "\\ud800", "reason": "\\ud800"}',
    "control": b'{"decision": "approve\\u0000", "question": "\\u001b[31mred", "token": "\\u0007"}',
    "latin1": '{"question": "Grüße"}'.encode("latin-1"),
    "bom-garbage": b"\xef\xbb\xbf\xff\xfe{}",
    "wrong-types": b'{"decision": 5, "question": ["x"], "token": {"a": 1}, "digest": 7, "reason": false}',
    "duplicate-keys": b'{"decision": "reject", "decision": "approve", "question": "a", "question": "b"}',
    "huge-string": b'{"question": "' + b"x" * 300_000 + b'"}',
}
CONTENT_TYPES = ["application/json", "text/plain", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=x", "application/json; charset=latin-1"]


# ------------------------------------------------------------------------------------------- floods


def chunked_flood(host: str, port: int, path: str, headers: dict[str, str], *, total: int,
                  chunk: int = 64 * 1024, timeout_s: float = 20.0) -> tuple[int | None, int]:
    """POST a chunked body of up to `total` bytes over a raw socket, stopping as soon as the server answers.
    Returns (status or None if it never answered, bytes sent)."""
    sock = socket.create_connection((host, port), timeout=timeout_s)
    sent = 0
    try:
        head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Transfer-Encoding: chunked",
                "Content-Type: application/json"] + [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        piece = b'{"alerts": [' + b" " * (chunk - 12)
        frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        deadline = time.monotonic() + timeout_s
        while sent < total and time.monotonic() < deadline:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(frame)
            except OSError:
                break
            sent += len(piece)
        else:
            try:
                sock.sendall(b"0\r\n\r\n")
            except OSError:
                pass
        sock.settimeout(timeout_s)
        data = b""
        try:
            while b"\r\n" not in data:
                more = sock.recv(4096)
                if not more:
                    break
                data += more
        except OSError:
            pass
        line = data.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None), sent
    finally:
        sock.close()


# -------------------------------------------------------------------------------------------- Slack


def slack_sign(body: bytes, ts: int | None = None, secret: str = SECRET) -> dict[str, str]:
    ts = int(time.time()) if ts is None else ts
    sig = "v0=" + hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": sig,
            "Content-Type": "application/x-www-form-urlencoded"}


def slack_click(request_id: str, digest: str, user: str = "U0OPSMEDIC") -> bytes:
    from urllib.parse import urlencode

    value = json.dumps({"r": request_id, "d": digest}, separators=(",", ":"))
    payload = {"type": "block_actions", "api_app_id": "A0", "token": "legacy", "trigger_id": "1.2.3",
               "team": {"id": "T0", "domain": "x"}, "user": {"id": user, "username": "u", "team_id": "T0"},
               "container": {"type": "message", "message_ts": "1.000001", "channel_id": CHANNEL},
               "channel": {"id": CHANNEL, "name": "ops"}, "message": {"type": "message", "ts": "1.000001"},
               "state": {"values": {}},
               "actions": [{"type": "button", "action_id": "opsmedic_approve", "block_id": f"opsmedic:{request_id}",
                            "value": value, "action_ts": f"{time.time():.6f}"}]}
    return urlencode({"payload": json.dumps(payload)}).encode()

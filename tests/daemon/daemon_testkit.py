"""Helpers for the daemon tests: a real uvicorn on 127.0.0.1, the fake Slack Web API, signed Slack requests.

Nothing here mocks the code under test: the daemon runs its real service, loop, driver, stores and Bolt
app; Slack is `fakes.fake_slack` behind slack-sdk's real `WebClient`; requests are signed here with the
v0 scheme (HMAC-SHA256 of `v0:{timestamp}:{body}`) exactly as Slack signs them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from fakes.fake_slack import FakeSlack
from waiting import wait_until  # noqa: F401  (re-exported for the tests in this folder)

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BOT_TOKEN = "xoxb-opsmedic-test"
CHANNEL = "C0OPSMEDIC"
APPROVER = "U0OPSMEDIC"  # on call in the default policy
API_TOKEN = "tok-approver-0123456789abcdef"
API_TOKEN_OTHER = "tok-stranger-0123456789abcdef"
API_TOKENS = f"{API_TOKEN}:{APPROVER},{API_TOKEN_OTHER}:UNOBODY"
ALERT_TOKEN = "alertmanager-0123456789abcdef"  # what Alertmanager's http_config.authorization sends
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}  # reads and API approvals
ALERT_AUTH = {"Authorization": f"Bearer {ALERT_TOKEN}", "Content-Type": "application/json"}
TWO_PERSON_POLICY = HERE / "two_person_policy.yaml"


# ---------------------------------------------------------------------------------------- signing


def sign(body: bytes, secret: str = SECRET, ts: int | None = None) -> dict[str, str]:
    """Slack's v0 request signature headers for `body`."""
    ts = int(time.time()) if ts is None else ts
    base = f"v0:{ts}:".encode() + body
    sig = "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": sig,
            "Content-Type": "application/x-www-form-urlencoded"}


def click_body(request_id: str, digest: str, user: str, *, action: str = "opsmedic_approve",
               channel: str = CHANNEL, message_ts: str = "1.000001") -> bytes:
    """An interactive `block_actions` payload as Slack posts it when someone clicks a button."""
    value = json.dumps({"r": request_id, "d": digest}, separators=(",", ":"))
    payload = {
        "type": "block_actions", "api_app_id": "A0OPSMEDIC", "token": "legacy-verification-token",
        "trigger_id": "1.2.3", "response_url": "https://hooks.slack.invalid/actions/T0/1/x",
        "team": {"id": "T0OPSMEDIC", "domain": "opsmedic-test"},
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": "T0OPSMEDIC"},
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel, "is_ephemeral": False},
        "channel": {"id": channel, "name": "ops"},
        "message": {"type": "message", "ts": message_ts, "text": "approval", "user": "U0OPSBOT"},
        "state": {"values": {}},
        "actions": [{"type": "button", "action_id": action, "block_id": f"opsmedic:{request_id}", "value": value,
                     "text": {"type": "plain_text", "text": "Approve"}, "action_ts": f"{time.time():.6f}"}],
    }
    return urlencode({"payload": json.dumps(payload)}).encode()




def approval_messages(fake: FakeSlack) -> list[dict[str, Any]]:
    """Messages posted to the channel that carry approval buttons (or did), oldest first."""
    out = []
    for (ch, ts), m in sorted(fake.messages.items(), key=lambda kv: float(kv[0][1])):
        if ch == CHANNEL and not m.get("thread_ts") and "request `apr-" in message_text(m):
            out.append({**m, "channel": ch, "ts": ts})
    return out


def button_value(message: dict[str, Any]) -> dict[str, str]:
    for b in message.get("blocks") or []:
        if b.get("type") == "actions":
            return dict(json.loads(b["elements"][0]["value"]))
    raise AssertionError("the message has no buttons")


def message_text(message: dict[str, Any]) -> str:
    parts = [message.get("text") or ""]
    for b in message.get("blocks") or []:
        t = b.get("text")
        if isinstance(t, dict):
            parts.append(str(t.get("text", "")))
        for f in b.get("fields") or []:
            parts.append(str(f.get("text", "")))
        for el in b.get("elements") or []:
            if isinstance(el, dict) and "text" in el and isinstance(el["text"], str):
                parts.append(el["text"])
    return "\n".join(parts)


# ------------------------------------------------------------------------------------ in-process


class InProcessDaemon:
    """`opsmedic daemon` in this process: the real app under a real uvicorn on a free 127.0.0.1 port."""

    def __init__(self, tmp: Path, slack: FakeSlack | None, *, speed: float = 150.0, policy: Path | None = None,
                 scenario: Path | None = None, **config: Any) -> None:
        from core.settings import load_settings
        from opsmedic.daemon.config import DaemonConfig
        from opsmedic.daemon.service import DaemonService

        self.tmp = tmp
        self.db = tmp / "opsmedic.db"
        # retrieval off: embedding the runbooks into a local Qdrant costs seconds per process, and the
        # daemon's behaviour under test does not depend on which neighbours the diagnosis cites
        overrides: dict[str, Any] = {"database_url": f"sqlite:///{self.db}", "retrieval": False,
                                     "data_dir": tmp / "data"}
        if policy is not None:
            overrides["policy_file"] = policy
        if slack is not None:
            overrides.update(slack_signing_secret=SECRET, slack_bot_token=BOT_TOKEN)
        self.settings = load_settings(**overrides)
        cfg: dict[str, Any] = {"port": 0, "speed": speed, "api_tokens": API_TOKENS, "alert_tokens": ALERT_TOKEN,
                               "slack_backoff_s": 0.05,
                               "slack_retries": 4, "shutdown_timeout_s": 10.0}
        if slack is not None:
            cfg.update(slack_channel=CHANNEL, slack_api_url=slack.url)
        if scenario is not None:
            cfg["scenario"] = scenario
        cfg.update(config)
        self.config = DaemonConfig.model_validate(cfg)
        self.service = DaemonService(self.config, self.settings)
        self._server: Any = None
        self.url = ""

    def start(self) -> InProcessDaemon:
        from opsmedic.daemon.app import create_app
        from opsmedic.daemon.server import ThreadedServer

        self._server = ThreadedServer(create_app(self.service)).start()
        self.url = self._server.url
        return self

    def client(self, **kw: Any) -> httpx.Client:
        """A client that reads with the approver's API token (alert posts pass `headers=ALERT_AUTH`)."""
        kw.setdefault("headers", AUTH)
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 10.0), **kw)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    def pending(self) -> list[Any]:
        return list(self.service.driver.approvals.list(status="pending"))


# ------------------------------------------------------------------------------------ subprocess


class DaemonProcess:
    """`python -m opsmedic.daemon` as a child process; its JSON log goes to a file we can read."""

    def __init__(self, workdir: Path, env: dict[str, str], args: list[str], name: str = "daemon") -> None:
        self.workdir = workdir
        self.name = name
        self.env = env
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log_path = workdir / f"{name}-0.log"
        self.runs = 0

    def start(self, timeout: float = 30.0) -> DaemonProcess:
        return self.launch().wait_up(timeout)

    def launch(self) -> DaemonProcess:
        self.runs += 1
        self.log_path = self.workdir / f"{self.name}-{self.runs}.log"
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "opsmedic.daemon", *self.args], cwd=self.workdir,
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    def wait_up(self, timeout: float = 30.0) -> DaemonProcess:
        port = wait_until(lambda: self._port(), timeout, 0.05, what=f"the daemon to listen ({self.log_path})")
        self.url = f"http://127.0.0.1:{port}"
        wait_until(self._up, timeout, 0.05, what="the daemon's /healthz")
        return self

    def _port(self) -> int | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the daemon exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        for line in self.lines():
            if line.get("msg") == "listening":
                return int(line["port"])
        return None

    def _up(self) -> bool:
        try:
            return httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.log().splitlines():
            try:
                out.append(json.loads(raw))
            except json.JSONDecodeError:
                continue
        return out

    def kill(self, sig: int = signal.SIGKILL, wait: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=wait)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def daemon_env(tmp: Path, slack_url: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPSMEDIC_")}
    env.update({"OPSMEDIC_DATABASE_URL": f"sqlite:///{tmp / 'opsmedic.db'}", "OPSMEDIC_API_TOKENS": API_TOKENS,
                "OPSMEDIC_ALERT_TOKENS": ALERT_TOKEN,
                "OPSMEDIC_RETRIEVAL": "false",
                "OPSMEDIC_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1"})
    if slack_url is not None:
        env.update({"OPSMEDIC_SLACK_SIGNING_SECRET": SECRET, "OPSMEDIC_SLACK_BOT_TOKEN": BOT_TOKEN,
                    "OPSMEDIC_SLACK_CHANNEL": CHANNEL, "OPSMEDIC_SLACK_API_URL": slack_url,
                    "OPSMEDIC_SLACK_BACKOFF": "0.05"})
    env.update(extra)
    return env


def copy_policy(src: Path, dst_dir: Path) -> Path:
    dst = dst_dir / src.name
    shutil.copy(src, dst)
    return dst


def alert_survives_sigkill(workdir: Path, procs: list[DaemonProcess], env: dict[str, str], database: str) -> None:
    """Post an alert, SIGKILL the daemon before its next tick, restart it: the stored alert becomes one
    incident, its row is marked processed, and a further restart hands it out no more."""
    from opsmedic.daemon.bench import webhook_body
    from opsmedic.daemon.intake import AlertIntake

    def rows() -> list[tuple[int, bool]]:
        with AlertIntake(database) as intake:
            pending = {r.id for r in intake.pending()}
            total = intake.counts()["stored"]
        return [(i, i in pending) for i in range(1, total + 1)]

    # speed 2: a tick every 5 s of wall time, and the scenario's own fault (t=2m) a minute away
    d = DaemonProcess(workdir, env, ["--port", "0", "--speed", "2"])
    procs.append(d)
    d.start()
    alert = {"status": "firing", "labels": {"alertname": "GpuXid", "Hostname": "node-3", "gpu": "5", "xid": "79"},
             "annotations": {"summary": "XID 79 on node-3 GPU 5"}, "startsAt": "2025-01-01T00:00:00Z",
             "fingerprint": "dead1"}
    with httpx.Client(base_url=d.url, timeout=10.0, headers=AUTH) as c:
        ticks = wait_until(lambda: c.get("/readyz").json()["loop"]["ticks"] or None, 20.0, what="a first tick")
        wait_until(lambda: c.get("/readyz").json()["loop"]["ticks"] > ticks, 20.0, what="the next tick")
        r = c.post("/alerts/alertmanager", content=webhook_body([alert]), headers=ALERT_AUTH)
        assert r.status_code == 202
    assert d.kill(signal.SIGKILL) == -signal.SIGKILL  # a crash just after the 202, before the next tick
    assert rows() == [(1, True)]  # stored, not yet processed: only the database has it

    d.start()
    with httpx.Client(base_url=d.url, timeout=10.0, headers=AUTH) as c:
        def from_alert() -> list[dict[str, Any]]:
            return [x for x in c.get("/api/incidents").json() if x["source"] == "alertmanager"]

        incs = wait_until(from_alert, 30.0, what="the stored alert to become an incident after the restart")
        assert len(incs) == 1 and incs[0]["resource"] == "node-3/gpu-5"
        wait_until(lambda: rows() == [(1, False)], 20.0, what="the row marked processed")
        assert c.get("/readyz").json()["alerts"]["replayed"] == 1
    assert d.kill(signal.SIGTERM) in (0, -signal.SIGTERM)
    d.start()  # a processed row is never handed out again
    with httpx.Client(base_url=d.url, timeout=10.0, headers=AUTH) as c:
        wait_until(lambda: c.get("/readyz").status_code == 200, 20.0, what="readiness")
        assert c.get("/readyz").json()["alerts"]["replayed"] == 0
        assert len([x for x in c.get("/api/incidents").json() if x["source"] == "alertmanager"]) == 1

"""`bench_daemon_load()`: the daemon under load — an Alertmanager storm and concurrent API readers while an
incident runs — measured over real HTTP.

Layer: interfaces (`opsmedic.daemon`). What it does:

1. starts a daemon subprocess on the bundled xid79 sandbox scenario (`python -m opsmedic.daemon` on
   127.0.0.1, a throw-away SQLite file; a separate process, so the load generator does not share its GIL)
   and waits until the GPU fault has become an incident waiting for approval — "while an incident runs";
2. posts `rate` alerts per second for `seconds` seconds to `POST /alerts/alertmanager`, as webhook bodies
   of `batch` alerts (re-notifications of `faults` failing GPUs, several alert rules each, like a real
   storm), honouring 429 + Retry-After as Alertmanager does; then resolves every alert;
3. meanwhile probes `GET /healthz` every 20 ms, and fires rounds of `concurrent` simultaneous requests
   at `GET /api/incidents`, `GET /api/incidents/{id}` and — when the chat module is installed —
   `POST /api/chat`;
4. reports throughput, alerts lost (sent alerts that no ingestor counter accounts for), refusals, the
   health probe's latency and the concurrent requests' latency, and how the loop kept ticking.

The storm's hosts (`storm-node-N`) do not exist in the sandbox, so the storm exercises intake, dedupe and
back-pressure without opening incidents of its own (they are counted as unmatched).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BENCH_TOKEN = "bench-token-0123456789abcdef"
BENCH_ALERT_TOKEN = "bench-alerts-0123456789abcdef"
_READ = {"Authorization": f"Bearer {BENCH_TOKEN}"}
_ALERT = {"Authorization": f"Bearer {BENCH_ALERT_TOKEN}", "Content-Type": "application/json"}


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 2)


def storm_alerts(faults: int = 20, rules: int = 4) -> list[dict[str, Any]]:
    """The distinct firing alerts of a storm: `faults` GPUs, each firing `rules` alert rules."""
    kinds = ["GpuXid", "GpuTempHigh", "GpuEccDbe", "GpuLost", "GpuRowRemapFailure", "GpuNvlinkErrors"]
    out = []
    for f in range(faults):
        for k in range(rules):
            labels = {"alertname": kinds[k % len(kinds)], "Hostname": f"storm-node-{f}", "gpu": str(f % 8),
                      "severity": "critical"}
            out.append({"status": "firing", "labels": labels, "annotations": {"summary": f"storm {f}/{k}"},
                        "startsAt": "2025-01-01T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                        "generatorURL": "http://127.0.0.1:9090/graph",
                        "fingerprint": hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[:16]})
    return out


def webhook_body(alerts: list[dict[str, Any]], status: str = "firing") -> bytes:
    return json.dumps({"version": "4", "groupKey": '{}:{alertname="storm"}', "truncatedAlerts": 0, "status": status,
                       "receiver": "opsmedic", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
                       "externalURL": "http://127.0.0.1:9093", "alerts": alerts}).encode()


class _Daemon:
    """`python -m opsmedic.daemon` as a child process, so that the load generator does not share its GIL."""

    def __init__(self, folder: Path, speed: float, retrieval: bool) -> None:
        import os
        import subprocess
        import sys

        env = {k: v for k, v in os.environ.items() if not k.startswith("OPSMEDIC_")}
        env.update({"OPSMEDIC_DATABASE_URL": f"sqlite:///{folder / 'bench.db'}",
                    "OPSMEDIC_API_TOKENS": f"{BENCH_TOKEN}:bench", "OPSMEDIC_LOG_LEVEL": "WARNING",
                    "OPSMEDIC_ALERT_TOKENS": BENCH_ALERT_TOKEN,
                    "OPSMEDIC_DAEMON_ALERTS_QUEUE_MAX": "2000", "OPSMEDIC_RETRIEVAL": str(retrieval).lower()})
        self.log_path = folder / "daemon.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "opsmedic.daemon", "--port", "0", "--speed",
                                          str(speed), "--fresh", "--log-level", "INFO"], cwd=folder, env=env,
                                         stdout=log, stderr=subprocess.STDOUT)
        self.url = ""
        deadline = time.monotonic() + 60.0
        while not self.url:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not start: {self.log_path.read_text()[-2000:]}")
            for line in self.log_path.read_text(errors="replace").splitlines():
                if '"msg": "listening"' in line:
                    self.url = str(json.loads(line)["url"])
            time.sleep(0.05)

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except Exception:
                self.proc.kill()


def bench_daemon_load(seconds: float = 30.0, rate: int = 1000, *, batch: int = 50, concurrent: int = 50,
                      faults: int = 20, speed: float = 50.0, db_dir: str | Path | None = None,
                      retrieval: bool = True) -> dict[str, float]:
    """Run the load described in the module docstring against a daemon subprocess; returns flat figures.
    `retrieval=False` skips building the runbook index at start (seconds; tests)."""
    import httpx

    tmp = tempfile.TemporaryDirectory(prefix="opsmedic-bench-daemon-") if db_dir is None else None
    folder = Path(tmp.name if tmp is not None else str(db_dir))
    folder.mkdir(parents=True, exist_ok=True)
    daemon = _Daemon(folder, speed, retrieval)
    url = daemon.url
    chat = importlib.util.find_spec("opsmedic.chat") is not None

    def status(c: httpx.Client) -> dict[str, Any]:
        return dict(c.get("/readyz").json())

    try:
        with httpx.Client(base_url=url, timeout=30.0, headers=_READ) as c:
            deadline = time.monotonic() + 60.0
            while not c.get("/api/approvals").json() and time.monotonic() < deadline:
                time.sleep(0.05)  # the fault at t=2m has become an incident waiting for approval
            incident_ids = [x["id"] for x in c.get("/api/incidents").json()]
            ticks0 = int(status(c)["loop"]["ticks"])
        distinct = storm_alerts(faults)
        total = int(rate * seconds)
        bodies = [(min(batch, total - s), webhook_body([distinct[(s + i) % len(distinct)]
                                                        for i in range(min(batch, total - s))]))
                  for s in range(0, total, batch)]
        health_ms: list[float] = []
        api_ms: list[float] = []
        errors: dict[str, int] = {}
        stop = threading.Event()

        def probe() -> None:
            with httpx.Client(base_url=url, timeout=5.0) as c:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    try:
                        ok = c.get("/healthz").status_code == 200
                    except httpx.HTTPError as exc:
                        ok, name = False, type(exc).__name__
                        errors[f"healthz {name}"] = errors.get(f"healthz {name}", 0) + 1
                    if ok:
                        health_ms.append((time.perf_counter() - t0) * 1000.0)
                    time.sleep(0.02)

        def readers() -> None:
            client = httpx.Client(base_url=url, timeout=30.0, headers=_READ,
                                  limits=httpx.Limits(max_connections=concurrent, max_keepalive_connections=concurrent))
            headers = {"Authorization": f"Bearer {BENCH_TOKEN}"}

            def one(i: int) -> None:
                t0 = time.perf_counter()
                try:
                    if chat and i % 2:
                        r = client.post("/api/chat", json={"question": "what is happening?"}, headers=headers)
                    elif incident_ids and i % 3 == 1:
                        r = client.get(f"/api/incidents/{incident_ids[0]}")
                    else:
                        r = client.get("/api/incidents")
                    what = None if r.status_code == 200 else f"api {r.status_code}"
                except httpx.HTTPError as exc:
                    what = f"api {type(exc).__name__}"
                api_ms.append((time.perf_counter() - t0) * 1000.0)
                if what is not None:
                    errors[what] = errors.get(what, 0) + 1

            with ThreadPoolExecutor(concurrent) as pool:
                while not stop.is_set():
                    list(pool.map(one, range(concurrent)))  # one round: `concurrent` requests at once
                    time.sleep(0.1)
            client.close()

        threads = [threading.Thread(target=probe, daemon=True), threading.Thread(target=readers, daemon=True)]
        for t in threads:
            t.start()
        sent = refused = 0
        with httpx.Client(base_url=url, timeout=30.0, headers=_READ) as c:
            t0 = time.perf_counter()
            for i, (n, body) in enumerate(bodies):
                lag = (i * batch) / rate - (time.perf_counter() - t0)
                if lag > 0:
                    time.sleep(lag)
                while True:
                    r = c.post("/alerts/alertmanager", content=body, headers=_ALERT)
                    if r.status_code != 429:
                        break
                    refused += 1  # back-pressure: wait as Alertmanager would, then send the same body again
                    time.sleep(float(r.headers.get("Retry-After", "1")) / 10.0)
                if r.status_code != 202:
                    raise RuntimeError(f"webhook answered {r.status_code}: {r.text[:200]}")
                sent += n
            elapsed = time.perf_counter() - t0
            resolved = [{**a, "status": "resolved", "endsAt": "2025-01-01T00:05:00Z"} for a in distinct]
            if c.post("/alerts/alertmanager", content=webhook_body(resolved, "resolved"),
                      headers=_ALERT).status_code == 202:
                sent += len(resolved)
            stop.set()
            for t in threads:
                t.join(timeout=60.0)
            deadline = time.monotonic() + 30.0
            st = status(c)
            while not st["alerts"]["idle"] and time.monotonic() < deadline:
                time.sleep(0.02)
                st = status(c)
            time.sleep(0.5)  # let a tick poll the ingestor's events
            st = status(c)
        a = st["alerts"]
        accounted = a["accepted"] + a["duplicate"] + a["resolved"] + a["resolved_unknown"]
        lost = sent - accounted + a["evicted"] + a["events_dropped"]
        return {
            "daemon_alert_ingest_per_s": round(total / elapsed, 1) if elapsed > 0 else 0.0,
            "daemon_alerts_sent": float(sent),
            "daemon_alerts_lost": float(lost),
            "daemon_alerts_429": float(refused),
            "daemon_alerts_open_after_resolve": float(a["active"]),
            "daemon_storm_seconds": round(elapsed, 3),
            "daemon_healthz_p50_ms": _pct(health_ms, 0.5),
            "daemon_healthz_p99_ms": _pct(health_ms, 0.99),
            "daemon_healthz_max_ms": round(max(health_ms), 2) if health_ms else 0.0,
            "daemon_healthz_probes": float(len(health_ms)),
            "daemon_api_concurrency": float(concurrent),
            "daemon_api_requests": float(len(api_ms)),
            "daemon_api_errors": float(sum(errors.values())),
            "daemon_api_p50_ms": _pct(api_ms, 0.5),
            "daemon_api_p95_ms": _pct(api_ms, 0.95),
            "daemon_ticks_during_load": float(int(st["loop"]["ticks"]) - ticks0),
            "daemon_tick_ms_last": float(st["loop"]["last_tick_ms"] or 0.0),
            "daemon_ready_after_load": 1.0 if st["ready"] else 0.0,
        }
    finally:
        daemon.stop()
        if tmp is not None:
            tmp.cleanup()

"""The servers of the end-to-end suite, each a real process on 127.0.0.1, and why each may be absent.

- `SandboxServe`: `opsmedic sandbox serve SCENARIO --apiserver real` (etcd + kube-apiserver with the
  simulator as kubelets and controllers, the sandbox exporter's /metrics; `--mlflow-tracking-uri` to keep its
  models in MLflow). Its stdout is read line by line with the wall time each line arrived, so that the fault's
  time is known to the test.
- `Prometheus`: Debian's /usr/bin/prometheus scraping that exporter every second.
- `MlflowServer`: `mlflow server` from the venv, SQLite backend, artifacts served through it.
- `DaemonRun`: `opsmedic daemon --kubeconfig KC` (Kubernetes mode) with its JSON log in a file.

Every process is stopped by the pid this module started, never by name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
PROMETHEUS = os.environ.get("PROMETHEUS_BIN") or shutil.which("prometheus")
MLFLOW = shutil.which("mlflow", path=str(Path(PYTHON).parent)) or shutil.which("mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """The test's environment without any OPSMEDIC_* setting of the caller's, the worktree first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPSMEDIC_", "OTEL_", "MLFLOW_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.update({"PYTHONUNBUFFERED": "1", "DO_NOT_TRACK": "true"})
    env.update(extra)
    return env


def stop(proc: subprocess.Popen[Any] | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`: only the process we started."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class Lines:
    """A child's stdout+stderr, read on a thread; each line kept with the monotonic time it arrived."""

    def __init__(self, proc: subprocess.Popen[str], copy_to: Path) -> None:
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._copy = copy_to.open("w", encoding="utf-8")
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._lock:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
            self._copy.write(line)
            self._copy.flush()
        self._copy.close()

    def first(self, needle: str) -> tuple[float, str] | None:
        with self._lock:
            return next(((t, s) for t, s in self.lines if needle in s), None)

    def text(self) -> str:
        with self._lock:
            return "\n".join(s for _, s in self.lines)


# ------------------------------------------------------------------------------------------ MLflow


class MlflowServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 90.0) -> MlflowServer:
        """Up to three tries: a port chosen free here can be taken before the server binds it."""
        for attempt in range(3):
            try:
                return self._start(timeout)
            except AssertionError:
                if attempt == 2 or "address already in use" not in self.log().lower():
                    raise
                self.port = free_port()
                self.url = f"http://127.0.0.1:{self.port}"
        raise AssertionError("unreachable")

    def log(self) -> str:
        path = self.root / "mlflow.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _start(self, timeout: float) -> MlflowServer:
        assert MLFLOW is not None
        self.root.mkdir(parents=True, exist_ok=True)
        log = (self.root / "mlflow.log").open("w")
        self.proc = subprocess.Popen(
            [MLFLOW, "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            cwd=self.root, env=child_env(), stdout=log, stderr=subprocess.STDOUT, text=True)
        log.close()

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"mlflow server exited: {self.log()[-2000:]}")
            try:
                return httpx.get(self.url + "/health", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout, 0.25, what="mlflow server's /health")
        return self

    def stop(self) -> None:
        stop(self.proc)


# ------------------------------------------------------------------------------------ sandbox serve


class SandboxServe:
    """`opsmedic sandbox serve SCENARIO --apiserver real`; `kubeconfig` and `metrics` once it has started."""

    def __init__(self, scenario: str, workdir: Path, *, speed: float, mlflow: str | None = None) -> None:
        self.workdir = workdir
        self.kubeconfig = workdir / "kubeconfig"
        args = [PYTHON, "-m", "opsmedic", "sandbox", "serve", scenario, "--apiserver", "real",
                "--kubeconfig", str(self.kubeconfig),
                "--speed", f"{speed:g}"]
        if mlflow is not None:
            args += ["--mlflow-tracking-uri", mlflow]
        self.args = args
        self.proc: subprocess.Popen[str] | None = None
        self.out: Lines | None = None

    def start(self, timeout: float = 120.0) -> SandboxServe:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.args, cwd=self.workdir, env=child_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.out = Lines(self.proc, self.workdir / "serve.log")

        def started() -> bool:
            assert self.proc is not None and self.out is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"sandbox serve exited {self.proc.returncode}:\n{self.out.text()[-3000:]}")
            return self.out.first("simulated time runs") is not None

        wait_until(started, timeout, 0.1, what="`opsmedic sandbox serve --apiserver real` to start")
        return self

    @property
    def metrics_target(self) -> str:
        """host:port of the exporter, from the `metrics  http://HOST:PORT/metrics` line serve printed (it picks
        a free port itself: one chosen here could be taken by its etcd before it binds)."""
        assert self.out is not None
        hit = self.out.first("  metrics ")
        assert hit is not None, self.out.text()
        return hit[1].split("http://", 1)[1].split("/", 1)[0]

    def fault_at(self) -> float | None:
        """Monotonic time the first fault line arrived (the step that made it had just been synced)."""
        assert self.out is not None
        hit = self.out.first("] fault: ")
        return hit[0] if hit else None

    def stop(self) -> None:
        stop(self.proc, timeout=20.0)  # it stops its own kube-apiserver and etcd on SIGTERM


# -------------------------------------------------------------------------------------- Prometheus


class Prometheus:
    def __init__(self, workdir: Path, target: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.target = target
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 60.0) -> Prometheus:
        assert PROMETHEUS is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        # the sandbox exporter plays dcgm-exporter, kube-state-metrics and the model servers at once
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: sandbox\n    static_configs: [{{targets: ['{self.target}']}}]\n",
            encoding="utf-8")
        log = (self.workdir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, text=True)
        log.close()

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {(self.workdir / 'prometheus.log').read_text()[-2000:]}")
            try:
                return httpx.get(self.url + "/-/ready", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout, 0.2, what="Prometheus to be ready")
        return self

    def has_scraped(self) -> bool:
        r = httpx.get(self.url + "/api/v1/query", params={"query": "up"}, timeout=5.0).json()
        return any(x["value"][1] == "1" for x in r.get("data", {}).get("result", []))

    def stop(self) -> None:
        stop(self.proc)


# ------------------------------------------------------------------------------------------- daemon


class DaemonRun:
    """`opsmedic daemon --kubeconfig KC` as a child process; its JSON log lines in `workdir/daemon.log`."""

    def __init__(self, workdir: Path, kubeconfig: Path, env: dict[str, str], extra: list[str] | None = None) -> None:
        self.workdir = workdir
        self.db = workdir / "opsmedic.db"
        self.log_path = workdir / "daemon.log"
        self.args = [PYTHON, "-m", "opsmedic", "daemon", "--kubeconfig", str(kubeconfig), "--port", "0",
                     "--poll-interval", "0.5", *(extra or [])]
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 90.0) -> DaemonRun:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.args, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        port = wait_until(self._port, timeout, 0.1, what=f"the daemon to listen ({self.log_path})")
        self.url = f"http://127.0.0.1:{port}"
        return self

    def _port(self) -> int | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the daemon exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
        for line in self.lines():
            if line.get("msg") == "listening":
                return int(line["port"])
        return None

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

    def stop(self) -> int | None:
        """SIGTERM (a graceful stop flushes the tracer's batch to the OTLP receiver); the exit status."""
        if self.proc is None:
            return None
        stop(self.proc, timeout=30.0)
        return self.proc.returncode

"""A real kube-apiserver with etcd on 127.0.0.1, from the cache that scripts/build-kube-apiserver.sh fills.

No kubelet, scheduler or controller-manager runs: the contract tests create Node objects themselves,
bind pods with spec.nodeName and set statuses through the status subresources. Authentication is a
static token file with two users: an admin (group system:masters) and the opsmedic ServiceAccount's
identity (`system:serviceaccount:opsmedic:opsmedic`), so that deploy/rbac.yaml can be checked for
least privilege. The ServiceAccount admission plugin is off because no controller creates the token
secrets it would wait for.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

CACHE = Path(os.environ.get("OPSMEDIC_CACHE", str(Path.home() / ".cache" / "opsmedic"))) / "kube"
APISERVER = CACHE / "bin" / "kube-apiserver"
ETCD = CACHE / "bin" / "etcd"
ADMIN_TOKEN = "opsmedic-contract-admin"
SA_TOKEN = "opsmedic-contract-serviceaccount"
SA_USER = "system:serviceaccount:opsmedic:opsmedic"
SKIP_REASON = "kube-apiserver not built: run scripts/build-kube-apiserver.sh"


def available() -> bool:
    return os.access(APISERVER, os.X_OK) and os.access(ETCD, os.X_OK) and shutil.which("openssl") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class KubeApiServer:
    """Start with `start()`, stop with `stop()`; `url` is https://127.0.0.1:PORT (self-signed)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="opsmedic-kube-"))
        self.port = _free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self._procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        out = open(self.dir / log, "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=self.dir)
        self._procs.append(proc)
        return proc

    def start(self, timeout_s: float = 60.0) -> None:
        d = self.dir
        subprocess.run(
            ["openssl", "genrsa", "-out", str(d / "sa.key"), "2048"], check=True, capture_output=True
        )
        subprocess.run(
            ["openssl", "rsa", "-in", str(d / "sa.key"), "-pubout", "-out", str(d / "sa.pub")],
            check=True,
            capture_output=True,
        )
        (d / "tokens.csv").write_text(
            f'{ADMIN_TOKEN},admin,1,"system:masters"\n'
            f'{SA_TOKEN},{SA_USER},2,"system:serviceaccounts,system:serviceaccounts:opsmedic,system:authenticated"\n',
            encoding="utf-8",
        )
        client_port, peer_port = _free_port(), _free_port()
        self._spawn(
            [
                str(ETCD),
                "--data-dir",
                str(d / "etcd"),
                "--name",
                "contract",
                "--listen-client-urls",
                f"http://127.0.0.1:{client_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{client_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer_port}",
                "--initial-cluster",
                f"contract=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
            ],
            "etcd.log",
        )
        self._spawn(
            [
                str(APISERVER),
                f"--etcd-servers=http://127.0.0.1:{client_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                "--insecure-port=0",
                f"--cert-dir={d / 'certs'}",
                f"--token-auth-file={d / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/24",
                "--disable-admission-plugins=ServiceAccount",
                "--enable-priority-and-fairness=false",
            ],
            "apiserver.log",
        )
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self._procs):
                break
            try:
                req = urllib.request.Request(
                    self.url + "/readyz", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
                )
                with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
                    if resp.read() == b"ok":
                        return
            except OSError:
                pass
            time.sleep(0.3)
        logs = (d / "apiserver.log").read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"kube-apiserver did not become ready:\n{logs}")

    def stop(self) -> None:
        for p in reversed(self._procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self._procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

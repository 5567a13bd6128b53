"""A real Kubernetes control plane for the sandbox: etcd + kube-apiserver on 127.0.0.1, from the local cache.

Layer: sandbox (the standard library, and `sandbox.k8s_api`'s kubeconfig writer). `scripts/build-kube-apiserver.sh`
builds kube-apiserver (v1.20, from Debian's source package) and fetches etcd into
`$OPSMEDIC_CACHE/kube/bin` (default `~/.cache/opsmedic/kube/bin`); `ControlPlane` starts both from there,
with a self-signed serving certificate, static bearer tokens and RBAC, and `ControlPlaneMissing` names the
script when they are absent. Used by `opsmedic sandbox serve --apiserver real` (with
`sandbox.apiserver_sync`, which plays the kubelets and the missing controllers) and by the contract tests.

Only the API server runs: no kubelet, scheduler or controller-manager. The ServiceAccount admission plugin
is off because no controller creates the token secrets it would wait for.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BUILD_SCRIPT = "scripts/build-kube-apiserver.sh"


def cache_dir() -> Path:
    from core.settings import load_settings

    return (load_settings().cache or Path.home() / ".cache" / "opsmedic") / "kube"


def binaries() -> tuple[Path, Path]:
    """(kube-apiserver, etcd) in the cache, whether or not they exist."""
    b = cache_dir() / "bin"
    return b / "kube-apiserver", b / "etcd"


def available() -> bool:
    apiserver, etcd = binaries()
    return os.access(apiserver, os.X_OK) and os.access(etcd, os.X_OK) and shutil.which("openssl") is not None


class ControlPlaneMissing(RuntimeError):
    """kube-apiserver, etcd or openssl is not there: says how to get them."""


def missing_reason() -> str:
    apiserver, etcd = binaries()
    if shutil.which("openssl") is None:
        return "openssl is not installed (the control plane's keys are made with it)"
    return (f"kube-apiserver not built: run {BUILD_SCRIPT} (it fills {apiserver.parent} with kube-apiserver "
            f"and etcd; looked for {apiserver} and {etcd})")


@dataclass(frozen=True)
class StaticUser:
    """A line of kube-apiserver's static token file."""

    token: str
    name: str
    uid: str
    groups: tuple[str, ...] = ()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ControlPlane:
    """etcd + kube-apiserver. `start()`, then `url` (https://127.0.0.1:PORT, self-signed) and `admin_token`
    (group system:masters); `stop()` ends both processes and removes their data directory."""

    def __init__(self, *, admin_token: str | None = None, users: tuple[StaticUser, ...] = (),
                 port: int = 0) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="opsmedic-kube-"))
        self.port = port or _free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.admin_token = admin_token or secrets.token_hex(16)
        self.users = users
        self._procs: list[subprocess.Popen[bytes]] = []

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        out = open(self.dir / log, "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=self.dir)
        self._procs.append(proc)
        return proc

    def start(self, timeout_s: float = 60.0) -> None:
        if not available():
            shutil.rmtree(self.dir, ignore_errors=True)
            raise ControlPlaneMissing(missing_reason())
        apiserver, etcd = binaries()
        d = self.dir
        subprocess.run(["openssl", "genrsa", "-out", str(d / "sa.key"), "2048"], check=True, capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", str(d / "sa.key"), "-pubout", "-out", str(d / "sa.pub")],
                       check=True, capture_output=True)
        lines = [f'{self.admin_token},admin,1,"system:masters"']
        lines += [f'{u.token},{u.name},{u.uid},"{",".join(u.groups)}"' for u in self.users]
        (d / "tokens.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        client_port, peer_port = _free_port(), _free_port()
        self._spawn([
            str(etcd), "--data-dir", str(d / "etcd"), "--name", "opsmedic",
            "--listen-client-urls", f"http://127.0.0.1:{client_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{client_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"opsmedic=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync",
        ], "etcd.log")
        self._spawn([
            str(apiserver),
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
            # `kubectl logs` reaches a kubelet at the node's InternalIP (the sandbox's kubelets publish
            # 127.0.0.1); a node with only a Hostname is still reached by name
            "--kubelet-preferred-address-types=InternalIP,Hostname",
        ], "apiserver.log")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self._procs):
                break
            try:
                # verified as every client verifies it: the certificate is written before the server listens
                ctx = ssl.create_default_context(cafile=str(self.serving_cert))
                req = urllib.request.Request(self.url + "/readyz",
                                             headers={"Authorization": f"Bearer {self.admin_token}"})
                with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
                    if resp.read() == b"ok":
                        return
            except OSError:
                pass
            time.sleep(0.3)
        logs = (d / "apiserver.log").read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"kube-apiserver did not become ready:\n{logs}")

    @property
    def serving_cert(self) -> Path:
        """The serving certificate kube-apiserver made at start (for 127.0.0.1 and localhost), followed by
        the self-signed CA that signed it: what a client trusts to verify this control plane."""
        return self.dir / "certs" / "apiserver.crt"

    def write_kubeconfig(self, path: str | Path, *, namespace: str = "default",
                         context: str = "opsmedic-sandbox") -> Path:
        """A kubeconfig for kubectl and the official client: the admin token, and the serving certificate's
        chain embedded as `certificate-authority-data`, so that clients verify the server (it is made afresh
        at every start, so a kubeconfig holds only for the control plane that wrote it)."""
        from sandbox.k8s_api import write_kubeconfig

        return write_kubeconfig(self.url, path, token=self.admin_token, context=context, namespace=namespace,
                                certificate_authority=self.serving_cert.read_bytes())

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

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["BUILD_SCRIPT", "ControlPlane", "ControlPlaneMissing", "StaticUser", "available", "missing_reason"]

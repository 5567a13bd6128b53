"""The contract tests' kube-apiserver: the product's `sandbox.control_plane` with two fixed users.

Authentication is a static token file with an admin (group system:masters) and the opsmedic ServiceAccount's
identity (`system:serviceaccount:opsmedic:opsmedic`), so that deploy/rbac.yaml can be checked for least
privilege. No kubelet, scheduler or controller-manager runs: the contract tests create Node objects
themselves, bind pods with spec.nodeName and set statuses through the status subresources.
"""

from __future__ import annotations

from sandbox.control_plane import ControlPlane, StaticUser, available, binaries, missing_reason

APISERVER, ETCD = binaries()
ADMIN_TOKEN = "opsmedic-contract-admin"
SA_TOKEN = "opsmedic-contract-serviceaccount"
SA_USER = "system:serviceaccount:opsmedic:opsmedic"
SKIP_REASON = missing_reason()


class KubeApiServer(ControlPlane):
    """Start with `start()`, stop with `stop()`; `url` is https://127.0.0.1:PORT (self-signed)."""

    def __init__(self) -> None:
        super().__init__(admin_token=ADMIN_TOKEN, users=(StaticUser(
            SA_TOKEN, SA_USER, "2", ("system:serviceaccounts", "system:serviceaccounts:opsmedic",
                                     "system:authenticated")),))


__all__ = ["ADMIN_TOKEN", "APISERVER", "ETCD", "SA_TOKEN", "SA_USER", "SKIP_REASON", "KubeApiServer", "available"]

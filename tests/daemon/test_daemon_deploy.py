"""deploy/: the manifests agree with the code — the ServiceAccount and Lease of deploy/rbac.yaml, the
environment variables the daemon reads, the probes' paths, a valid policy, the alert port that only
Alertmanager's namespace reaches, Alertmanager's token — and the image runs as non-root on a read-only
root filesystem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from core.settings import Settings
from opsmedic.daemon.config import ENV, DaemonConfig

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all() -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for f in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for d in _docs(f):
            out.setdefault(d["kind"], []).append(d)
    return out


def _deployment() -> dict[str, Any]:
    return _all()["Deployment"][0]


def test_two_replicas_under_the_rbac_service_account() -> None:
    dep = _deployment()
    assert dep["spec"]["replicas"] == 2
    spec = dep["spec"]["template"]["spec"]
    rbac = {d["kind"]: d for d in _docs(DEPLOY / "rbac.yaml") if d["kind"] in ("ServiceAccount",)}
    sa = rbac["ServiceAccount"]["metadata"]
    assert spec["serviceAccountName"] == sa["name"] and dep["metadata"]["namespace"] == sa["namespace"]
    lease_roles = [d for d in _docs(DEPLOY / "rbac.yaml") if d["kind"] == "Role"
                   and any("leases" in r["resources"] for r in d["rules"])]
    assert lease_roles and lease_roles[0]["metadata"]["namespace"] == dep["metadata"]["namespace"]
    names = {n for r in lease_roles[0]["rules"] for n in r.get("resourceNames", [])}
    assert DaemonConfig().lease_name in names
    sec = spec["securityContext"]
    assert sec["runAsNonRoot"] is True and sec["runAsUser"] != 0
    c = spec["containers"][0]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_every_environment_variable_is_one_the_daemon_reads() -> None:
    c = _deployment()["spec"]["template"]["spec"]["containers"][0]
    known = set(ENV.values()) | {f"OPSMEDIC_{f.upper()}" for f in Settings.model_fields} | {
        "POD_NAME", "HOME", "OPENAI_API_KEY"}
    names = [e["name"] for e in c["env"]]
    assert not set(names) - known, set(names) - known
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert set(secrets) >= {"OPSMEDIC_SLACK_SIGNING_SECRET", "OPSMEDIC_SLACK_BOT_TOKEN", "OPSMEDIC_API_TOKENS",
                            "OPSMEDIC_ALERT_TOKENS", "OPENAI_API_KEY"}
    values = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    for name in values:
        assert "secret" not in name.lower() and "token" not in name.lower(), name  # secrets by reference only
    field = {v: k for k, v in ENV.items()}
    cfg = DaemonConfig.model_validate({field[k]: v for k, v in values.items() if k in field})
    assert cfg.resolved_source({}) == "kubernetes" and cfg.leader_election_on({})


def test_probes_and_service_point_at_the_app() -> None:
    from opsmedic.daemon.app import create_app

    class _Stub:
        config = DaemonConfig()

    paths = {r.path for r in create_app(_Stub(), manage_lifecycle=False, console=False).routes}  # type: ignore[arg-type]
    c = _deployment()["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["path"] in paths
    port = c["ports"][0]
    svc = _all()["Service"][0]
    assert svc["spec"]["ports"][0]["targetPort"] == port["name"]
    assert svc["spec"]["selector"].items() <= _deployment()["spec"]["template"]["metadata"]["labels"].items()
    assert c["args"][-1] == str(port["containerPort"])


def test_the_policy_config_map_is_a_valid_policy(tmp_path: Path) -> None:
    from policies.model import load_policy

    cm = _all()["ConfigMap"][0]
    path = tmp_path / "policy.yaml"
    path.write_text(cm["data"]["policy.yaml"])
    mounted = _deployment()["spec"]["template"]["spec"]["containers"][0]
    assert any(e.get("value") == "/etc/opsmedic/policy.yaml" for e in mounted["env"])
    assert load_policy(path).model_dump() == load_policy(None).model_dump()


@pytest.mark.parametrize("needle", ["FROM python:3.11-slim", "USER 10001", 'ENTRYPOINT ["opsmedic"]',
                                    'CMD ["daemon"', "pip install ."])
def test_the_image_definition(needle: str) -> None:
    assert needle in (DEPLOY / "Dockerfile").read_text()


def _cli_config() -> DaemonConfig:
    """The DaemonConfig the Deployment's args give (flags as `opsmedic daemon` parses them)."""
    import argparse

    from opsmedic.daemon import _CLI_FIELDS, add_parser

    c = _deployment()["spec"]["template"]["spec"]["containers"][0]
    parser = add_parser(argparse.ArgumentParser().add_subparsers(dest="command"))
    args = parser.parse_args(c["args"][1:])
    return DaemonConfig.model_validate({k: getattr(args, k) for k in _CLI_FIELDS if getattr(args, k) is not None})


def test_the_alert_port_is_its_own_and_only_alertmanager_reaches_it() -> None:
    c = _deployment()["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    cfg = _cli_config()
    assert cfg.alerts_port == ports["alerts"] and cfg.port == ports["http"] and cfg.alerts_port != cfg.port
    svc = _all()["Service"][0]
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == {"http", "alerts"}
    policy = _all()["NetworkPolicy"][0]
    pod_labels = _deployment()["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = policy["spec"]["ingress"]
    to_alerts = [r for r in rules if any(p["port"] in ("alerts", ports["alerts"]) for p in r["ports"])]
    assert len(to_alerts) == 1 and to_alerts[0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    open_rules = [r for r in rules if "from" not in r]
    assert all(p["port"] in ("http", ports["http"]) for r in open_rules for p in r["ports"])


def test_alertmanager_sends_the_secret_token_to_the_alert_port() -> None:
    conf = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    hook = next(r for r in conf["receivers"] if r["name"] == "opsmedic")["webhook_configs"][0]
    svc = _all()["Service"][0]
    alert_port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "alerts")
    assert hook["url"] == f"http://{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc:{alert_port}" \
                          "/alerts/alertmanager"
    assert hook["send_resolved"] is True
    auth = hook["http_config"]["authorization"]
    assert auth["type"] == "Bearer" and "credentials" not in auth  # from the mounted Secret, never inline
    secret = yaml.safe_load((DEPLOY / "alertmanager" / "secret.yaml").read_text())
    assert secret["kind"] == "Secret" and auth["credentials_file"] == (
        f"/etc/alertmanager/secrets/{secret['metadata']['name']}/{next(iter(secret['stringData']))}")
    assert any(r["receiver"] == "opsmedic" for r in conf["route"]["routes"])


def test_the_pod_runs_as_non_root_on_a_read_only_root_filesystem() -> None:
    spec = _deployment()["spec"]["template"]["spec"]
    c = spec["containers"][0]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # every path the daemon writes is a volume: the database, its scratch, /tmp (HOME)
    mounts = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["HOME"] in mounts and env["OPSMEDIC_DATA_DIR"] in mounts
    assert env["OPSMEDIC_DATABASE_URL"].removeprefix("sqlite:///").rsplit("/", 1)[0] in mounts


def test_the_deployed_policy_is_the_default_policy() -> None:
    """deploy/k8s/configmap-policy.yaml carries a copy of policies/default.yaml; the copy must not drift
    (operators edit their own approvers after applying it)."""
    repo = Path(__file__).resolve().parents[2]
    cm = yaml.safe_load((repo / "deploy" / "k8s" / "configmap-policy.yaml").read_text(encoding="utf-8"))
    assert cm["data"]["policy.yaml"] == (repo / "policies" / "default.yaml").read_text(encoding="utf-8")


def test_the_image_copies_every_installed_package() -> None:
    """A package left out of the image installs nothing and the daemon fails at its first import."""
    import tomllib

    project = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert {p for p in packages if f"COPY {p} {p}" not in dockerfile} == set()

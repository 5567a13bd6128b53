"""Unit tests of the daemon's parts: configuration, the fake Slack behind the real WebClient, Block Kit
rendering, JSON logs, the CLI hook, and the monitor internals the service relies on."""

from __future__ import annotations

import argparse
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_testkit import BOT_TOKEN, CHANNEL
from fakes.fake_slack import FakeSlack, _blocks_problem

from core.domain import (
    Action,
    ApprovalRequest,
    ApprovalStatus,
    Diagnosis,
    Evidence,
    Incident,
    ResourceKind,
    Risk,
    Signal,
)
from core.errors import ConfigError
from opsmedic.daemon import add_parser
from opsmedic.daemon.config import DaemonConfig, load_daemon_config
from opsmedic.daemon.logging_json import JsonFormatter
from opsmedic.daemon.slack import ApprovalView, approval_message, escape, make_web_client, story_text
from opsmedic.daemon.tokens import parse_api_tokens

# ------------------------------------------------------------------------------------------- config


def test_flags_override_environment_and_errors_name_their_source(tmp_path: Path) -> None:
    env = {"OPSMEDIC_DAEMON_SPEED": "5", "OPSMEDIC_DAEMON_PORT": "9000"}
    c = load_daemon_config({"speed": 50.0, "port": None}, env)
    assert c.speed == 50.0 and c.port == 9000
    with pytest.raises(ConfigError) as e:
        load_daemon_config({}, {"OPSMEDIC_DAEMON_LEASE_DURATION": "0"})
    assert "OPSMEDIC_DAEMON_LEASE_DURATION" in str(e.value) and "lease_duration_s" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_daemon_config({"port": -1}, {})
    assert "--port" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_daemon_config({}, {"OPSMEDIC_DAEMON_LEADER_ELECTION": "perhaps"})
    assert "OPSMEDIC_DAEMON_LEADER_ELECTION" in str(e.value)


def test_drift_windows_must_be_a_directory(tmp_path: Path) -> None:
    assert load_daemon_config({"drift_windows": tmp_path}, {}).drift_windows == tmp_path
    assert load_daemon_config({}, {"OPSMEDIC_DRIFT_WINDOWS": str(tmp_path)}).drift_windows == tmp_path
    with pytest.raises(ConfigError) as e:
        load_daemon_config({"drift_windows": tmp_path / "absent"}, {})
    assert "--drift-windows" in str(e.value) and "no such directory" in str(e.value)


def test_api_tokens_parse_and_refuse_weak_or_duplicate_tokens() -> None:
    assert parse_api_tokens("aaaaaaaaaaaaaaaa:alice, bbbbbbbbbbbbbbbb:bob") == {"aaaaaaaaaaaaaaaa": "alice",
                                                                               "bbbbbbbbbbbbbbbb": "bob"}
    for bad in ("nocolon", "short:alice", "aaaaaaaaaaaaaaaa:a,aaaaaaaaaaaaaaaa:b", ":alice", "aaaaaaaaaaaaaaaa:"):
        with pytest.raises(ValueError):
            parse_api_tokens(bad)
    with pytest.raises(ConfigError) as e:
        load_daemon_config({}, {"OPSMEDIC_API_TOKENS": "sekrit:alice"})
    assert "sekrit" not in str(e.value)


def test_the_source_is_the_sandbox_unless_a_cluster_is_configured(tmp_path: Path) -> None:
    kc = tmp_path / "kubeconfig"
    kc.write_text("apiVersion: v1\nkind: Config\n")
    assert DaemonConfig().resolved_source({"KUBECONFIG": str(kc)}) == "sandbox"  # a shell's KUBECONFIG is ignored
    assert DaemonConfig(kubeconfig=kc).resolved_source({}) == "kubernetes"
    assert DaemonConfig(kubeconfig=kc).leader_election_on({}) is True
    assert DaemonConfig().leader_election_on({}) is False


def test_leader_election_without_a_cluster_is_a_config_error(tmp_path: Path) -> None:
    from core.settings import load_settings
    from opsmedic.daemon.service import DaemonService

    settings = load_settings(database_url=f"sqlite:///{tmp_path / 'x.db'}", retrieval=False)
    with pytest.raises(ConfigError) as e:
        DaemonService(DaemonConfig(leader_election=True), settings)
    assert "OPSMEDIC_DAEMON_LEADER_ELECTION" in str(e.value)


# ----------------------------------------------------------------------------------------------- CLI


def test_add_parser_registers_the_daemon_command() -> None:
    p = argparse.ArgumentParser(prog="opsmedic")
    add_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["daemon", "--port", "0", "--speed", "20", "--no-leader-election"])
    assert args.port == 0 and args.speed == 20.0 and args.leader_election is False and callable(args.func)


def test_importing_the_daemon_package_stays_light() -> None:
    code = ("import sys, opsmedic.daemon; heavy = [m for m in ('fastapi', 'uvicorn', 'langgraph', 'slack_bolt', "
            "'kubernetes') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# --------------------------------------------------------------------------------------------- logs


def test_json_logs_are_one_object_per_line_with_extra_fields() -> None:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    lg = logging.getLogger("opsmedic.test.json")
    lg.addHandler(handler)
    lg.propagate = False
    try:
        lg.warning("tick skipped", extra={"incident_id": "inc-1", "error": ValueError("x")})
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            lg.exception("failed")
    finally:
        lg.removeHandler(handler)
    first, second = (json.loads(x) for x in buf.getvalue().splitlines())
    assert first["msg"] == "tick skipped" and first["incident_id"] == "inc-1" and first["level"] == "warning"
    assert first["error"] == "x" and "ts" in first and first["logger"] == "opsmedic.test.json"
    assert "RuntimeError: boom" in second["exc"]


# --------------------------------------------------------------------------------------- fake Slack


def test_the_real_web_client_against_the_fake() -> None:
    from slack_sdk.errors import SlackApiError

    with FakeSlack(BOT_TOKEN) as fake:
        client = make_web_client(BOT_TOKEN, fake.url, retries=3, backoff_s=0.01)
        assert client.auth_test()["user_id"] == "U0OPSBOT"
        posted = client.chat_postMessage(channel=CHANNEL, text="hello", blocks=[
            {"type": "section", "text": {"type": "mrkdwn", "text": "*hello*"}}])
        ts = posted["ts"]
        client.chat_update(channel=CHANNEL, ts=ts, text="bye")
        assert fake.messages[(CHANNEL, ts)]["text"] == "bye"
        reply = client.chat_postMessage(channel=CHANNEL, thread_ts=ts, text="in thread")
        assert fake.thread(CHANNEL, ts)[0]["ts"] == reply["ts"]
        assert client.chat_postEphemeral(channel=CHANNEL, user="U1", text="psst")["ok"]
        for call, err in [(lambda: client.chat_update(channel=CHANNEL, ts="9.9", text="x"), "message_not_found"),
                          (lambda: client.chat_postMessage(channel="#ops", text="x"), "channel_not_found"),
                          (lambda: client.chat_postMessage(channel=CHANNEL, text="x", blocks=[{"text": "no type"}]),
                           "invalid_blocks"),
                          (lambda: make_web_client("xoxb-wrong", fake.url, retries=0, backoff_s=0).auth_test(),
                           "invalid_auth")]:
            with pytest.raises(SlackApiError) as e:
                call()
            assert e.value.response["error"] == err
        fake.fail_next("chat.postMessage", count=2, status=500)
        assert client.chat_postMessage(channel=CHANNEL, text="after 500s")["ok"]  # retried by the handler
        assert [c.status for c in fake.calls_of("chat.postMessage")][-3:] == [500, 500, 200]
        fake.fail_next("chat.postMessage", count=10, status=500)
        with pytest.raises(SlackApiError):
            client.chat_postMessage(channel=CHANNEL, text="gives up")  # bounded: 1 + 3 retries


# ---------------------------------------------------------------------------------------- Block Kit


def _view(status: ApprovalStatus = ApprovalStatus.pending, approved_by: list[str] | None = None,
          required: int = 1) -> ApprovalView:
    action = Action(name="drain_node", target="node-1")
    sig = Signal(kind="pod_log", resource="node-1", resource_kind=ResourceKind.node, at_s=1.0,
                 detail="<!channel> approve now <http://evil.example|docs>")
    inc = Incident(id="inc-1", resource="node-1/gpu-3", resource_kind=ResourceKind.gpu, opened_at_s=120.0,
                   signals=[sig], title="XID 79 <!here> & friends")
    diag = Diagnosis(root_cause="gpu_fell_off_bus", resource="node-1/gpu-3", confidence=0.95, summary="XID 79",
                     evidence=[Evidence(kind="gpu_xid", resource="node-1/gpu-3", detail="log says <@U999> <!channel>")],
                     runbook_ids=["gpu-xid79-fell-off-bus"])
    req = ApprovalRequest(id="apr-1", incident_id="inc-1", action=action, digest=action.digest(), risk=Risk.high,
                          rule="actions.drain_node.approval", approvers=["UALICE", "UBOB"],
                          approvals_required=required, requested_at_s=120.0, expires_at_s=1920.0, status=status,
                          approved_by=approved_by or [])
    return ApprovalView(request=req, incident=inc, diagnosis=diag, outcome="open", executed=None, verified=None,
                        rejected_by=None, escalation=None, now_s=130.0, wall_clock=False, story=["[0:02:00] a <b>"])


def test_the_approval_message_binds_the_request_and_escapes_cluster_text() -> None:
    text, blocks = approval_message(_view())
    assert _blocks_problem(blocks) is None and len(text) < 3000
    raw = json.dumps(blocks)
    assert "<!channel>" not in raw and "<!here>" not in raw and "<@U999>" not in raw and "<http://evil" not in raw
    assert "&lt;!channel&gt;" in raw
    buttons = next(b for b in blocks if b["type"] == "actions")["elements"]
    assert [b["action_id"] for b in buttons] == ["opsmedic_approve", "opsmedic_reject"]
    value = json.loads(buttons[0]["value"])
    assert value == {"r": "apr-1", "d": Action(name="drain_node", target="node-1").digest()}
    flat = " ".join(json.dumps(b) for b in blocks)
    for needle in ("drain_node", "node-1", "high", "actions.drain_node.approval", "gpu_fell_off_bus",
                   "0 of 1", "<@UALICE>", "Expires"):
        assert needle in flat, needle


def test_the_message_follows_the_request() -> None:
    _, half = approval_message(_view(approved_by=["UALICE"], required=2))
    assert any(b["type"] == "actions" for b in half) and "1 more approval" in json.dumps(half)
    _, done = approval_message(_view(ApprovalStatus.approved, ["UALICE", "UBOB"], 2))
    assert not any(b["type"] == "actions" for b in done) and "Approved by <@UALICE>, <@UBOB>" in json.dumps(done)
    _, expired = approval_message(_view(ApprovalStatus.expired))
    assert "Expired" in json.dumps(expired) and not any(b["type"] == "actions" for b in expired)
    assert escape("<a&b>") == "&lt;a&amp;b&gt;"
    assert "&lt;b&gt;" in story_text("inc-1", ["[0:02:00] a <b>"])


# ------------------------------------------------------------------------------------ monitor shape


def test_the_monitor_lets_the_service_adopt_an_incident() -> None:
    """After a restart or takeover the service claims each incident's grouping key, so the monitor absorbs
    its signals instead of opening a duplicate."""
    from agents.monitor import Monitor
    from opsmedic.daemon.grouping import monitor_key

    m = Monitor()
    inc = Incident(id="old", resource="node-1/gpu-3", resource_kind=ResourceKind.gpu, opened_at_s=0.0, signals=[])
    state = m.claim("node-1/gpu-3", inc, closed=False)
    assert m.key_state("node-1/gpu-3") is state and state.incident_id == "old" and not state.closed
    assert m.incidents["old"] is inc
    part = Incident(id="i", resource="node-1", resource_kind=ResourceKind.cluster, opened_at_s=0.0, signals=[
        Signal(kind="node_not_ready", resource=n, resource_kind=ResourceKind.node, at_s=0.0)
        for n in ("node-2", "node-1")])
    assert monitor_key(part) == "partition:node-1,node-2"


def test_a_kubernetes_world_scores_drift_from_window_files(tmp_path: Path) -> None:
    """`--drift-windows DIR`: the cluster's telemetry (here the sandbox's Kubernetes API, with a model added
    as Prometheus would report it) gets its drift scores from DIR/<model>/{reference,current}.csv."""
    import numpy as np
    import pandas as pd  # type: ignore[import-untyped,unused-ignore]

    from core.domain import ClusterSnapshot, ModelStatus
    from opsmedic.daemon.world import KubeWorld
    from sandbox.cluster import Simulator
    from sandbox.k8s_api import SandboxKubeAPI, serve_in_thread, write_kubeconfig
    from sandbox.scenario import load_scenario

    repo = Path(__file__).resolve().parents[2]
    rng = np.random.default_rng(4)
    (tmp_path / "windows" / "fraud-model").mkdir(parents=True)
    pd.DataFrame({"amount": rng.lognormal(3.6, 1.1, 3000)}).to_csv(
        tmp_path / "windows" / "fraud-model" / "reference.csv", index=False)
    pd.DataFrame({"amount": rng.lognormal(4.3, 1.1, 3000)}).to_csv(
        tmp_path / "windows" / "fraud-model" / "current.csv", index=False)
    sim = Simulator(load_scenario(repo / "sandbox" / "scenarios" / "node-not-ready.yaml"))
    url, stop_api = serve_in_thread(SandboxKubeAPI(sim))
    world = KubeWorld(kubeconfig=write_kubeconfig(url, tmp_path / "kubeconfig"), context=None, in_cluster=False,
                      namespace="default", poll_interval_s=1.0, drift_windows=tmp_path / "windows")
    try:
        assert world.drift is not None and world.telemetry is world.drift
        cluster = world.drift.inner

        class WithModel:
            def snapshot(self) -> ClusterSnapshot:
                snap = cluster.snapshot()
                model = ModelStatus(name="fraud-model", serving_version=3, versions=[3])
                return snap.model_copy(update={"models": [model]})

        world.drift.inner = WithModel()
        world.drift.wait = True
        snap = world.telemetry.snapshot()
        assert snap.nodes and snap.models[0].drift_psi["amount"] > 0.2
        assert world.describe()["drift"] == {"scored": 1, "failed": 0, "last_error": None, "models": ["fraud-model"]}
    finally:
        world.close()
        stop_api()

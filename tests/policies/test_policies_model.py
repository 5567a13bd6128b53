"""Policy schema and loading: the default file, and errors that name the file, the key and the line."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from policy_helpers import policy_from

from core.domain import ACTION_NAMES, Risk
from core.errors import PolicyError
from policies import load_policy, parse_duration
from policies.model import parse_cron

DEFAULT_YAML = Path(__file__).resolve().parents[2] / "policies" / "default.yaml"


def write(tmp_path: Path, text: str, name: str = "my.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def load_error(tmp_path: Path, text: str) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        load_policy(write(tmp_path, text))
    return info.value


def test_default_policy_loads_with_the_documented_settings() -> None:
    p = load_policy()
    assert p.mode == "enforce"
    assert set(p.actions) == set(ACTION_NAMES)
    assert p.defaults.approval_expiry == 1800
    assert p.approvers.groups["oncall"] == ["U0OPSMEDIC", "eval-approver"]
    needs = {name for name in ACTION_NAMES if p.approval_needed(name)}
    assert needs == {"reset_gpu", "drain_node", "retrain_model"}
    for name in needs:
        assert p.approvers_for(name) == ["U0OPSMEDIC", "eval-approver"]
        assert p.approvals_required_for(name) == 1
    assert p.actions["restart_pod"].cooldown == 300
    rl = p.actions["restart_pod"].rate_limit
    assert rl is not None and (rl.count, rl.window, rl.per) == (20, 3600, "global")
    assert p.limits.max_actions_per_incident == 8
    cb = p.limits.circuit_breaker
    assert (cb.max_nodes_out_fraction, cb.min_nodes_allowed) == (0.25, 1)
    assert (cb.max_gpus_out_fraction, cb.min_gpus_allowed) == (0.25, 1)


def test_default_yaml_is_commented_line_by_line() -> None:
    uncommented = [line for line in DEFAULT_YAML.read_text().splitlines()
                   if line.strip() and "#" not in line and not line.strip().startswith("-")]
    assert uncommented == []


def test_unlisted_actions_fall_back_to_the_registry_risk() -> None:
    p = policy_from({"defaults": {"approvers": ["U1"]}})
    assert p.risk_of("drain_node") == Risk.high and p.approval_needed("drain_node")
    assert p.risk_of("reschedule_pod") == Risk.medium and not p.approval_needed("reschedule_pod")
    assert p.approvers_for("reset_gpu") == ["U1"]


def test_policy_risk_overrides_the_registry() -> None:
    p = policy_from({"actions": {"restart_pod": {"risk": "critical"}}, "defaults": {"approvers": ["U1"]}})
    assert p.risk_of("restart_pod") == Risk.critical and p.approval_needed("restart_pod")


def test_bad_value_names_file_and_key_path(tmp_path: Path) -> None:
    err = load_error(tmp_path, "approvers: {groups: {oncall: [U1, U2]}}\n"
                               "actions:\n  drain_node:\n    approvals_required: 3\n")
    assert err.where is not None
    assert err.where.endswith("my.yaml: actions.drain_node.approvals_required")
    assert "1 or 2" in err.what and "line 4" in err.what


def test_unknown_action_is_refused(tmp_path: Path) -> None:
    err = load_error(tmp_path, "actions:\n  delete_cluster: {risk: low}\n")
    assert err.where is not None and err.where.endswith("my.yaml: actions.delete_cluster")
    assert "unknown action" in err.what and "drain_node" in err.what


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    err = load_error(tmp_path, "actions:\n  drain_node:\n    aproval: true\n")
    assert err.where is not None and err.where.endswith("my.yaml: actions.drain_node.aproval")
    assert "unknown key" in err.what


def test_bad_duration_says_what_is_expected(tmp_path: Path) -> None:
    err = load_error(tmp_path, "defaults:\n  approval_expiry: 5 minutes\n")
    assert err.where is not None and err.where.endswith("my.yaml: defaults.approval_expiry")
    assert "30s, 5m, 1h" in err.what


def test_bad_enum_says_what_is_expected(tmp_path: Path) -> None:
    err = load_error(tmp_path, "mode: yolo\n")
    assert err.where is not None and err.where.endswith("my.yaml: mode")
    assert "enforce" in err.what and "dry_run" in err.what


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    err = load_error(tmp_path, "mode: enforce\nactions:\n  drain_node: {risk: low\n")
    assert err.where is not None and err.where.endswith("my.yaml:4")
    assert "invalid YAML" in err.what


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    err = load_error(tmp_path, "actions:\n  drain_node: {approval: false}\n  restart_pod: {}\n"
                               "  drain_node: {approval: true}\n")
    assert err.where is not None and err.where.endswith("my.yaml: actions.drain_node")
    assert "duplicate key" in err.what and "line 4" in err.what


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    err = load_error(tmp_path, "- a\n- b\n")
    assert "mapping" in err.what


def test_unknown_approver_group(tmp_path: Path) -> None:
    err = load_error(tmp_path, "actions:\n  drain_node:\n    approvers: ['group:sre']\n")
    assert err.where is not None and err.where.endswith("actions.drain_node.approvers[0]")
    assert "group:sre" in err.what


def test_approval_without_approvers_is_refused(tmp_path: Path) -> None:
    err = load_error(tmp_path, "actions:\n  drain_node: {approval: true}\n")
    assert err.where is not None and err.where.endswith("actions.drain_node.approvers")
    assert "nobody can approve" in err.what


def test_two_person_rule_needs_two_approvers(tmp_path: Path) -> None:
    err = load_error(tmp_path, "actions:\n  drain_node: {approvers: [U1], approvals_required: 2}\n")
    assert err.where is not None and err.where.endswith("actions.drain_node.approvals_required")


def test_bad_cron_and_window_shapes(tmp_path: Path) -> None:
    err = load_error(tmp_path, "freeze_windows:\n  - {name: w, cron: '61 * * * *', duration: 1h}\n")
    assert err.where is not None and err.where.endswith("freeze_windows[0].cron")
    assert "minute" in err.what
    err = load_error(tmp_path, "freeze_windows:\n  - {name: w, start: '2025-01-02T00:00:00Z', "
                               "end: '2025-01-01T00:00:00Z'}\n")
    assert "end must be after start" in err.what
    err = load_error(tmp_path, "freeze_windows:\n  - {name: w, cron: '0 1 * * *'}\n")
    assert "cron and duration" in err.what
    err = load_error(tmp_path, "freeze_windows:\n  - {name: w, cron: '0 1 * * *', duration: 1h}\n"
                               "  - {name: w, cron: '0 2 * * *', duration: 1h}\n")
    assert err.where is not None and err.where.endswith("freeze_windows[1].name")


def test_conditions_must_select_and_act(tmp_path: Path) -> None:
    err = load_error(tmp_path, "actions:\n  restart_pod:\n    conditions: [{require_approval: true}]\n")
    assert err.where is not None and err.where.endswith("actions.restart_pod.conditions[0]")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="not found"):
        load_policy(tmp_path / "nope.yaml")


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    p = load_policy(write(tmp_path, ""))
    assert p.mode == "enforce" and p.actions == {} and p.limits.max_actions_per_incident == 8


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("1d", 86400),
                                               ("1.5h", 5400), (90, 90), ("250ms", 0.25)])
def test_parse_duration(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5 minutes", "-1s", "", True, -3, None, "1w"])
def test_parse_duration_refuses(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_cron_latest_start_and_day_rules() -> None:
    spec = parse_cron("*/15 9-17 * * 1-5")
    assert spec.minutes == {0, 15, 30, 45} and spec.hours == set(range(9, 18))
    assert spec.weekdays == {1, 2, 3, 4, 5}
    now = datetime(2025, 1, 4, 12, 0)  # a Saturday: the latest start is Friday 17:45
    assert spec.latest_start(now, lookback_days=2) == datetime(2025, 1, 3, 17, 45)
    sunday = parse_cron("0 0 * * 7")
    assert sunday.weekdays == {0}


def test_fixed_freeze_window_naive_times_are_utc() -> None:
    p = policy_from({"freeze_windows": [{"name": "w", "start": "2025-01-01T10:00:00",
                                         "end": "2025-01-01T11:00:00"}]})
    w = p.freeze_windows[0]
    assert w.active_at(datetime(2025, 1, 1, 10, 30, tzinfo=UTC))
    assert not w.active_at(datetime(2025, 1, 1, 11, 0, tzinfo=UTC))

"""Every environment variable opsmedic reads for its settings, by name: each reaches the field it has always
set, through `core.settings` (the one reader), and the daemon's flags still override its variables.

The lists below are literal on purpose: renaming a variable, or adding a setting without its variable
here, fails this test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agents.llm import LlmConfig, build_llm
from core.settings import DaemonVariables, MonitorSettings, Settings, load_settings
from opsmedic.chat.roles import Roles
from opsmedic.daemon.config import ENV, load_daemon_config

# variable -> (value, Settings field, expected value of that field)
SHARED: dict[str, tuple[str, str, Any]] = {
    "OPSMEDIC_DATABASE_URL": ("sqlite:///state/ops.db", "database_url", "sqlite:///state/ops.db"),
    "OPSMEDIC_DATA_DIR": ("var/data", "data_dir", Path("var/data")),
    "OPSMEDIC_POLICY_FILE": ("my-policy.yaml", "policy_file", Path("my-policy.yaml")),
    "OPSMEDIC_RUNBOOKS_DIR": ("books", "runbooks_dir", Path("books")),
    "OPSMEDIC_QDRANT_URL": ("http://qdrant:6333", "qdrant_url", "http://qdrant:6333"),
    "OPSMEDIC_MODEL_REGISTRY": ("sandbox", "model_registry", "sandbox"),
    "OPSMEDIC_CLUSTER_BACKEND": ("sandbox", "cluster_backend", "sandbox"),
    "OPSMEDIC_TELEMETRY": ("prometheus", "telemetry", "prometheus"),
    "OPSMEDIC_RETRIEVAL": ("false", "retrieval", False),
    "OPSMEDIC_SETTLE_SCALE": ("0.05", "settle_scale", 0.05),
    "OPSMEDIC_LLM_BASE_URL": ("http://llm.local/v1", "llm_base_url", "http://llm.local/v1"),
    "OPSMEDIC_LLM_MODEL": ("model-x", "llm_model", "model-x"),
    "OPSMEDIC_CHAT_USER": ("alice", "chat_user", "alice"),
    "OPSMEDIC_OTEL_EXPORTER": (" OTLP ", "otel_exporter", "otlp"),  # any case, as it was always read
    "OPSMEDIC_OTEL_ENDPOINT": ("http://otel:4318/v1/traces", "otel_endpoint", "http://otel:4318/v1/traces"),
    "OPSMEDIC_CACHE_DIR": ("/var/cache/router", "cache_dir", Path("/var/cache/router")),
    "OPSMEDIC_CACHE": ("/var/cache/opsmedic", "cache", Path("/var/cache/opsmedic")),
    "OPSMEDIC_CA_BUNDLE": ("/etc/opsmedic/ca.pem", "ca_bundle", Path("/etc/opsmedic/ca.pem")),
    "OPSMEDIC_LLM_TIMEOUT_S": ("7.5", "llm_timeout_s", 7.5),
    "OPSMEDIC_LLM_MAX_ATTEMPTS": ("5", "llm_max_attempts", 5),
    "OPSMEDIC_LLM_MAX_STEPS": ("4.0", "llm_max_steps", 4),  # read as a number, then a count
    "OPSMEDIC_LLM_MAX_TOKENS": ("9000", "llm_max_tokens", 9000),
    "OPSMEDIC_LLM_WALL_BUDGET_S": ("30", "llm_wall_budget_s", 30.0),
    "OPSMEDIC_LLM_PRICE_IN_PER_MTOK": ("3", "llm_price_in_per_mtok", 3.0),
    "OPSMEDIC_LLM_PRICE_OUT_PER_MTOK": ("15", "llm_price_out_per_mtok", 15.0),
    "OPSMEDIC_PAGERDUTY_URL": ("https://events.example/v2/enqueue", "pagerduty_url",
                               "https://events.example/v2/enqueue"),
    "OPSMEDIC_PAGERDUTY_SOURCE": ("opsmedic-prod", "pagerduty_source", "opsmedic-prod"),
    "OPSMEDIC_RETRAIN_JOB_TEMPLATE": ("/etc/opsmedic/retrain.yaml", "retrain_job_template",
                                      "/etc/opsmedic/retrain.yaml"),
    "OPSMEDIC_CHAT_OPERATORS": ("alice, U123", "chat_operators", "alice, U123"),
    "OPSMEDIC_CHAT_VIEWERS": ("bob", "chat_viewers", "bob"),
}
SECRETS: dict[str, tuple[str, str]] = {  # variable -> (value, Settings field)
    "OPSMEDIC_SLACK_SIGNING_SECRET": ("signing-secret-value", "slack_signing_secret"),
    "OPSMEDIC_SLACK_BOT_TOKEN": ("xoxb-not-a-real-token", "slack_bot_token"),
    "OPENAI_API_KEY": ("sk-not-a-real-key", "openai_api_key"),
    "OPSMEDIC_PAGERDUTY_ROUTING_KEY": ("R0123456789abcdef0123456789abcdef", "pagerduty_routing_key"),
}
# the daemon's variables -> (value, DaemonConfig field, expected value); paths are filled in per test
DAEMON: dict[str, tuple[str, str, Any]] = {
    "OPSMEDIC_DAEMON_HOST": ("0.0.0.0", "host", "0.0.0.0"),
    "OPSMEDIC_DAEMON_PORT": ("9090", "port", 9090),
    "OPSMEDIC_DAEMON_SCENARIO": ("{file}", "scenario", "{file}"),
    "OPSMEDIC_DAEMON_SPEED": ("2.5", "speed", 2.5),
    "OPSMEDIC_DAEMON_SOURCE": ("sandbox", "source", "sandbox"),
    "OPSMEDIC_DAEMON_FRESH": ("yes", "fresh", True),
    "OPSMEDIC_DAEMON_POLL_INTERVAL": ("3", "poll_interval_s", 3.0),
    "OPSMEDIC_DAEMON_READ_TIMEOUT": ("4", "read_timeout_s", 4.0),
    "OPSMEDIC_PROMETHEUS_URL": ("http://prometheus:9090", "prometheus_url", "http://prometheus:9090"),
    "OPSMEDIC_DRIFT_WINDOWS": ("{dir}", "drift_windows", "{dir}"),
    "OPSMEDIC_MLFLOW_TRACKING_URI": ("http://mlflow:5000", "mlflow_tracking_uri", "http://mlflow:5000"),
    "OPSMEDIC_DRIFT_WINDOWS_FROM": ("MLflow", "drift_windows_from", "mlflow"),
    "OPSMEDIC_KUBECONFIG": ("{file}", "kubeconfig", "{file}"),
    "OPSMEDIC_KUBE_CONTEXT": ("prod", "kube_context", "prod"),
    "OPSMEDIC_NAMESPACE": ("ml", "namespace", "ml"),
    "OPSMEDIC_DAEMON_LEADER_ELECTION": ("off", "leader_election", False),
    "OPSMEDIC_DAEMON_LEASE_NAME": ("the-lease", "lease_name", "the-lease"),
    "OPSMEDIC_DAEMON_LEASE_NAMESPACE": ("ops", "lease_namespace", "ops"),
    "OPSMEDIC_DAEMON_LEASE_DURATION": ("20", "lease_duration_s", 20.0),
    "OPSMEDIC_DAEMON_IDENTITY": ("replica-7", "identity", "replica-7"),
    "OPSMEDIC_SHARDS": ("4", "shards", 4),
    "OPSMEDIC_SHARD_BY": ("cloud.google.com/gke-nodepool", "shard_by", "cloud.google.com/gke-nodepool"),
    "OPSMEDIC_DAEMON_ALERTS_QUEUE_MAX": ("50", "alerts_queue_max", 50),
    "OPSMEDIC_DAEMON_ALERTS_ON_STANDBY": ("accept", "alerts_on_standby", "accept"),
    "OPSMEDIC_SLACK_CHANNEL": ("C0123", "slack_channel", "C0123"),
    "OPSMEDIC_SLACK_API_URL": ("http://slack.local/api", "slack_api_url", "http://slack.local/api/"),
    "OPSMEDIC_SLACK_RETRIES": ("2", "slack_retries", 2),
    "OPSMEDIC_SLACK_BACKOFF": ("0.25", "slack_backoff_s", 0.25),
    "OPSMEDIC_API_TOKENS": ("aaaaaaaaaaaaaaaa:alice", "api_tokens", {"aaaaaaaaaaaaaaaa": "alice"}),
    "OPSMEDIC_ALERT_TOKENS": ("bbbbbbbbbbbbbbbb", "alert_tokens", ["bbbbbbbbbbbbbbbb"]),
    "OPSMEDIC_PUBLIC_READ": ("true", "public_read", True),
    "OPSMEDIC_DAEMON_ALERTS_PORT": ("9091", "alerts_port", 9091),
    "OPSMEDIC_LOG_LEVEL": ("debug", "log_level", "DEBUG"),
    "OPSMEDIC_DAEMON_SHUTDOWN_TIMEOUT": ("12", "shutdown_timeout_s", 12.0),
}


def test_the_lists_cover_every_setting() -> None:
    listed = {f for _, f, _ in SHARED.values()} | {f for _, f in SECRETS.values()} | {"monitor", "daemon"}
    assert listed == set(Settings.model_fields)
    assert {var for var in DAEMON} == set(ENV.values()) == set(DaemonVariables.names().values())
    assert {f for _, f, _ in DAEMON.values()} == set(ENV)


def test_each_shared_variable_reaches_its_field(tmp_cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var, (value, _, _) in SHARED.items():
        monkeypatch.setenv(var, value)
    for var, (value, _) in SECRETS.items():
        monkeypatch.setenv(var, value)
    s = load_settings()
    for var, (_, field, expected) in SHARED.items():
        assert getattr(s, field) == expected, var
    for var, (value, field) in SECRETS.items():
        assert getattr(s, field).get_secret_value() == value, var
        assert value not in repr(s), var


@pytest.mark.parametrize("field", sorted(MonitorSettings.model_fields))
def test_each_monitor_variable_reaches_its_threshold(tmp_cwd: Path, monkeypatch: pytest.MonkeyPatch,
                                                     field: str) -> None:
    default = getattr(MonitorSettings(), field)
    value: Any = {"drift_binning": "equal_width", "drift_engine": "numpy"}.get(field)
    if value is None:
        value = default + 3 if field == "drift_bins" else default + 1.5
    monkeypatch.setenv(f"OPSMEDIC_MONITOR__{field.upper()}", str(value))
    assert getattr(load_settings().monitor, field) == value


def test_the_llm_variables_reach_the_llm_config(tmp_cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in SHARED if v.startswith("OPSMEDIC_LLM_")] + ["OPSMEDIC_CA_BUNDLE"]:
        monkeypatch.setenv(var, SHARED[var][0])
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-a-real-key")
    llm = build_llm(load_settings())
    assert llm is not None
    assert llm.config == LlmConfig(
        base_url="http://llm.local/v1", model="model-x", api_key="sk-not-a-real-key", request_timeout_s=7.5,
        max_attempts=5, max_steps=4, max_tokens=9000, wall_budget_s=30.0, price_in_per_mtok=3.0,
        price_out_per_mtok=15.0, ca_bundle="/etc/opsmedic/ca.pem")


def test_an_empty_llm_variable_means_its_default(tmp_cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSMEDIC_LLM_TIMEOUT_S", " ")
    monkeypatch.setenv("OPSMEDIC_LLM_MAX_STEPS", "")
    s = load_settings()
    assert (s.llm_timeout_s, s.llm_max_steps) == (20.0, 6)


def test_the_chat_variables_reach_the_roles(tmp_cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSMEDIC_CHAT_OPERATORS", "alice, U123")
    monkeypatch.setenv("OPSMEDIC_CHAT_VIEWERS", "bob")
    for roles in (Roles.from_env(), Roles.from_settings(load_settings())):
        assert roles.can_act("alice") and roles.can_act("U123") and not roles.can_act("bob")
        assert roles.can_ask("bob") and not roles.can_ask("carol")


def _daemon_values(tmp: Path) -> dict[str, tuple[str, str, Any]]:
    f = tmp / "file.yaml"
    f.write_text("x: 1\n", encoding="utf-8")
    d = tmp / "windows"
    d.mkdir()
    fill = {"{file}": str(f), "{dir}": str(d)}
    return {var: (fill.get(value, value), field,
                  Path(fill[expected]) if isinstance(expected, str) and expected in fill else expected)
            for var, (value, field, expected) in DAEMON.items()}


def test_each_daemon_variable_reaches_its_field(tmp_cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    values = _daemon_values(tmp_cwd)
    for var, (value, _, _) in values.items():
        monkeypatch.setenv(var, value)
    # the process's environment, read by core.settings: directly, or as Settings.daemon
    for config in (load_daemon_config(), load_daemon_config(variables=load_settings().daemon)):
        for var, (_, field, expected) in values.items():
            assert getattr(config, field) == expected, var
    # an explicit mapping (what tests and tools pass) is read the same way
    explicit = load_daemon_config(env={var: value for var, (value, _, _) in values.items()})
    assert explicit == config


def test_flags_override_the_daemon_variables(tmp_cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSMEDIC_DAEMON_PORT", "9090")
    monkeypatch.setenv("OPSMEDIC_DAEMON_HOST", "0.0.0.0")
    monkeypatch.setenv("OPSMEDIC_PUBLIC_READ", "false")
    config = load_daemon_config({"port": 1234, "public_read": True, "host": None})
    assert (config.port, config.public_read, config.host) == (1234, True, "0.0.0.0")


def test_daemon_tokens_stay_secret_and_env_only(tmp_cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSMEDIC_API_TOKENS", "aaaaaaaaaaaaaaaa:alice")
    s = load_settings()
    assert "aaaaaaaaaaaaaaaa" not in repr(s)
    (tmp_cwd / "opsmedic.toml").write_text('[daemon]\nhost = "0.0.0.0"\n', encoding="utf-8")
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="environment only"):
        load_settings()

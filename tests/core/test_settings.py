"""Settings: defaults, OPSMEDIC_* environment variables, opsmedic.toml, precedence, secrets only from the
environment, and ConfigErrors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError, InputError
from core.settings import MonitorSettings, Settings, load_settings


def test_defaults(tmp_cwd: Path) -> None:
    s = load_settings()
    assert s.database_url is None and s.policy_file is None and s.qdrant_url is None
    assert s.data_dir == Path(".opsmedic") and s.sqlite_path() == Path(".opsmedic/opsmedic.db")
    assert s.monitor == MonitorSettings()
    assert s.slack_signing_secret is None and s.slack_bot_token is None


def test_monitor_defaults_are_the_documented_thresholds() -> None:
    m = MonitorSettings()
    assert (m.drift_psi, m.drift_kl) == (0.2, 0.15)  # DESIGN.md: PSI > 0.2 or KL > 0.15
    assert m.thermal_hold_s > 0 and m.node_hold_s > 0 and m.reopen_quiet_s > 0


def test_environment(tmp_cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSMEDIC_DATABASE_URL", "sqlite:///state/ops.db")
    monkeypatch.setenv("OPSMEDIC_POLICY_FILE", "my-policy.yaml")
    monkeypatch.setenv("OPSMEDIC_MONITOR__GPU_TEMP_C", "80")
    monkeypatch.setenv("OPSMEDIC_MONITOR__THERMAL_HOLD_S", "30")
    s = load_settings()
    assert s.sqlite_path() == Path("state/ops.db") and s.policy_file == Path("my-policy.yaml")
    assert (s.monitor.gpu_temp_c, s.monitor.thermal_hold_s) == (80.0, 30.0)
    assert s.monitor.node_hold_s == MonitorSettings().node_hold_s  # the other thresholds keep their defaults


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///a/b.db", Path("a/b.db")),
        ("sqlite:////abs/b.db", Path("/abs/b.db")),
        ("plain/file.db", Path("plain/file.db")),
        ("postgresql://u@h/db", Path(".opsmedic/opsmedic.db")),  # not a file: local state stays in data_dir
    ],
)
def test_sqlite_path(url: str, path: Path) -> None:
    assert Settings(database_url=url).sqlite_path() == path


def test_opsmedic_toml(tmp_cwd: Path) -> None:
    (tmp_cwd / "opsmedic.toml").write_text(
        'data_dir = "state"\npolicy_file = "p.yaml"\n[monitor]\nthermal_hold_s = 30\n', encoding="utf-8"
    )
    s = load_settings()
    assert s.data_dir == Path("state") and s.policy_file == Path("p.yaml") and s.monitor.thermal_hold_s == 30
    assert s.sqlite_path() == Path("state/opsmedic.db")


def test_environment_beats_toml_and_arguments_beat_both(
    tmp_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_cwd / "opsmedic.toml").write_text(
        'data_dir = "from-toml"\nqdrant_url = "http://toml:6333"\n', encoding="utf-8"
    )
    monkeypatch.setenv("OPSMEDIC_DATA_DIR", "from-env")
    s = load_settings()
    assert s.data_dir == Path("from-env") and s.qdrant_url == "http://toml:6333"
    assert load_settings(data_dir="from-arg").data_dir == Path("from-arg")


@pytest.mark.parametrize("key", ["slack_signing_secret", "slack_bot_token"])
def test_secrets_in_toml_are_refused(tmp_cwd: Path, key: str) -> None:
    (tmp_cwd / "opsmedic.toml").write_text(f'{key} = "xoxb-not-here"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert isinstance(info.value, InputError)
    assert (
        "opsmedic.toml" in str(info.value)
        and key in str(info.value)
        and "environment only" in str(info.value)
    )


def test_secrets_from_the_environment_are_never_printed(
    tmp_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPSMEDIC_SLACK_SIGNING_SECRET", "s3cr3t-value")
    s = load_settings()
    assert s.slack_signing_secret is not None and s.slack_signing_secret.get_secret_value() == "s3cr3t-value"
    assert "s3cr3t-value" not in repr(s) and "s3cr3t-value" not in str(s.model_dump())


def test_bad_values_name_the_key(tmp_cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSMEDIC_MONITOR__GPU_TEMP_C", "hot")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "monitor.gpu_temp_c" in str(info.value) and "OPSMEDIC_MONITOR__GPU_TEMP_C" in str(info.value)


def test_invalid_toml_names_the_file(tmp_cwd: Path) -> None:
    (tmp_cwd / "opsmedic.toml").write_text("data_dir = \n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert (
        "opsmedic.toml" in str(info.value)
        and "invalid TOML" in str(info.value)
        and "line 1" in str(info.value)
    )


def test_unknown_toml_key_is_an_error(tmp_cwd: Path) -> None:
    (tmp_cwd / "opsmedic.toml").write_text("databse_url = 'typo'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="databse_url"):
        load_settings()


def test_the_cli_reports_a_config_error_as_bad_input(
    tmp_cwd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from opsmedic.cli import main

    (tmp_cwd / "opsmedic.toml").write_text('slack_bot_token = "x"\n', encoding="utf-8")
    assert main(["approvals", "list"]) == 2
    assert "slack_bot_token" in capsys.readouterr().err

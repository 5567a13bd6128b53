"""Settings: `OPSMEDIC_*` environment variables and an optional `opsmedic.toml`, validated by pydantic.

Layer: bottom (no I/O beyond reading the settings themselves). Secrets — the OpenAI key and the Slack
signing secret and bot token — are read from the environment only, never from the TOML file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from core.errors import ConfigError


class MonitorSettings(BaseModel):
    """Detector thresholds and hysteresis windows (seconds). The windows are why a short spike is not an
    incident: a condition must hold for its whole window."""

    gpu_temp_c: float = 85.0
    thermal_hold_s: float = 60.0
    node_hold_s: float = 30.0
    pod_hold_s: float = 60.0
    slo_hold_s: float = 120.0
    drift_hold_s: float = 300.0
    drift_psi: float = 0.2
    drift_kl: float = 0.15
    # reference-quantile bins (the textbook PSI) or Evidently's equal-width ones: see tools/drift.py
    drift_binning: Literal["quantile", "equal_width"] = "quantile"
    drift_bins: int = Field(default=10, ge=2, le=100)
    drift_engine: Literal["evidently", "numpy"] = "evidently"
    leak_window_s: float = 120.0
    leak_gib_per_min: float = 0.5
    stall_window_s: float = 120.0
    stall_util_pct: float = 5.0
    nvlink_window_s: float = 120.0
    nvlink_errors_per_min: float = 10.0
    nvlink_hold_s: float = 60.0
    reopen_quiet_s: float = 60.0


class DatabaseTarget(BaseModel):
    """Where opsmedic keeps its state (checkpoints, approvals, audit log, execution ledger).

    `kind` is "sqlite" (the default: a file) or "postgres"; `location` is what the stores and
    `agents.graph.checkpointer_for` accept: the SQLite file's path, or the `postgresql://` URL."""

    kind: Literal["sqlite", "postgres"]
    path: Path | None = None
    url: str | None = None

    @property
    def location(self) -> str | Path:
        if self.kind == "postgres":
            assert self.url is not None
            return self.url
        assert self.path is not None
        return self.path

    @property
    def is_postgres(self) -> bool:
        return self.kind == "postgres"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPSMEDIC_", env_nested_delimiter="__", toml_file="opsmedic.toml",
                                      extra="forbid")

    database_url: str | None = Field(default=None, description="sqlite:///path or postgresql://...")
    data_dir: Path = Field(default=Path(".opsmedic"))
    policy_file: Path | None = None
    runbooks_dir: Path | None = None
    qdrant_url: str | None = None
    model_registry: Literal["mlflow", "auto", "sandbox"] = Field(
        default="mlflow", description="scenario runs: a real MLflow registry holds the scenario's models (auto: only "
        "for scenarios with model faults; sandbox: the simulator's own registry)")
    cluster_backend: Literal["kubernetes", "sandbox"] = Field(
        default="kubernetes", description="scenario runs: act through the sandbox's Kubernetes API (official "
        "client) or on the simulator directly")
    telemetry: Literal["sandbox", "prometheus"] = Field(
        default="sandbox", description="scenario runs: read the sandbox directly, or through its Prometheus exporter")
    retrieval: bool = Field(default=True, description="cite runbooks found by hybrid retrieval (Qdrant)")
    llm_base_url: str | None = None
    llm_model: str | None = None
    ca_bundle: Path | None = Field(
        default=None, description="PEM file of the certificate authorities every HTTPS client (Prometheus, Slack, "
        "PagerDuty, the LLM endpoint) trusts instead of the system's; certificates are always verified")
    slack_signing_secret: SecretStr | None = None
    slack_bot_token: SecretStr | None = None
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)

    def database(self) -> DatabaseTarget:
        """The database `database_url` names: Postgres for `postgresql://` (or `postgres://`) URLs, else
        the SQLite file of `sqlite_path()`."""
        url = self.database_url
        if url and url.startswith(("postgresql://", "postgres://")):
            return DatabaseTarget(kind="postgres",
                                  url="postgresql://" + url.removeprefix("postgresql://").removeprefix("postgres://"))
        if url and url.startswith(("postgresql:", "postgres:")):
            raise ConfigError("expected postgresql://user:pass@host:port/db", "setting database_url")
        return DatabaseTarget(kind="sqlite", path=self.sqlite_path())

    def sqlite_path(self) -> Path:
        url = self.database_url
        if url and url.startswith("sqlite:///"):
            return Path(url.removeprefix("sqlite:///"))
        if url and not url.startswith(("sqlite:", "postgresql:", "postgres:")):
            return Path(url)
        return self.data_dir / "opsmedic.db"


_SECRETS = ("slack_signing_secret", "slack_bot_token")


def load_settings(**overrides: Any) -> Settings:
    """Settings from environment and opsmedic.toml; a bad value is a ConfigError naming the key."""
    toml = Path("opsmedic.toml")
    data: dict[str, Any] = {}
    if toml.exists():
        import tomllib

        try:
            data = tomllib.loads(toml.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid TOML: {exc}", str(toml)) from None
        for key in _SECRETS:
            if key in data:
                raise ConfigError("secrets are read from the environment only, not from opsmedic.toml",
                                  f"{toml}: {key}")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        msg = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
        top = str(err["loc"][0]) if err["loc"] else ""
        if top in data:  # the bad value came from the file, not the environment: say so
            raise ConfigError(msg, f"{toml}: {key}") from None
        raise ConfigError(msg, f"setting {key} (OPSMEDIC_{key.upper().replace('.', '__')})") from None

"""Settings: `OPSMEDIC_*` environment variables and an optional `opsmedic.toml`, validated by pydantic.

Layer: bottom (no I/O beyond reading the settings themselves). This module is the one reader of the
environment for opsmedic's settings: the shared ones (`Settings`' own fields, `OPSMEDIC_<FIELD>`,
`OPSMEDIC_MONITOR__<FIELD>`), the LLM's budgets (`OPSMEDIC_LLM_*`, built into `agents.llm.LlmConfig`), the
chat's access lists (`OPSMEDIC_CHAT_OPERATORS` / `_VIEWERS`, for `opsmedic.chat.roles`) and the daemon's
variables under the names they have always had (`DaemonVariables`, validated by `opsmedic.daemon.config`
with the command-line flags over them).

Secrets — the OpenAI key, the Slack signing secret and bot token, the API and alert tokens, the
PagerDuty routing key — and access
lists are read from the environment only, never from the TOML file; so are the daemon's variables (its
configuration is flags over the environment).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
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


def _var(name: str) -> Any:
    return Field(default=None, validation_alias=AliasChoices(name))


class DaemonVariables(BaseModel):
    """The daemon's environment variables as given (strings; unset or empty: None). `opsmedic.daemon.config`
    validates them, with the command-line flags over them, and names the variable in its errors. The tokens
    are secrets: kept as `SecretStr` so that no repr shows them."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    host: str | None = _var("OPSMEDIC_DAEMON_HOST")
    port: str | None = _var("OPSMEDIC_DAEMON_PORT")
    scenario: str | None = _var("OPSMEDIC_DAEMON_SCENARIO")
    speed: str | None = _var("OPSMEDIC_DAEMON_SPEED")
    source: str | None = _var("OPSMEDIC_DAEMON_SOURCE")
    fresh: str | None = _var("OPSMEDIC_DAEMON_FRESH")
    poll_interval_s: str | None = _var("OPSMEDIC_DAEMON_POLL_INTERVAL")
    read_timeout_s: str | None = _var("OPSMEDIC_DAEMON_READ_TIMEOUT")
    prometheus_url: str | None = _var("OPSMEDIC_PROMETHEUS_URL")
    drift_windows: str | None = _var("OPSMEDIC_DRIFT_WINDOWS")
    drift_windows_from: str | None = _var("OPSMEDIC_DRIFT_WINDOWS_FROM")
    mlflow_tracking_uri: str | None = _var("OPSMEDIC_MLFLOW_TRACKING_URI")
    kubeconfig: str | None = _var("OPSMEDIC_KUBECONFIG")
    kube_context: str | None = _var("OPSMEDIC_KUBE_CONTEXT")
    namespace: str | None = _var("OPSMEDIC_NAMESPACE")
    leader_election: str | None = _var("OPSMEDIC_DAEMON_LEADER_ELECTION")
    lease_name: str | None = _var("OPSMEDIC_DAEMON_LEASE_NAME")
    lease_namespace: str | None = _var("OPSMEDIC_DAEMON_LEASE_NAMESPACE")
    lease_duration_s: str | None = _var("OPSMEDIC_DAEMON_LEASE_DURATION")
    identity: str | None = _var("OPSMEDIC_DAEMON_IDENTITY")
    shards: str | None = _var("OPSMEDIC_SHARDS")
    shard_by: str | None = _var("OPSMEDIC_SHARD_BY")
    alerts_queue_max: str | None = _var("OPSMEDIC_DAEMON_ALERTS_QUEUE_MAX")
    alerts_on_standby: str | None = _var("OPSMEDIC_DAEMON_ALERTS_ON_STANDBY")
    slack_channel: str | None = _var("OPSMEDIC_SLACK_CHANNEL")
    slack_api_url: str | None = _var("OPSMEDIC_SLACK_API_URL")
    slack_retries: str | None = _var("OPSMEDIC_SLACK_RETRIES")
    slack_backoff_s: str | None = _var("OPSMEDIC_SLACK_BACKOFF")
    api_tokens: SecretStr | None = _var("OPSMEDIC_API_TOKENS")
    alert_tokens: SecretStr | None = _var("OPSMEDIC_ALERT_TOKENS")
    public_read: str | None = _var("OPSMEDIC_PUBLIC_READ")
    alerts_port: str | None = _var("OPSMEDIC_DAEMON_ALERTS_PORT")
    log_level: str | None = _var("OPSMEDIC_LOG_LEVEL")
    shutdown_timeout_s: str | None = _var("OPSMEDIC_DAEMON_SHUTDOWN_TIMEOUT")

    @classmethod
    def names(cls) -> dict[str, str]:
        """field -> environment variable."""
        out: dict[str, str] = {}
        for name, f in cls.model_fields.items():
            alias = f.validation_alias
            assert isinstance(alias, AliasChoices)
            out[name] = str(alias.choices[0])
        return out

    @classmethod
    def read(cls, env: Mapping[str, str] | None = None) -> DaemonVariables:
        """The variables set (and not empty) in `env`, by default the process's environment."""
        env = os.environ if env is None else env
        return cls.model_validate({var: env[var] for var in cls.names().values() if env.get(var, "") != ""})

    def given(self) -> dict[str, str]:
        """field -> value of the variables that are set, secrets unwrapped (for validation, not for logs)."""
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            v = getattr(self, name)
            if v is not None:
                out[name] = v.get_secret_value() if isinstance(v, SecretStr) else str(v)
        return out


class _DaemonVariablesSource(PydanticBaseSettingsSource):
    """`Settings.daemon` from the daemon's variables, under their own names."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found = DaemonVariables.read()
        return {"daemon": found} if found.given() else {}


_LLM_INTS = frozenset({"llm_max_attempts", "llm_max_steps", "llm_max_tokens"})


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
    settle_scale: float = Field(
        default=1.0, gt=0.0, le=1.0, description="multiplies every action's settle and deadline time and the "
        "verifier's poll interval (core.actions.ActionSpec), so that a test cluster or a demo sees verification "
        "and resolution in seconds; for test clusters and demos only, never needed in production (1: the catalogue's "
        "times)")
    llm_base_url: str | None = None
    llm_model: str | None = None
    ca_bundle: Path | None = Field(
        default=None, description="PEM file of the certificate authorities every HTTPS client (Prometheus, Slack, "
        "PagerDuty, the LLM endpoint) trusts instead of the system's; certificates are always verified")
    slack_signing_secret: SecretStr | None = None
    slack_bot_token: SecretStr | None = None
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)
    # the LLM's budgets and prices (agents.llm.LlmConfig): per call of llm_diagnose / llm_plan
    llm_timeout_s: float = 20.0
    llm_max_attempts: int = 3  # per HTTP call, transient errors only
    llm_max_steps: int = 6  # model turns in one tool-calling loop
    llm_max_tokens: int = 16_000  # prompt + completion tokens in one loop
    llm_wall_budget_s: float = 60.0  # one loop, retries included
    llm_price_in_per_mtok: float = 0.0  # USD per million prompt tokens (0: unknown, cost not estimated)
    llm_price_out_per_mtok: float = 0.0
    openai_api_key: SecretStr | None = Field(default=None,
                                             validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key"))
    # the Kubernetes world's pager and retraining (tools.pagerduty, tools.k8s_retrain), for the daemon
    pagerduty_routing_key: SecretStr | None = None
    pagerduty_url: str | None = None
    pagerduty_source: str | None = None
    retrain_job_template: str | None = None
    # who may use the chat (opsmedic.chat.roles): comma-separated user ids; `*` is everyone
    chat_operators: str | None = None
    chat_viewers: str | None = None
    chat_user: str | None = None  # who `opsmedic chat` speaks as (default: the login name)
    # opsmedic's own traces (infra.tracing): none | console | otlp; the OTLP traces URL overrides
    # OTEL_EXPORTER_OTLP_ENDPOINT, which the exporter itself honours
    otel_exporter: Literal["none", "console", "otlp"] = "none"
    otel_endpoint: str | None = None
    # caches: the chat router's example matrix (OPSMEDIC_CACHE_DIR, else $XDG_CACHE_HOME/opsmedic) and the
    # root under which scripts/build-kube-apiserver.sh keeps its binaries (OPSMEDIC_CACHE, else ~/.cache/opsmedic)
    cache_dir: Path | None = None
    cache: Path | None = None
    daemon: DaemonVariables = Field(default_factory=DaemonVariables)

    @field_validator("otel_exporter", mode="before")
    @classmethod
    def _otel_exporter(cls, v: Any) -> Any:
        # as it has always been read: any case, surrounding blanks, and empty for none
        return (v.strip().lower() or "none") if isinstance(v, str) else v

    @field_validator(*sorted(_LLM_INTS | {"llm_timeout_s", "llm_wall_budget_s", "llm_price_in_per_mtok",
                                          "llm_price_out_per_mtok"}), mode="before")
    @classmethod
    def _llm_number(cls, v: Any, info: ValidationInfo) -> Any:
        # as the LLM's variables have always been read: empty means the default, and a count may be "3.0"
        if isinstance(v, str):
            if not v.strip():
                return cls.model_fields[str(info.field_name)].default
            if info.field_name in _LLM_INTS:
                try:
                    return int(float(v))
                except ValueError:
                    return v  # pydantic says what is wrong with it
        return v

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _DaemonVariablesSource(settings_cls), TomlConfigSettingsSource(settings_cls)

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


_SECRETS = ("slack_signing_secret", "slack_bot_token", "openai_api_key", "OPENAI_API_KEY", "pagerduty_routing_key")
_ENV_ONLY = ("chat_operators", "chat_viewers", "daemon")


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
        for key in _ENV_ONLY:
            if key in data:
                raise ConfigError("access lists and the daemon's settings are read from the environment only, "
                                  "not from opsmedic.toml", f"{toml}: {key}")
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

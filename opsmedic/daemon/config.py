"""The daemon's configuration: command-line flags over `OPSMEDIC_*` environment variables, validated.

Layer: interfaces (`opsmedic.daemon`); pydantic and `core` only. Settings shared with the rest of opsmedic
(database, policy file, monitor thresholds, Slack secrets) are `core.settings.Settings`' own fields; this
module holds what only the daemon needs. Every field has one environment variable, declared and read by
`core.settings.DaemonVariables` (`ENV` below), and most have a flag; a bad value is a `ConfigError` that
names the flag or variable it came from, so that a typo in a Deployment manifest fails the pod at start
with a line that says what to fix, instead of a traceback. What the platform tells the pod about itself
(`POD_NAME`, `POD_NAMESPACE` from the downward API, `KUBERNETES_SERVICE_HOST`) is read here, where it is
used: it is where we run, not a setting.

Secrets (`OPSMEDIC_API_TOKENS`, `OPSMEDIC_ALERT_TOKENS`, the Slack signing secret and bot token) come from
the environment only.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from core.errors import ConfigError
from core.settings import DaemonVariables
from opsmedic.daemon.tokens import parse_alert_tokens, parse_api_tokens

Source = Literal["auto", "sandbox", "kubernetes"]
ALL_NAMESPACES = "*"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")

# field -> environment variable (declared once, in `core.settings.DaemonVariables`, which reads them)
ENV: dict[str, str] = DaemonVariables.names()
# field -> command-line flag (for error messages)
FLAGS: dict[str, str] = {"host": "--host", "port": "--port", "scenario": "--scenario", "speed": "--speed",
                         "source": "--source", "fresh": "--fresh", "kubeconfig": "--kubeconfig",
                         "poll_interval_s": "--poll-interval", "identity": "--identity",
                         "leader_election": "--leader-election", "log_level": "--log-level",
                         "drift_windows": "--drift-windows", "drift_windows_from": "--drift-windows-from",
                         "mlflow_tracking_uri": "--mlflow-tracking-uri",
                         "alerts_port": "--alerts-port", "public_read": "--public-read"}


def _default_identity() -> str:
    # The pod name in Kubernetes (the Deployment sets POD_NAME from the downward API), else host:pid, so
    # that two daemons on one machine never share an identity (they would both think they hold the lease).
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}:{os.getpid()}"


class DaemonConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    scenario: Path | None = None  # sandbox source: the scenario to run (default: the bundled xid79 one)
    speed: float = Field(1.0, gt=0.0, le=100_000.0)  # sandbox source: simulated seconds per wall second
    source: Source = "auto"
    fresh: bool = False  # sandbox source: start a new simulated world instead of resuming the last one
    poll_interval_s: float | None = Field(None, gt=0.0, le=3600.0)  # kubernetes source: seconds per tick
    read_timeout_s: float = Field(10.0, gt=0.0, le=600.0)  # kubernetes source: one telemetry read, at most
    prometheus_url: str | None = None  # kubernetes source: GPUs and models from Prometheus (DCGM exporter)
    drift_windows: Path | None = None  # kubernetes source: <dir>/<model>/{reference,current}.{parquet,csv}
    mlflow_tracking_uri: str | None = None  # kubernetes source: model actions on this MLflow registry
    # where reference windows come from: the serving version's MLflow run (its training dataset), the files,
    # or (auto) MLflow when a tracking URI is set, falling back to the files model by model
    drift_windows_from: Literal["auto", "files", "mlflow"] = "auto"
    kubeconfig: Path | None = None
    kube_context: str | None = None
    namespace: str = "default"  # `*`: watch every namespace (node actions cluster-wide; see KubeWorld)
    leader_election: bool | None = None  # default: on with the kubernetes source, off in the sandbox
    lease_name: str = "opsmedic-leader"
    lease_namespace: str | None = None  # default: `namespace`
    lease_duration_s: float = Field(15.0, ge=1.0, le=600.0)
    identity: str = Field(default_factory=_default_identity, min_length=1)
    # past one replica (opsmedic.daemon.shards): 1 keeps the single leader Lease; more splits the nodes
    shards: int = Field(1, ge=1, le=1024)
    shard_by: str = Field("hash", min_length=1, max_length=316)  # `hash` or a node label key
    alerts_queue_max: int = Field(2000, ge=1, le=1_000_000)  # webhook bodies waiting to be ingested
    alerts_on_standby: Literal["redirect", "accept"] = "redirect"
    slack_channel: str | None = None
    slack_api_url: str = "https://slack.com/api/"
    slack_retries: int = Field(4, ge=0, le=20)
    slack_backoff_s: float = Field(0.5, ge=0.0, le=60.0)
    api_tokens: dict[str, str] = Field(default_factory=dict)
    # bearer tokens Alertmanager sends (`http_config.authorization`); none: the alert route answers 503
    alert_tokens: list[str] = Field(default_factory=list)
    # reads (/api/*, /console/api/*, /docs) without a token or console session: only for loopback demos
    public_read: bool = False
    # the alert route on its own port (then not on `port`), for a NetworkPolicy that admits Alertmanager only
    alerts_port: int | None = Field(None, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    shutdown_timeout_s: float = Field(30.0, ge=0.0, le=3600.0)

    @model_validator(mode="before")
    @classmethod
    def _every_namespace(cls, v: Any) -> Any:
        # `*` is no namespace a Lease can live in: the lease goes to the pod's own namespace (or default)
        if isinstance(v, dict) and v.get("namespace") == ALL_NAMESPACES and not v.get("lease_namespace"):
            v = {**v, "lease_namespace": os.environ.get("POD_NAMESPACE") or "default"}
        return v

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        if v != ALL_NAMESPACES and not _DNS_LABEL.match(v):
            raise ValueError("must be a namespace name (lower-case letters, digits and '-') or * for every "
                             "namespace")
        return v

    @field_validator("shard_by")
    @classmethod
    def _shard_by(cls, v: str) -> str:
        if v != "hash" and not _LABEL_KEY.match(v):
            raise ValueError("must be hash or a node label key such as cloud.google.com/gke-nodepool")
        return v

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _tokens(cls, v: Any) -> Any:
        return parse_api_tokens(v) if isinstance(v, str) else v

    @field_validator("alert_tokens", mode="before")
    @classmethod
    def _alert_tokens(cls, v: Any) -> Any:
        return parse_alert_tokens(v) if isinstance(v, str) else v

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("slack_api_url")
    @classmethod
    def _slack_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL such as https://slack.com/api/")
        return v if v.endswith("/") else v + "/"

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _mlflow_uri(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^(https?|sqlite|file|postgresql|mysql|databricks)(\+\w+)?:", v):
            raise ValueError("must be an MLflow tracking URI such as http://mlflow:5000 or sqlite:///mlflow.db")
        return v

    @field_validator("drift_windows_from", mode="before")
    @classmethod
    def _windows_from(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("drift_windows_from")
    @classmethod
    def _windows_from_needs_mlflow(cls, v: str, info: ValidationInfo) -> str:
        if v == "mlflow" and not info.data.get("mlflow_tracking_uri"):
            raise ValueError("mlflow needs an MLflow registry: set --mlflow-tracking-uri "
                             "(OPSMEDIC_MLFLOW_TRACKING_URI)")
        return v

    @field_validator("scenario", "kubeconfig")
    @classmethod
    def _exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"no such file: {v}")
        return v

    @field_validator("drift_windows")
    @classmethod
    def _is_dir(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_dir():
            raise ValueError(f"no such directory: {v}")
        return v

    @field_validator("slack_channel")
    @classmethod
    def _slack_channel(cls, v: str | None) -> str | None:
        if v is not None and v[:1] not in ("C", "G", "D"):
            raise ValueError("must be a channel id (C0123...), not a channel name")
        return v

    def resolved_source(self, env: Mapping[str, str] | None = None) -> Literal["sandbox", "kubernetes"]:
        """`auto` means kubernetes when a kubeconfig is configured or we run inside a pod, else sandbox.
        Plain `KUBECONFIG` does not count: a developer's shell must never point a demo at a real cluster."""
        if self.source != "auto":
            return self.source
        env = os.environ if env is None else env
        if self.kubeconfig is not None or in_cluster(env):
            return "kubernetes"
        return "sandbox"

    def leader_election_on(self, env: Mapping[str, str] | None = None) -> bool:
        if self.leader_election is not None:
            return self.leader_election
        return self.resolved_source(env) == "kubernetes"


SA_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def in_cluster(env: Mapping[str, str]) -> bool:
    return bool(env.get("KUBERNETES_SERVICE_HOST")) and SA_TOKEN.is_file()


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _env_value(field: str, raw: str) -> Any:
    if field in ("fresh", "leader_election", "public_read"):
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        return raw  # let pydantic say what is wrong with it
    return raw


def load_daemon_config(cli: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None, *,
                       variables: DaemonVariables | None = None) -> DaemonConfig:
    """Flags (`cli`, None values ignored) over environment variables over defaults; a bad value raises
    ConfigError naming where it came from. The variables are `variables` (`Settings.daemon`), else those of
    `env`, else the process's (both read by `core.settings`)."""
    if variables is None:
        variables = DaemonVariables.read(env)
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for field, raw in variables.given().items():
        values[field] = _env_value(field, raw)
        origin[field] = ENV[field]
    for field, value in (cli or {}).items():
        if value is not None:
            values[field] = value
            origin[field] = FLAGS.get(field, field)
    try:
        return DaemonConfig.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        where = origin.get(field) or ENV.get(field) or "daemon configuration"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if field in ("api_tokens", "alert_tokens"):  # never echo a secret back into the logs
            raise ConfigError(msg, f"setting {field} ({where})") from None
        got = values.get(field)
        shown = f" (got {got!r})" if got is not None and field in values else ""
        raise ConfigError(msg + shown, f"setting {field} ({where})") from None


def slack_secrets(settings: Any) -> tuple[str | None, str | None]:
    """(signing secret, bot token) from `core.settings` (environment only), unwrapped."""
    def get(name: str) -> str | None:
        v = getattr(settings, name, None)
        if isinstance(v, SecretStr):
            return v.get_secret_value() or None
        return str(v) if v else None

    return get("slack_signing_secret"), get("slack_bot_token")

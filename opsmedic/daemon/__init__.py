"""`opsmedic daemon`: the unattended remediation service (HTTP API, Slack approvals, leader election).

Layer: interfaces (may import agents, policies, tools, knowledge, sandbox). This package's `__init__`
imports nothing heavy, so that `opsmedic --help` stays fast: the CLI calls `add_parser(subparsers)`,
and `cmd_daemon` imports FastAPI, uvicorn, LangGraph and the rest only when the daemon really starts.

Modules: `config` (flags over the variables `core.settings` reads, validated), `tokens` (bearer-token
lists), `service` (`DaemonService`: builds the rooms below, starts and stops them), `loop` (the one thread
that drives graphs, and leadership), `loop_state` (what the loop shares with other threads), `graphs`
(start, resume, retry, adopt graphs), `alerts` (Alertmanager intake), `intake` (its table), `conversations`
(Slack and chat), `views` and `decisions` (what the HTTP API, Slack and the console read and decide),
`health` (liveness, readiness, scrape-time metrics), `grouping` (the monitor's key of an incident), `app`
(the FastAPI app), `edge` (authentication, limits), `slack` (Bolt app, signatures, Block Kit messages),
`leader` (Lease-based leadership), `world` (the sandbox or a Kubernetes cluster), `metrics` (Prometheus),
`logging_json` (structured logs), `demo` (`opsmedic demo --console`), `bench` / `fleet_bench` (benchmarks).
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "cmd_daemon"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `opsmedic daemon` on the CLI's subparsers."""
    d: argparse.ArgumentParser = subparsers.add_parser(
        "daemon", help="run the unattended remediation service (HTTP API, Slack approvals)",
        description="Watch a cluster (the sandbox by default), heal what the policy allows, ask for approval "
                    "where it must. Flags override OPSMEDIC_DAEMON_* environment variables; secrets "
                    "(OPSMEDIC_SLACK_*, OPSMEDIC_API_TOKENS, OPSMEDIC_ALERT_TOKENS) come from the environment only.")
    d.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    d.add_argument("--port", type=int, help="port to listen on (default 8080; 0 picks a free one and logs it)")
    d.add_argument("--scenario", metavar="FILE", help="sandbox: the scenario to run (default: xid79-fell-off-bus)")
    d.add_argument("--speed", type=float, help="sandbox: simulated seconds per wall second (default 1)")
    d.add_argument("--fresh", action="store_true", default=None,
                   help="sandbox: start a new simulated world instead of resuming the saved one")
    d.add_argument("--source", choices=["auto", "sandbox", "kubernetes"],
                   help="auto (default): kubernetes with --kubeconfig or inside a pod, else the sandbox")
    d.add_argument("--kubeconfig", metavar="FILE", help="watch the cluster this kubeconfig points at")
    d.add_argument("--poll-interval", dest="poll_interval_s", type=float, metavar="SECONDS",
                   help="kubernetes: seconds between monitor ticks (default 10)")
    d.add_argument("--identity", help="this replica's name in the leader Lease (default: $POD_NAME or host:pid)")
    d.add_argument("--leader-election", dest="leader_election", action=argparse.BooleanOptionalAction,
                   default=None, help="elect one acting replica through a Lease (default: on for kubernetes)")
    d.add_argument("--drift-windows", dest="drift_windows", metavar="DIR",
                   help="score data drift from DIR/<model>/{reference,current}.{parquet,csv} (kubernetes source; "
                        "the sandbox draws its own windows)")
    d.add_argument("--mlflow-tracking-uri", dest="mlflow_tracking_uri", metavar="URI",
                   help="kubernetes source: roll back, retrain and promote models on this MLflow registry")
    d.add_argument("--drift-windows-from", dest="drift_windows_from", choices=["auto", "files", "mlflow"],
                   help="reference windows: the training dataset logged in the serving version's MLflow run "
                        "(mlflow), the --drift-windows files (files), or auto (default): MLflow with "
                        "--mlflow-tracking-uri, falling back to the files model by model")
    d.add_argument("--alerts-port", dest="alerts_port", type=int, metavar="PORT",
                   help="take Alertmanager webhooks on this port only (then not on --port), so that a "
                        "NetworkPolicy can admit Alertmanager alone to it")
    d.add_argument("--public-read", dest="public_read", action="store_true", default=None,
                   help="serve reads (/api/*, the console's data, /docs) without a token: loopback demos only")
    d.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    d.set_defaults(func=cmd_daemon)
    return d


_CLI_FIELDS = ("host", "port", "scenario", "speed", "fresh", "source", "kubeconfig", "poll_interval_s", "identity",
               "leader_election", "log_level", "drift_windows", "drift_windows_from", "mlflow_tracking_uri",
               "alerts_port", "public_read")


def cmd_daemon(args: argparse.Namespace) -> int:
    """Validate the configuration, build the service (bad config: ConfigError, exit 2), serve until SIGTERM."""
    from opsmedic.daemon.config import load_daemon_config

    config = load_daemon_config({k: getattr(args, k, None) for k in _CLI_FIELDS})
    from opsmedic.daemon.server import serve

    return serve(config)

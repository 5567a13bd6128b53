"""The `opsmedic` command line.

Layer: interfaces, the top (nothing imports it but `opsmedic.__main__`). Built on argparse so that
`opsmedic --help` and `--version` answer without importing any heavy library: every subcommand imports what
it needs inside its handler. Exit codes: 0 success,
1 a check failed (a scenario, the audit chain, a policy decision that is not allow), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import InputError, OpsmedicError
from opsmedic import __version__

# Telemetry of the libraries we use must never phone home.
_QUIET = {
    "DO_NOT_TRACK": "true",  # Evidently checks presence; MLflow honours only "true"
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "ANONYMIZED_TELEMETRY": "False",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
for _var, _val in _QUIET.items():
    os.environ.setdefault(_var, _val)

def _print(*parts: object) -> None:
    print(*parts, flush=True)


def _err(message: str) -> None:
    print(f"opsmedic: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- eval


def cmd_eval(args: argparse.Namespace) -> int:
    from opsmedic.evaluation import run_eval
    from sandbox.scenario import load_scenario, scenario_files

    files = scenario_files(args.paths)
    scenarios = [load_scenario(f) for f in files]  # all validated before any runs: bad input is exit 2
    names = [s.name for s in scenarios]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"scenario name(s) used twice: {', '.join(dup)}", "eval")
    db = _db_path_if_configured()
    if not args.json:
        _print(f"{'scenario':<28} {'result':<6} {'root cause':<26} {'detect':>7} {'decide':>8}  actions")

    def progress(r: Any) -> None:
        if args.json:
            return
        det = f"{r.detected_after_s:.0f}s" if r.detected_after_s is not None else "-"
        dec = f"{r.decision_ms:.0f}ms" if r.decision_ms is not None else "-"
        _print(f"{r.name:<28} {'PASS' if r.passed else 'FAIL':<6} {str(r.root_cause or '-'):<26} {det:>7} "
               f"{dec:>8}  {', '.join(r.actions) or '-'}")
        for f in r.failures:
            _print(f"{'':<28} - {f}")

    report = run_eval(scenarios, agent=args.agent, db_path=db, progress=progress)
    if args.json:
        _print(json.dumps(report.public()))
    else:
        _print(f"\n{report.agent}: {report.passed}/{report.scenarios} scenarios passed; unsafe actions "
               f"{report.unsafe_actions}; policy bypasses {report.policy_bypasses}")
    return 0 if report.passed == report.scenarios else 1


def _db_path_if_configured() -> Path | None:
    from core.settings import load_settings

    settings = load_settings()
    # a postgresql:// URL: the run's stores go to Postgres (the driver reads the settings), scratch to a tmp dir
    if not settings.database_url or settings.database().is_postgres:
        return None
    return settings.sqlite_path()


def _db_path(arg: str | None) -> Path:
    from core.settings import load_settings

    settings = load_settings(database_url=arg) if arg else load_settings()
    return settings.sqlite_path()


def _db(arg: str | None) -> str | Path:
    """The database `--db` (or the settings) names, as the stores take it: the SQLite file's Path, or a
    `postgresql://` URL."""
    from core.settings import load_settings

    settings = load_settings(database_url=arg) if arg else load_settings()
    return settings.database().location


# ---------------------------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from opsmedic.evaluation import run_scenario
    from sandbox.scenario import DEFAULT_DEMO, bundled_scenarios, format_duration, load_scenario

    scenarios = bundled_scenarios()
    if args.list:
        for name, path in scenarios.items():
            sc = load_scenario(path)
            _print(f"{name:<26} {sc.description}")
        return 0
    if args.console:
        from opsmedic.daemon.demo import run_demo_console

        run_demo_console(args.scenario, args.host, args.port, args.speed)
        return 0
    path = Path(args.scenario) if args.scenario else scenarios[DEFAULT_DEMO]
    sc = load_scenario(path)
    db = _db_path(None)
    w = ", ".join(f"{x.name} ({x.kind}, {x.replicas}x{x.gpus_per_replica} GPU)" for x in sc.workloads)
    _print(f"opsmedic demo: {sc.name}\n  {sc.description}\n"
           f"  cluster: {sc.cluster.nodes} nodes x {sc.cluster.gpus_per_node} {sc.cluster.gpu_model}; workloads: {w}")
    for f in sc.faults:
        _print(f"  fault injected at {format_duration(f.at)}: {f.type} on {f.target} {f.params or ''}")
    _print(f"  approver: {sc.approvals}; simulated duration {format_duration(sc.duration)}; "
           f"audit database {db}\n")
    _print("What each agent did, as it happened (simulated time):")
    result = run_scenario(sc, db_path=db, narrate=lambda line: _print("  " + line), approver=args.approver,
                          approval_timeout_s=args.approval_timeout)
    _print("\nIncident timeline:")
    if not result.incidents:
        _print("  no incident was opened: nothing abnormal held long enough to act on")
    for inc in result.incidents:
        _print(f"  {inc.id} on {inc.resource}: {inc.root_cause} -> {inc.outcome}; "
               f"actions {', '.join(inc.actions) or 'none'}; decision in {inc.decision_ms} ms")
    verdict = "PASS" if result.passed else "FAIL"
    _print(f"\nScore against the scenario's expectations: {verdict}"
           + ("" if result.passed else " - " + "; ".join(result.failures)))
    _print(f"Recovered: {result.recovered}; unsafe actions {result.unsafe_actions}; policy bypasses "
           f"{result.policy_bypasses}; simulated {format_duration(result.sim_seconds)} in {result.wall_seconds:.2f}s")
    _print(f"Audit chain: `opsmedic audit verify --db {db}`; story: `opsmedic audit show --incident ID`")
    return 0 if result.passed else 1


# --------------------------------------------------------------------------------------------- bench


def cmd_bench(args: argparse.Namespace) -> int:
    from opsmedic.bench import run_bench

    figures = run_bench(only=args.only)
    if args.json:
        _print(json.dumps(figures))
    else:
        for k, v in figures.items():
            _print(f"{k:<28} {v}")
    return 0


# ----------------------------------------------------------------------------------- audit / policy


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from policies.audit import AuditLog

    db = _db(args.db)
    if isinstance(db, Path) and not db.exists():
        raise InputError("no audit database here", str(db))
    with AuditLog(db) as log:
        v = log.verify()
        where = log.path  # a Postgres URL without its password
    if v.ok:
        legacy = f"; {v.legacy_entries} written in chain format 1" if v.legacy_entries else ""
        _print(f"audit chain intact: {v.count} entries ({where}){legacy}")
        return 0
    _print(f"audit chain BROKEN at entry {v.first_bad_seq}: {v.reason} ({where})")
    return 1


def cmd_audit_show(args: argparse.Namespace) -> int:
    from policies.audit import AuditLog

    db = _db(args.db)
    with AuditLog(db) as log:
        entries = log.entries(incident_id=args.incident)
        if args.incident is None:
            entries = entries[-50:]
    if not entries:
        _print("no audit entries" + (f" for incident {args.incident}" if args.incident else ""))
        return 1
    for e in entries:
        sim = f"t={e.sim_s:.0f}s " if e.sim_s is not None else ""
        _print(f"#{e.seq:<5} {e.at} {sim}{e.incident_id or '-'} {e.kind}: {_summarise(e.payload)}")
    return 0


def _summarise(p: dict[str, Any]) -> str:
    if "action" in p and isinstance(p["action"], dict):
        a = p["action"]
        head = f"{a.get('name')}@{a.get('target')}"
        for k in ("verdict", "ok", "detail", "rule"):
            if k in p:
                head += f" {k}={p[k]}"
        return head
    for k in ("root_cause", "reason", "outcome", "rationale", "resource"):
        if k in p:
            return f"{k}={p[k]}"
    return json.dumps(p, default=str)[:160]


def cmd_policy_check(args: argparse.Namespace) -> int:
    from policies.model import load_policy

    pol = load_policy(args.file)
    _print(f"{args.file}: valid policy (mode {pol.mode}, {len(pol.actions)} action rules)")
    return 0


def cmd_policy_explain(args: argparse.Namespace) -> int:
    from core.domain import Action
    from policies.engine import DecisionContext, PolicyEngine
    from policies.model import load_policy

    name, _, target = args.action.partition("@")
    if not target:
        raise InputError("expected ACTION@TARGET, e.g. drain_node@node-3", "policy explain")
    try:
        action = Action(name=name, target=target)  # type: ignore[arg-type]
    except Exception:
        raise InputError(f"{name!r} is not a whitelisted action", "policy explain") from None
    engine = PolicyEngine(load_policy(args.policy))
    ctx = DecisionContext(now_s=0.0, total_nodes=args.nodes, total_gpus=args.nodes * args.gpus_per_node,
                          nodes_out_of_service=list(args.out or []),
                          retrain_blocked={m: "its current window failed data validation"
                                           for m in (getattr(args, "invalid_data", None) or [])})
    _print(engine.explain(action, ctx))
    return 0


# ------------------------------------------------------------------------------------------ approvals


def cmd_approvals_list(args: argparse.Namespace) -> int:
    from policies.approvals import ApprovalStore

    db = _db(args.db)
    with ApprovalStore(db) as store:
        reqs = store.list(status=None if args.all else "pending")
    if not reqs:
        _print("no pending approvals" if not args.all else "no approvals")
        return 0
    for r in reqs:
        _print(f"{r.id}  {r.status.value:<9} {r.action.key:<32} risk {r.risk.value:<8} incident {r.incident_id} "
               f"approvers {', '.join(r.approvers)} expires t={r.expires_at_s:.0f}s")
    return 0


def _approval_now(store: Any, request_id: str) -> float:
    """Approvals made from the CLI use the clock of the request: epoch seconds for the daemon, simulated
    seconds for a sandbox run (whose requests were made near t=0)."""
    import time

    req = store.get(request_id)
    if req is None:
        raise InputError(f"no approval request {request_id}", "approvals")
    return time.time() if req.requested_at_s > 1e9 else req.requested_at_s


def cmd_approve(args: argparse.Namespace) -> int:
    from policies.approvals import ApprovalStore
    from policies.audit import AuditLog

    db = _db(args.db)
    with ApprovalStore(db) as store, AuditLog(db) as audit:
        req = store.approve(args.id, by=args.as_user, now_s=_approval_now(store, args.id), audit=audit)
    _print(f"{req.id}: {req.status.value} by {', '.join(req.approved_by)} ({req.action.key})")
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    from policies.approvals import ApprovalStore
    from policies.audit import AuditLog

    db = _db(args.db)
    with ApprovalStore(db) as store, AuditLog(db) as audit:
        req = store.reject(args.id, by=args.as_user, reason=args.reason, now_s=_approval_now(store, args.id),
                           audit=audit)
    _print(f"{req.id}: rejected by {args.as_user} ({req.action.key}): {args.reason}")
    return 0


# ------------------------------------------------------------------------------------------- runbooks


def _index_location() -> str:
    from core.settings import load_settings
    from knowledge.cli import default_index_location

    settings = load_settings()
    return settings.qdrant_url or default_index_location(settings.data_dir)


def cmd_runbooks(args: argparse.Namespace) -> int:
    from knowledge import cli as kcli

    if args.runbooks_cmd == "lint":
        return kcli.lint_command(args.folder)
    if args.runbooks_cmd == "index":
        return kcli.index_command(_index_location(), args.folder)
    return kcli.search_command(args.query, top_k=args.top, as_json=args.json, location=_index_location(),
                               root_cause=args.root_cause, resource_kind=args.resource_kind)


def cmd_sandbox_serve(args: argparse.Namespace) -> int:
    from opsmedic.sandbox_serve import serve
    from sandbox.scenario import bundled_scenarios

    path = Path(args.scenario)
    if not path.exists() and args.scenario in bundled_scenarios():
        path = bundled_scenarios()[args.scenario]
    return serve(path, port=args.port, metrics_port=args.metrics_port,
                 kubeconfig=Path(args.kubeconfig) if args.kubeconfig else None, speed=args.speed, say=_print,
                 apiserver=args.apiserver, mlflow_tracking_uri=args.mlflow_tracking_uri)


# --------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="opsmedic",
        description="Autonomous, governed self-healing for GPU clusters that serve and train ML models.",
    )
    p.add_argument("--version", action="version", version=f"opsmedic {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("demo", help="run a scenario in the sandbox and narrate what the agents do")
    d.add_argument("--scenario", metavar="FILE", help="a scenario file (default: a GPU falling off the bus)")
    d.add_argument("--list", action="store_true", help="list the bundled scenarios")
    d.add_argument("--approver", choices=["scenario", "external"], default="scenario",
                   help="external: pause at each approval until someone runs `opsmedic approve|reject`")
    d.add_argument("--approval-timeout", type=float, default=600.0, metavar="SECONDS")
    d.add_argument("--console", action="store_true",
                   help="serve the web console on the scenario running in real time (prints its URL; Ctrl-C stops)")
    d.add_argument("--host", default="127.0.0.1", help="with --console: the address to listen on")
    d.add_argument("--port", type=int, default=8080, help="with --console: the port (0 picks a free one)")
    d.add_argument("--speed", type=float, default=10.0, help="with --console: simulated seconds per wall second")
    d.set_defaults(func=cmd_demo)

    e = sub.add_parser("eval", help="run scenario files or folders and print a scorecard")
    e.add_argument("paths", nargs="+", metavar="PATH")
    e.add_argument("--json", action="store_true", help="print one JSON object (schema in SCENARIOS.md)")
    e.add_argument("--agent", choices=["opsmedic", "baseline"], default="opsmedic")
    e.set_defaults(func=cmd_eval)

    b = sub.add_parser("bench", help="measure the performance figures in the README")
    b.add_argument("--json", action="store_true")
    from opsmedic.bench import GROUPS  # a table of names: importing it loads nothing heavy

    b.add_argument("--only", metavar="GROUP", help=" | ".join(GROUPS))
    b.set_defaults(func=cmd_bench)

    a = sub.add_parser("audit", help="the hash-chained audit log")
    asub = a.add_subparsers(dest="audit_cmd", metavar="SUBCOMMAND", required=True)
    av = asub.add_parser("verify", help="check the hash chain: exit 0 intact, 1 broken")
    av.add_argument("--db", metavar="URL")
    av.set_defaults(func=cmd_audit_verify)
    ash = asub.add_parser("show", help="print the audit entries (of one incident)")
    ash.add_argument("--incident", metavar="ID")
    ash.add_argument("--db", metavar="URL")
    ash.set_defaults(func=cmd_audit_show)

    po = sub.add_parser("policy", help="validate and explain policies")
    posub = po.add_subparsers(dest="policy_cmd", metavar="SUBCOMMAND", required=True)
    pc = posub.add_parser("check", help="validate a policy file")
    pc.add_argument("file")
    pc.set_defaults(func=cmd_policy_check)
    pe = posub.add_parser("explain", help="what the policy would decide for ACTION@TARGET, and why")
    pe.add_argument("action", metavar="ACTION@TARGET")
    pe.add_argument("--policy", metavar="FILE")
    pe.add_argument("--nodes", type=int, default=8, help="cluster size to assume (default 8)")
    pe.add_argument("--gpus-per-node", type=int, default=8)
    pe.add_argument("--out", nargs="*", metavar="NODE", help="nodes already out of service")
    pe.add_argument("--invalid-data", nargs="*", metavar="MODEL",
                    help="models whose input data fails validation (retraining them is blocked)")
    pe.set_defaults(func=cmd_policy_explain)

    ap = sub.add_parser("approvals", help="pending approval requests")
    apsub = ap.add_subparsers(dest="approvals_cmd", metavar="SUBCOMMAND", required=True)
    al = apsub.add_parser("list")
    al.add_argument("--all", action="store_true", help="include decided requests")
    al.add_argument("--db", metavar="URL")
    al.set_defaults(func=cmd_approvals_list)
    apr = sub.add_parser("approve", help="approve a pending request")
    apr.add_argument("id")
    apr.add_argument("--as", dest="as_user", required=True, metavar="USER")
    apr.add_argument("--db", metavar="URL")
    apr.set_defaults(func=cmd_approve)
    rj = sub.add_parser("reject", help="reject a pending request")
    rj.add_argument("id")
    rj.add_argument("--as", dest="as_user", required=True, metavar="USER")
    rj.add_argument("--reason", required=True)
    rj.add_argument("--db", metavar="URL")
    rj.set_defaults(func=cmd_reject)

    sb = sub.add_parser("sandbox", help="the simulated GPU cluster")
    sbsub = sb.add_subparsers(dest="sandbox_cmd", metavar="SUBCOMMAND", required=True)
    ss = sbsub.add_parser("serve", help="serve a scenario's cluster: Kubernetes API and /metrics on 127.0.0.1")
    ss.add_argument("scenario", metavar="SCENARIO", help="a scenario file or a bundled scenario's name")
    ss.add_argument("--port", type=int, default=0, help="Kubernetes API port (default: any free port)")
    ss.add_argument("--metrics-port", type=int, default=0)
    ss.add_argument("--kubeconfig", metavar="PATH", help="where to write the kubeconfig")
    ss.add_argument("--speed", type=float, default=10.0, help="simulated seconds per real second")
    ss.add_argument("--apiserver", choices=("embedded", "real"), default="embedded",
                    help="embedded: the sandbox's in-process Kubernetes API; real: etcd + kube-apiserver from "
                         "scripts/build-kube-apiserver.sh, the simulator playing kubelets and controllers")
    ss.add_argument("--mlflow-tracking-uri", metavar="URI",
                    help="keep the scenario's models in this MLflow registry and serve each by its alias "
                         "(a restarted serving pod loads what `champion` names)")
    ss.set_defaults(func=cmd_sandbox_serve)

    from opsmedic.chat.cli import add_parser as add_chat_parser
    from opsmedic.daemon import add_parser as add_daemon_parser
    from opsmedic.gpu_watch import add_parser as add_gpu_parser

    add_chat_parser(sub)
    add_daemon_parser(sub)
    add_gpu_parser(sub)

    rb = sub.add_parser("runbooks", help="lint, index and search the runbook library")
    rbsub = rb.add_subparsers(dest="runbooks_cmd", metavar="SUBCOMMAND", required=True)
    rl = rbsub.add_parser("lint", help="validate every runbook")
    rl.add_argument("folder", nargs="?")
    rl.set_defaults(func=cmd_runbooks)
    ri = rbsub.add_parser("index", help="(re)build the Qdrant index when runbooks changed")
    ri.add_argument("--folder")
    ri.set_defaults(func=cmd_runbooks)
    rs = rbsub.add_parser("search", help="hybrid search over the runbooks")
    rs.add_argument("query")
    rs.add_argument("--json", action="store_true")
    rs.add_argument("--top", type=int, default=3)
    rs.add_argument("--root-cause", metavar="LABEL", help="only runbooks for this root-cause label")
    rs.add_argument("--resource-kind", metavar="KIND", help="gpu | node | pod | model | workload")
    rs.set_defaults(func=cmd_runbooks)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        from infra.tracing import setup_tracing_from_env

        setup_tracing_from_env()  # OPSMEDIC_OTEL_EXPORTER=console|otlp: traces for this command (none otherwise)
        return int(args.func(args))
    except InputError as exc:
        _err(str(exc))
        return 2
    except OpsmedicError as exc:
        _err(str(exc))
        return 1
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())

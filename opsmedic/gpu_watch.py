"""`opsmedic gpu`: this machine's GPUs through NVML, watched by the monitor, and optionally exported.

Layer: interfaces. The node-level end of the telemetry: one NVML session (`tools.telemetry.NvmlCollector`,
XID events on its background thread) sampled every `--interval` seconds, each sample fed to the same
`agents.monitor.Monitor` the daemon runs, and every incident it opens printed (a line, or JSON with
`--json`). `--metrics-port` also serves the readings at `/metrics` under the DCGM exporter's metric names
(`sandbox.exporter`'s renderer), so that a Prometheus, and a central opsmedic daemon reading it, see this
node as they would see one running NVIDIA's dcgm-exporter.

Without a GPU (`--source auto`, the default) it says why and plays the recorded H100 trace instead
(`tools.telemetry.NvmlReplaySource`); `--source nvml` refuses to fall back: it says why, exit 1. A failed sample is
counted and skipped: the watch goes on. Nothing here acts: acting is the daemon's, through the governor.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["add_parser", "cmd_gpu", "watch"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    g: argparse.ArgumentParser = subparsers.add_parser(
        "gpu", help="watch this machine's GPUs through NVML (or the recorded H100 trace) with the monitor",
        description="Sample this machine's GPUs through NVML, feed the monitor, print the incidents it opens; "
                    "optionally serve the readings as DCGM-style Prometheus metrics. Never acts.")
    g.add_argument("--source", choices=["auto", "nvml", "replay"], default="auto",
                   help="auto: NVML when a driver and GPU are here, else the recorded H100 trace (default)")
    g.add_argument("--node", default=None, help="the node name to report (default: this host's name)")
    g.add_argument("--interval", type=float, default=10.0, metavar="SECONDS", help="seconds between samples")
    g.add_argument("--count", type=int, default=0, metavar="N", help="stop after N samples (default: run on)")
    g.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="also serve /metrics on 127.0.0.1:PORT (0 picks a free port)")
    g.add_argument("--json", action="store_true", help="one JSON object per line instead of text")
    g.set_defaults(func=cmd_gpu)
    return g


def _open_source(kind: str, node: str) -> tuple[Any, str]:
    from tools.telemetry import NvmlCollector, NvmlReplaySource, open_gpu_source

    if kind == "nvml":
        return NvmlCollector(node=node), "nvml"  # NvmlUnavailable (a ToolError): the CLI prints why, exit 1
    if kind == "replay":
        return NvmlReplaySource(node=node), "replay"
    source = open_gpu_source(node)
    return source, "nvml" if isinstance(source, NvmlCollector) else "replay"


def watch(source: Any, *, interval_s: float, count: int, emit: Callable[[dict[str, Any]], None],
          stop: threading.Event | None = None, on_snapshot: Callable[[Any], None] | None = None,
          clock: Callable[[], float] = time.time) -> dict[str, int]:
    """Sample `source` every `interval_s` until `count` samples (0: until `stop`), feed the monitor and
    `emit` each incident it opens. Returns counts: samples, incidents, skipped (failed samples)."""
    from agents.monitor import Monitor
    from core.settings import load_settings

    monitor = Monitor(load_settings().monitor, id_prefix=f"gpu-{source.node}")
    stop = stop or threading.Event()
    done = {"samples": 0, "incidents": 0, "skipped": 0}
    tick = max(interval_s, 1.0)  # the monitor's hysteresis counts in ticks; replay may run faster than real
    while not stop.is_set() and (count <= 0 or done["samples"] < count):
        started = time.monotonic()
        try:
            snap = source.snapshot()
        except Exception as exc:  # noqa: BLE001 - one bad read (a GPU mid-reset) skips a sample, not the watch
            done["skipped"] += 1
            emit({"event": "sample_failed", "error": f"{type(exc).__name__}: {exc}"[:300]})
        else:
            snap = snap.model_copy(update={"at_s": clock()}) if interval_s > 0 else snap
            if on_snapshot is not None:
                on_snapshot(snap)
            done["samples"] += 1
            for inc in monitor.observe(snap, tick):
                done["incidents"] += 1
                emit({"event": "incident", "id": inc.id, "resource": inc.resource, "at_s": inc.opened_at_s,
                      "signals": [{"kind": s.kind, "detail": s.detail} for s in inc.signals]})
        stop.wait(max(0.0, interval_s - (time.monotonic() - started)))
    return done


def cmd_gpu(args: argparse.Namespace, out: TextIO | None = None) -> int:
    import socket

    from core.errors import InputError

    out = out or sys.stdout
    if args.interval < 0 or args.count < 0:
        raise InputError("--interval and --count must not be negative", "opsmedic gpu")
    node = args.node or socket.gethostname()
    source, kind = _open_source(args.source, node)

    def emit(obj: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(obj, default=str), file=out, flush=True)
        elif obj["event"] == "incident":
            details = "; ".join(dict.fromkeys(s["detail"] for s in obj["signals"]))
            print(f"incident {obj['id']} on {obj['resource']}: {details}", file=out, flush=True)
        else:
            print(f"sample skipped: {obj['error']}", file=out, flush=True)

    server = latest = None
    stop = threading.Event()
    try:
        gpus = len(source.sample())
        header: dict[str, Any] = {"event": "watching", "node": node, "source": kind, "gpus": gpus,
                                  "interval_s": args.interval}
        if args.metrics_port is not None:
            from sandbox.exporter import LatestSnapshot, serve

            latest = LatestSnapshot()
            server = serve(latest, port=args.metrics_port)
            header["metrics"] = server.url
        if args.json:
            emit(header)
        else:
            print(f"watching {gpus} GPU(s) on {node} via {kind}, every {args.interval:g}s"
                  + (f"; metrics at {header['metrics']}" if "metrics" in header else "")
                  + ("" if args.count else "; Ctrl-C stops"), file=out, flush=True)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            done = watch(source, interval_s=args.interval, count=args.count, emit=emit, stop=stop,
                         on_snapshot=latest.set if latest is not None else None)
        except KeyboardInterrupt:
            done = {}
        if done:
            summary = {"event": "done", **done}
            if args.json:
                emit(summary)
            else:
                print(f"{done['samples']} sample(s), {done['incidents']} incident(s), {done['skipped']} skipped",
                      file=out, flush=True)
        return 0
    finally:
        if server is not None:
            server.close()
        source.close()

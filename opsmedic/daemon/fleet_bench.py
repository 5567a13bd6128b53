"""`bench_fleet()`: the figures at fleet size — 1,250 nodes x 8 GPUs — measured on the code the daemon runs.

Layer: interfaces (`opsmedic.daemon`); imports sandbox and agents. Three figures, each of one part:

- `sim_speedup_10k_gpus`: simulated seconds per wall second of the sandbox stepping that fleet and building
  its snapshot (`Simulator.step` + `Simulator.snapshot`), i.e. how fast eval and the sandbox daemon can run it.
- `monitor_tick_ms_10k_gpus` (p50) and `_p95`: `agents.monitor.Monitor.observe` alone on those snapshots — the one
  monitor that eval and the daemon run.
- `daemon_tick_ms_10k_gpus_p50/_p95`: `Loop.tick`, one loop iteration of the daemon, from a snapshot
  already read: leadership check, the monitor, grouping, incident dispatch (the XID opens an incident whose
  graph runs inside the tick that opens it), resumption, the world's state write. The read (step and
  snapshot) happens before the tick and is not in this figure; the reads of a real cluster are reported
  apart (`k8s_read_ms_10k_gpus`, `prometheus_read_ms_10k_gpus`). The tick holds the garbage collector; the
  collection it held back runs after it, as the daemon's loop runs it (`Loop.collect`), and is reported
  apart too: `daemon_gc_ms_10k_gpus_p50/_p95`.

`bench_fleet_shards()` (group `fleet_shards`) measures the same tick in one replica of a sharded deployment
(`OPSMEDIC_SHARDS=4`) that holds one shard: `daemon_tick_ms_10k_gpus_shard_of_4_p50/_p95`.

`bench_fleet_reads()` (group `fleet_reads`) measures those reads: `k8s_read_ms_10k_gpus` is
`KubernetesTelemetry` as the daemon runs it (watch caches, see `tools.k8s_informer`) against the sandbox
Kubernetes API serving the fleet, with listing every tick beside it; `prometheus_read_ms_10k_gpus` is
`PrometheusSource` against Debian's Prometheus scraping the sandbox exporter at that size (skipped, with
the reason, where `prometheus` is not installed).

Each tick figure comes with its CPU-clock twin (`*_cpu*`, `time.thread_time`): on a shared machine the wall
figures also carry other processes' load; the CPU figures are what the code itself costs (graph steps that
wait on a lock or the disk count in wall time only). `daemon_rss_mib_10k_gpus` is the process's resident memory after
the daemon's ticks, its simulated world included.

The fleet is `fleet_scenario()`: 100 training jobs x 8 GPUs and 500 inference replicas, an XID 79 on one GPU
among 10,000 at 2 minutes and a power-cap decoy on another node.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.domain import ClusterSnapshot
    from sandbox.scenario import Scenario

FLEET_SCENARIO: dict[str, Any] = {
    "name": "fleet-10k-xid",
    "description": "An XID 79 on one GPU among 10,000, with a power-cap decoy on another node.",
    "seed": 16,
    "cluster": {"nodes": 1250, "gpus_per_node": 8},
    "workloads": [
        {"name": "llama-ft", "kind": "training", "replicas": 100, "gpus_per_replica": 8, "checkpoint_every": "10m"},
        {"name": "fraud-model", "kind": "inference", "replicas": 500, "gpus_per_replica": 1, "model": "fraud-model",
         "current_version": 3, "slo": {"latency_p95_ms": 50, "accuracy_min": 0.90}},
    ],
    "placement": {"llama-ft-7": "node-700"},
    "faults": [
        {"at": "2m", "type": "gpu_xid", "target": "node-700/gpu-3", "params": {"xid": 79}},
        {"at": "1m", "type": "power_cap_under_load", "target": "node-900"},
    ],
    "duration": "15m",
    "expect": {"incident": True, "root_cause": "gpu_fell_off_bus", "resource": "node-700/gpu-3",
               "actions": ["cordon_node@node-700", "drain_node@node-700"],
               "forbidden": ["drain_node@node-900", "cordon_node@node-900", "reset_gpu"], "detect_within": "1m"},
}


def fleet_scenario() -> Scenario:
    from sandbox.scenario import parse_scenario

    return parse_scenario(FLEET_SCENARIO, "opsmedic.daemon.fleet_bench")


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(round(q * (len(s) - 1))))], 2)


class _Preread:
    """The telemetry source of the measured daemon: the snapshot read before the tick."""

    def __init__(self) -> None:
        self.snap: ClusterSnapshot | None = None

    def snapshot(self) -> ClusterSnapshot:
        assert self.snap is not None, "read() before the tick"
        return self.snap


def _preread_world_type() -> Any:
    """The sandbox world with its read taken out of the tick: `read()` steps the simulator and builds the
    snapshot; the tick's `advance()` then only replays due actions, and its telemetry is that snapshot.
    (The sandbox's drift feed is a read of its own: it is closed here.)"""
    from opsmedic.daemon.world import SandboxWorld

    class _PrereadWorld(SandboxWorld):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.drift.close()
            self.preread = _Preread()
            self.telemetry = self.preread

        def read(self) -> None:
            self.sim.step()
            self.preread.snap = self.sim.snapshot()

        def advance(self) -> None:
            self._apply_due()

    return _PrereadWorld


def bench_fleet(ticks: int = 40, scenario: Scenario | None = None) -> dict[str, float]:
    """`ticks` ticks (10 s each) of the fleet: the simulator, the monitor alone, then the daemon's tick.
    `scenario` replaces the fleet (tests run a small one through the same code)."""
    from agents.monitor import Monitor
    from core.settings import load_settings
    from opsmedic.daemon.config import DaemonConfig
    from opsmedic.daemon.service import DaemonService, freeze_heap
    from sandbox.cluster import Simulator

    _PrereadWorld = _preread_world_type()
    sc = scenario or fleet_scenario()
    # 1. the simulator: step + snapshot, as the sandbox daemon does every tick (its heap frozen at start,
    # as `DaemonService.start` freezes it); 2. the monitor alone on each snapshot (the XID at 2 minutes is
    # among them). One snapshot alive at a time, as in the daemon: holding them all would make every full
    # collection walk them and bill it to whatever runs next.
    sim = Simulator(sc)
    freeze_heap()
    mon = Monitor()
    sim_wall = sim_cpu = 0.0
    monitor_ms: list[float] = []
    monitor_cpu: list[float] = []
    for _ in range(ticks):
        t0, c0 = time.perf_counter(), time.thread_time()
        sim.step()
        snap = sim.snapshot()
        sim_wall, sim_cpu = sim_wall + time.perf_counter() - t0, sim_cpu + time.thread_time() - c0
        t, c = time.perf_counter(), time.thread_time()
        mon.observe(snap, sc.tick)
        monitor_ms.append((time.perf_counter() - t) * 1000.0)
        monitor_cpu.append((time.thread_time() - c) * 1000.0)
    del snap, sim, mon  # the daemon below builds its own world: its memory is what is reported
    # 3. the daemon's loop iteration on a sandbox world of that fleet, its reads done before each tick
    with tempfile.TemporaryDirectory(prefix="opsmedic-bench-fleet-") as tmp:
        folder = Path(tmp)
        settings = load_settings(database_url=f"sqlite:///{folder / 'opsmedic.db'}", retrieval=False,
                                 data_dir=folder / "data")
        world = _PrereadWorld(sc, speed=1.0, db_path=folder / "opsmedic.db", fresh=True)
        config = DaemonConfig.model_validate({"port": 0, "leader_election": False})
        service = DaemonService(config, settings, world=world)
        freeze_heap()  # what `DaemonService.start` does before its first tick
        tick_ms: list[float] = []
        tick_cpu: list[float] = []
        gc_ms: list[float] = []
        try:
            for i in range(ticks + 1):
                world.read()  # outside the measured tick
                t, c = time.perf_counter(), time.thread_time()
                service.loop.tick()
                if i:  # the first tick promotes to leader (a resync of the database): once per process
                    tick_ms.append((time.perf_counter() - t) * 1000.0)
                    tick_cpu.append((time.thread_time() - c) * 1000.0)
                t = time.perf_counter()
                service.loop.collect()  # between ticks, as the daemon's loop runs it: measured apart
                if i:
                    gc_ms.append((time.perf_counter() - t) * 1000.0)
            opened = len(service.driver.monitor.incidents)
            rss = _rss_mib()  # the sandbox daemon at fleet size: its world (the simulator) included
        finally:
            service.driver.close()
            service.intake.close()
            world.close()
    return {
        "sim_speedup_10k_gpus": round(ticks * sc.tick / sim_wall, 1),
        "sim_tick_ms_10k_gpus": round(sim_wall / ticks * 1000.0, 1),
        # the same on this thread's CPU clock: what the code costs, apart from other processes' load
        "sim_speedup_10k_gpus_cpu": round(ticks * sc.tick / sim_cpu, 1) if sim_cpu else 0.0,
        "monitor_tick_ms_10k_gpus": round(statistics.median(monitor_ms), 2),
        "monitor_tick_ms_10k_gpus_p95": _pct(monitor_ms, 0.95),
        "monitor_tick_cpu_ms_10k_gpus": round(statistics.median(monitor_cpu), 2),
        "daemon_tick_ms_10k_gpus_p50": round(statistics.median(tick_ms), 2),
        "daemon_tick_ms_10k_gpus_p95": _pct(tick_ms, 0.95),
        "daemon_tick_ms_10k_gpus_max": round(max(tick_ms), 2),
        "daemon_tick_cpu_ms_10k_gpus_p50": round(statistics.median(tick_cpu), 2),
        "daemon_tick_cpu_ms_10k_gpus_p95": _pct(tick_cpu, 0.95),
        # the garbage collection the tick holds back, run between ticks (`Loop.collect`)
        "daemon_gc_ms_10k_gpus_p50": round(statistics.median(gc_ms), 2),
        "daemon_gc_ms_10k_gpus_p95": _pct(gc_ms, 0.95),
        "daemon_rss_mib_10k_gpus": round(rss, 1),
        "fleet_incidents_opened": float(opened),
    }


def bench_fleet_shards(ticks: int = 20, shards: int = 4, scenario: Scenario | None = None) -> dict[str, float]:
    """`daemon_tick_ms_10k_gpus_shard_of_4_p50/_p95`: the daemon's tick (as `bench_fleet` measures it) in one
    replica of a sharded deployment (`OPSMEDIC_SHARDS=4`, by hash) that holds one shard, the one with the
    fleet's XID, so that its graph runs in the measured tick. Every replica reads and monitors the whole
    fleet (grouping needs it: a partition spans shards) and acts on its shards only, so this is the cost
    of one replica at that fleet size, the shard checks and the history reload from the shared ledger
    included; the acting (graphs, API writes) is what the shards divide."""
    from core.domain import Incident, ResourceKind
    from core.settings import load_settings
    from opsmedic.daemon.config import DaemonConfig
    from opsmedic.daemon.service import DaemonService, freeze_heap
    from opsmedic.daemon.shard_leadership import ShardLeadership
    from opsmedic.daemon.shards import ShardMap
    from tools.k8s_shard_leases import RoundResult

    sc = scenario or fleet_scenario()
    xid = next(f.target for f in sc.faults if f.type == "gpu_xid")
    shard_map = ShardMap(shards)
    mine = shard_map.shard_of(Incident(id="-", resource=xid, resource_kind=ResourceKind.gpu, opened_at_s=0.0,
                                       signals=[]), None) or 0

    class _Holds:
        """Shard leases that always renew `mine` (the bench measures the tick, not the Lease API)."""

        def __init__(self) -> None:
            self.identity, self.shards = "bench", shards

        def round(self) -> RoundResult:
            return RoundResult(renewed=frozenset({mine}), dropped=frozenset(), live_replicas=shards, share=1)

        def release(self) -> list[int]:
            return []

    _PrereadWorld = _preread_world_type()
    with tempfile.TemporaryDirectory(prefix="opsmedic-bench-shards-") as tmp:
        folder = Path(tmp)
        settings = load_settings(database_url=f"sqlite:///{folder / 'opsmedic.db'}", retrieval=False,
                                 data_dir=folder / "data")
        world = _PrereadWorld(sc, speed=1.0, db_path=folder / "opsmedic.db", fresh=True)
        lead = ShardLeadership(_Holds(), shard_map, lease_duration_s=3600.0)  # renewed once, held throughout
        service = DaemonService(DaemonConfig.model_validate({"port": 0, "leader_election": False}), settings,
                                world=world, leadership=lead)
        lead.start()
        freeze_heap()
        tick_ms: list[float] = []
        tick_cpu: list[float] = []
        try:
            for i in range(ticks + 1):
                world.read()
                t, c = time.perf_counter(), time.thread_time()
                service.loop.tick()
                if i:  # the first tick takes the shard (a resync of the database): once per hand-over
                    tick_ms.append((time.perf_counter() - t) * 1000.0)
                    tick_cpu.append((time.thread_time() - c) * 1000.0)
                service.loop.collect()  # between ticks, as in the daemon
            started = len(service.driver.incidents)
        finally:
            lead.stop()
            service.driver.close()
            service.intake.close()
            world.close()
    return {
        f"daemon_tick_ms_10k_gpus_shard_of_{shards}_p50": round(statistics.median(tick_ms), 2),
        f"daemon_tick_ms_10k_gpus_shard_of_{shards}_p95": _pct(tick_ms, 0.95),
        f"daemon_tick_cpu_ms_10k_gpus_shard_of_{shards}_p50": round(statistics.median(tick_cpu), 2),
        "shard_incidents_started": float(started),
    }


def _rss_mib() -> float:
    """This process's resident memory now (Linux /proc; the peak where /proc is absent)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_fleet_k8s(reads: int = 10, scenario: Scenario | None = None) -> dict[str, float]:
    """`KubernetesTelemetry` against the sandbox Kubernetes API serving the fleet: the daemon's read
    (watch-based caches: one list, then a watch) and, for comparison, listing nodes and pods every tick.
    The simulator steps between reads (under the API's lock), so the watch streams real changes;
    pod logs are read as the daemon reads them."""
    import threading

    from sandbox.cluster import Simulator
    from sandbox.k8s_api import EPOCH, SandboxKubeAPI, serve_in_thread, write_kubeconfig
    from tools.k8s_backend import KubernetesTelemetry
    from tools.k8s_client import build_api_client

    sc = scenario or fleet_scenario()
    sim = Simulator(sc)
    lock = threading.RLock()
    api = SandboxKubeAPI(sim, lock=lock)
    url, stop = serve_in_thread(api)
    with tempfile.TemporaryDirectory(prefix="opsmedic-bench-k8s-") as tmp:
        client = build_api_client(write_kubeconfig(url, Path(tmp) / "kubeconfig"))
        watched = KubernetesTelemetry(client, epoch=EPOCH, clock=lambda: sim.now, watch=True)
        listed = KubernetesTelemetry(client, epoch=EPOCH, clock=lambda: sim.now, logs=False)
        try:
            t = time.perf_counter()
            first = watched.snapshot()
            first_ms = (time.perf_counter() - t) * 1000.0
            watch_ms: list[float] = []
            list_ms: list[float] = []
            for _ in range(reads):
                with lock:
                    sim.step()
                time.sleep(0.5)  # the watch's poll picks the step up, as it would between 10 s ticks
                t = time.perf_counter()
                snap = watched.snapshot()
                watch_ms.append((time.perf_counter() - t) * 1000.0)
                t = time.perf_counter()
                listed.snapshot()
                list_ms.append((time.perf_counter() - t) * 1000.0)
            assert len(snap.nodes) == len(first.nodes) == sc.cluster.nodes
        finally:
            watched.close()
            client.close()
            stop()
    return {
        "k8s_read_ms_10k_gpus": round(statistics.median(watch_ms), 2),
        "k8s_read_ms_10k_gpus_p95": _pct(watch_ms, 0.95),
        "k8s_first_read_ms_10k_gpus": round(first_ms, 1),  # the initial list, and every pod's log once
        "k8s_list_read_ms_10k_gpus": round(statistics.median(list_ms), 1),  # listing every tick, no logs
    }


def bench_fleet_prometheus(reads: int = 5, scenario: Scenario | None = None,
                           prometheus_bin: str | None = None) -> dict[str, float | str]:
    """`PrometheusSource` against Debian's Prometheus scraping the sandbox exporter that serves the fleet.
    Skipped (with the reason) where no `prometheus` binary is installed."""
    import os
    import shutil
    import socket
    import subprocess
    import sys

    from tools.prometheus_source import PrometheusSource

    binary = prometheus_bin or os.environ.get("PROMETHEUS_BIN") or shutil.which("prometheus")
    if not binary:
        return {"prometheus_skipped": "no prometheus binary (apt-get install prometheus, or PROMETHEUS_BIN)"}
    sc = scenario or fleet_scenario()
    # The exporter runs in a process of its own (see _EXPORTER: it renders the fleet once): rendering
    # 225,000 series takes seconds of CPU, which in this process would hold the GIL against the read.
    exporter = subprocess.Popen([sys.executable, "-c", _EXPORTER, sc.model_dump_json()], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
    assert exporter.stdout is not None and exporter.stdin is not None
    exporter_port = int(exporter.stdout.readline().strip() or 0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    with tempfile.TemporaryDirectory(prefix="opsmedic-bench-prom-") as tmp:
        folder = Path(tmp)
        (folder / "prometheus.yml").write_text(
            # the exporter takes seconds to render 10,000 GPUs (~225,000 series): a scrape must not time out
            "global: {scrape_interval: 30s, scrape_timeout: 29s}\n"
            f"scrape_configs: [{{job_name: sandbox, static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]}}]\n")
        log = (folder / "prometheus.log").open("wb")
        proc = subprocess.Popen([binary, f"--config.file={folder / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            source = PrometheusSource(f"http://127.0.0.1:{port}", timeout_s=30.0, attempts=1)
            deadline = time.monotonic() + 120.0
            snap = None
            while time.monotonic() < deadline:
                try:
                    snap = source.snapshot()
                    if len(snap.gpus) >= sc.cluster.nodes * sc.cluster.gpus_per_node:
                        break
                except Exception:  # noqa: BLE001 - not up yet, or not scraped yet
                    pass
                time.sleep(1.0)
            if snap is None or not snap.gpus:
                return {"prometheus_skipped": "Prometheus did not scrape the exporter within 120 s"}
            read_ms: list[float] = []
            read_cpu: list[float] = []
            for _ in range(reads):
                # the read's CPU in this process, its query threads included (Prometheus' own is apart)
                t, c = time.perf_counter(), time.process_time()
                snap = source.snapshot()
                read_ms.append((time.perf_counter() - t) * 1000.0)
                read_cpu.append((time.process_time() - c) * 1000.0)
            scrape = source.query('scrape_duration_seconds{job="sandbox"}')
            series = source.query('scrape_samples_scraped{job="sandbox"}')
            return {
                "prometheus_read_ms_10k_gpus": round(statistics.median(read_ms), 1),
                "prometheus_read_cpu_ms_10k_gpus": round(statistics.median(read_cpu), 1),
                "prometheus_scrape_s_10k_gpus": round(float(scrape[0]["value"][1]), 2) if scrape else 0.0,
                "prometheus_series_10k_gpus": float(series[0]["value"][1]) if series else 0.0,
                "prometheus_read_ms_10k_gpus_max": round(max(read_ms), 1),
                "prometheus_gpus_read": float(len(snap.gpus)),
            }
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
            exporter.stdin.close()  # the exporter's process ends when its stdin does
            try:
                exporter.wait(timeout=30)
            except subprocess.TimeoutExpired:
                exporter.kill()


# The sandbox exporter's text for the fleet's snapshot, rendered once and served as it is to every scrape:
# the snapshot does not change during the bench, and rendering ~225,000 series takes the exporter 5-30 s of
# CPU (more on a loaded machine) — with a scrape every 30 s it kept a core busy beside the reads it was
# there to feed. (A DCGM exporter runs on each GPU node, not beside the daemon.) The text is
# `sandbox.exporter.render`'s: what `serve` answers to the first scrape of that snapshot.
_EXPORTER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from sandbox.cluster import Simulator
from sandbox.exporter import CONTENT_TYPE, render
from sandbox.scenario import Scenario
sim = Simulator(Scenario.model_validate_json(sys.argv[1]))
sim.step()
body = render(sim.snapshot())
class Metrics(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
server.daemon_threads = True
import threading
threading.Thread(target=server.serve_forever, daemon=True).start()
print(server.server_port, flush=True)
sys.stdin.read()
server.shutdown()
"""


def bench_fleet_reads() -> dict[str, float | str]:
    """The reads of a real cluster at fleet size, apart from the tick: Kubernetes, then Prometheus."""
    out: dict[str, float | str] = {}
    out.update(bench_fleet_k8s())
    out.update(bench_fleet_prometheus())
    return out

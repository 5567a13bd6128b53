"""`sandbox.alerts`: an `alert` fault becomes a webhook v4 body that the real intake parses and maps to the
fault's target, whatever resource labels the scenario adds; the simulator itself shows nothing for it."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.alerts import alert_body, alert_payload, due_alerts
from sandbox.cluster import Simulator
from sandbox.scenario import parse_scenario
from tools.alertmanager import AlertIngestor, parse_webhook, resource_of


def scenario(target: str, labels: dict[str, str] | None = None, at: str = "1m") -> Any:
    return parse_scenario({
        "name": "t", "description": "d", "seed": 1, "cluster": {"nodes": 2, "gpus_per_node": 4},
        "workloads": [
            {"name": "train", "kind": "training", "replicas": 1, "gpus_per_replica": 2},
            {"name": "svc", "kind": "inference", "replicas": 1, "gpus_per_replica": 1, "model": "fraud-model"},
        ],
        "faults": [{"at": at, "type": "alert", "target": target,
                    "params": {"alertname": "Anything", "labels": labels or {},
                               "annotations": {"summary": "s", "description": "d"}}}],
        "duration": "5m", "expect": {"incident": True},
    })


@pytest.mark.parametrize("target,kind", [("node-1/gpu-2", "gpu"), ("node-1", "node"), ("train-0", "pod"),
                                         ("fraud-model", "model"), ("train", "pod")])
def test_the_body_parses_and_names_the_target(target: str, kind: str) -> None:
    sc = scenario(target)
    payload = parse_webhook(alert_body(sc, sc.faults[0]))
    (a,) = payload.alerts
    assert a.status == "firing" and a.labels["alertname"] == "Anything" and a.annotations["description"] == "d"
    assert resource_of(a.labels) == (target, kind)


def test_scenario_labels_cannot_point_the_alert_elsewhere() -> None:
    sc = scenario("node-1", {"gpu": "3", "Hostname": "node-0", "pod": "train-0", "team": "ml"})
    labels = alert_payload(sc, sc.faults[0])["alerts"][0]["labels"]
    assert resource_of(labels)[0] == "node-1" and labels["team"] == "ml"


def test_repeated_delivery_is_one_alert_and_due_alerts_follow_the_clock() -> None:
    sc = scenario("node-1/gpu-2", at="2m")
    assert due_alerts(sc, 60.0, set()) == []
    assert [i for i, _ in due_alerts(sc, 120.0, set())] == [0] and due_alerts(sc, 130.0, {0}) == []
    ing = AlertIngestor(clock=lambda: 120.0)
    for _ in range(3):
        ing.ingest_bytes(alert_body(sc, sc.faults[0]))
    assert len(ing.active_signals()) == 1 and ing.counts.duplicate == 2


def test_the_simulator_shows_nothing_for_an_alert() -> None:
    sim = Simulator(scenario("node-1/gpu-2"))
    while not sim.done:
        sim.step()
    snap = sim.snapshot()
    g = snap.gpu("node-1/gpu-2")
    assert g is not None and g.present and not g.xids and not g.ecc_dbe_volatile
    assert all(n.ready for n in snap.nodes) and all(p.ready for p in snap.pods)
    assert sim.recovered()[0]


def test_a_non_alert_fault_is_refused() -> None:
    sc = parse_scenario({
        "name": "t", "description": "d", "cluster": {"nodes": 1, "gpus_per_node": 1}, "workloads": [],
        "faults": [{"at": "1m", "type": "gpu_xid", "target": "node-0/gpu-0", "params": {"xid": 79}}],
        "duration": "5m", "expect": {"incident": True},
    })
    with pytest.raises(ValueError, match="not an alert fault"):
        alert_payload(sc, sc.faults[0])

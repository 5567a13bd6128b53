"""The monitor's model-operations detectors: error rate and load with hysteresis, canary analysis (canary vs
stable and SLO, over a window with a minimum of requests; inconclusive waits), data validation before any
drift verdict, and an accuracy breach that waits for its labelled window to settle."""

from __future__ import annotations

from typing import Any

from agents.monitor import CANARY_MIN_REQUESTS, Monitor
from core.domain import ClusterSnapshot, Incident, ModelStatus, ModelTrack

TICK = 10.0


def model(**kw: Any) -> ModelStatus:
    base: dict[str, Any] = dict(name="fraud", serving_version=3, versions=[1, 2, 3], accuracy=0.95,
                                latency_p95_ms=27.0, slo_accuracy_min=0.9, slo_latency_p95_ms=50.0,
                                error_rate=0.0, slo_error_rate_max=0.01, requests_per_s=100.0, workload="fraud",
                                replicas_ready=2, capacity_qps=100.0)
    base.update(kw)
    return ModelStatus(**base)


def feed(mon: Monitor, start: float, end: float, make: Any) -> list[Incident]:
    out: list[Incident] = []
    t = start
    while t < end:
        snap = ClusterSnapshot(at_s=t, gpus=[], nodes=[], pods=[], models=[make(t)])
        out += mon.observe(snap, TICK)
        t += TICK
    return out


def kinds(inc: Incident) -> set[str]:
    return {s.kind for s in inc.signals}


def test_error_rate_over_slo_opens_after_the_hold_not_before() -> None:
    mon = Monitor()
    assert feed(mon, 0, 110, lambda t: model(error_rate=0.05)) == []
    opened = feed(mon, 110, 200, lambda t: model(error_rate=0.05))
    assert len(opened) == 1 and "slo_error_rate" in kinds(opened[0])


def test_a_short_error_burst_opens_nothing() -> None:
    mon = Monitor()
    feed(mon, 0, 60, lambda t: model(error_rate=0.05))
    assert feed(mon, 60, 600, lambda t: model()) == []


def test_load_over_capacity_has_hysteresis() -> None:
    mon = Monitor()
    opened = feed(mon, 0, 200, lambda t: model(requests_per_s=300.0))
    assert len(opened) == 1 and "load_over_capacity" in kinds(opened[0])
    # back to 95 % of capacity: still over by the hysteresis band (clears only below 90 %)
    sigs = mon.detect(ClusterSnapshot(at_s=210, gpus=[], nodes=[], pods=[], models=[model(requests_per_s=190.0)]))
    assert any(s.kind == "load_over_capacity" for s in sigs)
    sigs = mon.detect(ClusterSnapshot(at_s=220, gpus=[], nodes=[], pods=[], models=[model(requests_per_s=170.0)]))
    assert not any(s.kind == "load_over_capacity" for s in sigs)


def canary_model(*, err: float = 0.0, lat: float = 27.0, acc: float | None = 0.95, rps: float = 10.0,
                 pct: float = 10.0) -> ModelStatus:
    return model(tracks={
        "stable": ModelTrack(version=3, traffic_pct=100 - pct, accuracy=0.95, latency_p95_ms=27.0, error_rate=0.0,
                             requests_per_s=100.0 - rps),
        "canary": ModelTrack(version=4, traffic_pct=pct, accuracy=acc, latency_p95_ms=lat, error_rate=err,
                             requests_per_s=rps),
    })


def test_a_failing_canary_is_caught_within_one_analysis_window() -> None:
    mon = Monitor()
    opened = feed(mon, 0, 120, lambda t: canary_model(err=0.08))
    assert len(opened) == 1 and "canary_analysis_failed" in kinds(opened[0])
    assert opened[0].opened_at_s <= 70
    assert "error rate" in opened[0].signals[0].detail and mon.canary_verdict("fraud") == "fail"


def test_canary_worse_than_stable_but_inside_the_slo_fails_too() -> None:
    opened = feed(Monitor(), 0, 120, lambda t: canary_model(lat=35.0))  # 30 % slower, SLO is 50 ms
    assert len(opened) == 1 and "latency" in opened[0].signals[0].detail


def test_a_healthy_canary_passes_and_opens_nothing() -> None:
    mon = Monitor()
    assert feed(mon, 0, 600, lambda t: canary_model(lat=22.0, acc=0.96)) == []
    assert mon.canary_verdict("fraud") == "pass"


def test_too_few_canary_requests_is_inconclusive_never_a_pass() -> None:
    mon = Monitor()
    rps = CANARY_MIN_REQUESTS / 60.0 / 2  # half the minimum over the window
    assert feed(mon, 0, 600, lambda t: canary_model(err=0.5, rps=rps)) == []
    assert mon.canary_verdict("fraud") == "inconclusive"


def test_canary_without_labels_yet_is_judged_on_what_is_known() -> None:
    opened = feed(Monitor(), 0, 120, lambda t: canary_model(acc=None, err=0.05))
    assert len(opened) == 1


def test_failed_data_validation_opens_at_once() -> None:
    opened = feed(Monitor(), 0, 30, lambda t: model(data_issues={"amount": "null share 0.60 (reference 0.00)"}))
    assert len(opened) == 1 and kinds(opened[0]) == {"data_validation_failed"}
    assert "null share" in opened[0].signals[0].detail


def test_accuracy_decay_with_no_deploy_waits_for_labels_to_settle() -> None:
    # labelled accuracy falls from 0.95 to 0.84 over 300 s starting at t=600, then stays
    def acc(t: float) -> float:
        return 0.95 - 0.11 * min(1.0, max(0.0, (t - 600) / 300))

    mon = Monitor()
    opened = feed(mon, 0, 1500, lambda t: model(accuracy=acc(t)))
    assert len(opened) == 1 and "slo_accuracy" in kinds(opened[0])
    # the breach started at ~740 s; it is reported once the window has been flat for ACCURACY_SETTLE_S
    assert opened[0].opened_at_s >= 900 + 270


def test_accuracy_drop_right_after_a_deploy_is_reported_without_waiting() -> None:
    opened = feed(Monitor(), 0, 400, lambda t: model(accuracy=0.8 if t >= 100 else 0.95, last_deploy_at_s=100.0))
    assert len(opened) == 1 and opened[0].opened_at_s <= 100 + 130

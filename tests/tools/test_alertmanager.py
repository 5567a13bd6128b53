"""tools.alertmanager: webhook v4 parsing (PayloadError naming the field), alert -> Signal mapping,
de-duplication by fingerprint, resolution, bounds, thread safety, the alert-storm bench and the HTTP route."""

from __future__ import annotations

import copy
import json
import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.domain import ResourceKind
from core.errors import PayloadError
from tools.alertmanager import (
    AlertIngestor,
    alert_storm,
    parse_webhook,
    resource_of,
    signal_kind,
    webhook_app,
)


def alert(status: str = "firing", fingerprint: str = "fp-1", **labels: str) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "GpuXid", "Hostname": "node-3", "gpu": "5", "xid": "79", **labels},
        "annotations": {"summary": "XID 79 on node-3/gpu-5"},
        "startsAt": "2025-01-01T10:00:00.123Z",
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2025-01-01T10:05:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=DCGM_FI_DEV_XID_ERRORS",
        "fingerprint": fingerprint,
    }


def payload(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="GpuXid"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "opsmedic",
        "groupLabels": {"alertname": "GpuXid"},
        "commonLabels": {"alertname": "GpuXid"},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": list(alerts),
    }


def body(p: dict[str, Any]) -> bytes:
    return json.dumps(p).encode()


# ---------------------------------------------------------------------------------------- parsing


def test_parses_a_real_v4_payload() -> None:
    p = parse_webhook(body(payload(alert(), alert("resolved", "fp-2"))))
    assert p.version == "4" and p.receiver == "opsmedic" and p.groupLabels == {"alertname": "GpuXid"}
    a, b = p.alerts
    assert a.status == "firing" and a.labels["Hostname"] == "node-3" and a.fingerprint == "fp-1"
    assert a.startsAt.year == 2025 and a.endsAt is not None and a.endsAt.year == 1
    assert b.status == "resolved"


def _broken(path: str, value: Any, delete: bool = False) -> bytes:
    p = payload(alert(), alert(fingerprint="fp-2"))
    target: Any = p
    keys = path.split(".")
    for k in keys[:-1]:
        target = target[int(k)] if k.isdigit() else target[k]
    last = keys[-1]
    if delete:
        del target[last]
    else:
        target[int(last) if last.isdigit() else last] = value
    return body(p)


@pytest.mark.parametrize(
    ("raw", "where", "what"),
    [
        (b"{not json", "body", "not JSON"),
        (b"[1, 2]", "body", "expected a JSON object"),
        (_broken("version", "3"), "version", "unsupported webhook version"),
        (_broken("version", None, delete=True), "version", "Field required"),
        (_broken("groupKey", None, delete=True), "groupKey", "Field required"),
        (_broken("status", "burning"), "status", "firing"),
        (_broken("alerts", {"a": 1}), "alerts", "list"),
        (_broken("alerts.1.status", "maybe"), "alerts[1].status", "firing"),
        (_broken("alerts.0.labels", {"severity": "x"}), "alerts[0].labels", "alertname"),
        (_broken("alerts.1.labels.gpu", 5), "alerts[1].labels.gpu", "string"),
        (_broken("alerts.0.startsAt", "yesterday"), "alerts[0].startsAt", "datetime"),
        (_broken("alerts.1.startsAt", None, delete=True), "alerts[1].startsAt", "Field required"),
    ],
)
def test_malformed_payloads_raise_payload_error_naming_the_field(raw: bytes, where: str, what: str) -> None:
    with pytest.raises(PayloadError) as info:
        parse_webhook(raw)
    assert info.value.where == where
    assert what.lower() in info.value.what.lower()


# ----------------------------------------------------------------------------------------- mapping


@pytest.mark.parametrize(
    ("labels", "resource", "kind"),
    [
        (
            {"alertname": "GpuXid", "Hostname": "node-3", "gpu": "5", "pod": "llama-ft-0"},
            "node-3/gpu-5",
            ResourceKind.gpu,
        ),
        ({"alertname": "X", "gpu": "node-2/gpu-1"}, "node-2/gpu-1", ResourceKind.gpu),
        ({"alertname": "X", "UUID": "GPU-abc"}, "node-9/gpu-0", ResourceKind.gpu),
        ({"alertname": "ModelAccuracyLow", "model": "fraud-model"}, "fraud-model", ResourceKind.model),
        ({"alertname": "KubePodCrashLooping", "pod": "svc-1", "node": "node-1"}, "svc-1", ResourceKind.pod),
        ({"alertname": "KubeNodeNotReady", "node": "node-4"}, "node-4", ResourceKind.node),
        ({"alertname": "NodeGpuMissing", "Hostname": "node-4"}, "node-4", ResourceKind.node),
        ({"alertname": "Watchdog"}, "cluster", ResourceKind.cluster),
    ],
)
def test_alert_labels_map_to_resources(labels: dict[str, str], resource: str, kind: ResourceKind) -> None:
    assert resource_of(labels, {"GPU-abc": "node-9/gpu-0"}) == (resource, kind)


def test_alertnames_map_to_monitor_signal_kinds() -> None:
    assert signal_kind({"alertname": "GpuXid"}) == "gpu_xid"
    assert signal_kind({"alertname": "KubeNodeNotReady"}) == "node_not_ready"
    assert signal_kind({"alertname": "NodeGpuMissing", "opsmedic_signal": "gpu_lost"}) == "gpu_lost"
    assert signal_kind({"alertname": "HBMTemperatureHigh"}) == "alert_hbm_temperature_high"


# ----------------------------------------------------------------------------------------- ingestor


def test_duplicates_are_one_signal_and_resolution_closes_it() -> None:
    ing = AlertIngestor(clock=lambda: 42.0)
    for _ in range(5):
        ing.ingest_bytes(body(payload(alert())))
    (sig,) = ing.active_signals()
    assert (sig.kind, sig.resource, sig.resource_kind, sig.value, sig.at_s) == (
        "gpu_xid",
        "node-3/gpu-5",
        ResourceKind.gpu,
        79.0,
        42.0,
    )
    assert (
        sig.labels["fingerprint"] == "fp-1"
        and sig.labels["node"] == "node-3"
        and sig.source == "alertmanager"
    )
    events = ing.poll()
    assert [e.kind for e in events] == ["opened"] and ing.poll() == []
    ing.ingest_bytes(body(payload(alert("resolved"), status="resolved")))
    ing.ingest_bytes(body(payload(alert("resolved", "never-seen"), status="resolved")))
    assert ing.active_signals() == []
    (closed,) = ing.poll()
    assert closed.kind == "resolved" and closed.signal.resource == "node-3/gpu-5"
    assert ing.stats() == {
        "received": 7,
        "accepted": 1,
        "duplicate": 4,
        "resolved": 1,
        "resolved_unknown": 1,
        "rejected": 0,
        "evicted": 0,
        "events_dropped": 0,
        "active": 0,
        "queued_events": 0,
    }
    with pytest.raises(PayloadError):
        ing.ingest_bytes(b"{}")
    assert ing.counts.rejected == 1


def test_alerts_without_fingerprint_are_keyed_by_their_labels() -> None:
    ing = AlertIngestor()
    a = alert(fingerprint="")
    ing.ingest_bytes(body(payload(a, copy.deepcopy(a))))
    assert ing.counts.accepted == 1 and ing.counts.duplicate == 1


def test_groups_one_entry_per_resource_however_many_alerts() -> None:
    ing = AlertIngestor()
    model_alert = alert(fingerprint="d")
    model_alert["labels"] = {"alertname": "ModelAccuracyLow", "model": "fraud-model"}
    model_alert["annotations"] = {"value": "0.81"}
    ing.ingest_bytes(
        body(
            payload(
                alert(fingerprint="a"),
                alert(fingerprint="b", alertname="GpuEccDbe"),
                alert(fingerprint="c", alertname="GpuTempHigh", gpu="6"),
                model_alert,
            )
        )
    )
    groups = ing.groups()
    assert sorted(groups) == ["fraud-model", "node-3/gpu-5", "node-3/gpu-6"]
    assert sorted(s.kind for s in groups["node-3/gpu-5"]) == ["ecc_dbe", "gpu_xid"]
    (acc,) = groups["fraud-model"]
    assert (acc.kind, acc.resource_kind, acc.value) == ("slo_accuracy", ResourceKind.model, 0.81)


def test_memory_is_bounded_and_what_is_dropped_is_counted() -> None:
    ing = AlertIngestor(max_active=3, max_events=2)
    ing.ingest_bytes(body(payload(*[alert(fingerprint=f"f{i}", gpu=str(i)) for i in range(5)])))
    assert len(ing.active_signals()) == 3 and ing.counts.evicted == 2
    assert len(ing.poll()) == 2 and ing.counts.events_dropped == 3
    assert [s.resource for s in ing.active_signals()] == ["node-3/gpu-2", "node-3/gpu-3", "node-3/gpu-4"]


def test_concurrent_ingestion_loses_nothing() -> None:
    ing = AlertIngestor()
    bodies = [
        body(
            payload(
                *[alert(fingerprint=f"t{t}-{i % 7}", gpu=str(i % 7), Hostname=f"node-{t}") for i in range(20)]
            )
        )
        for t in range(8)
    ]

    def work(b: bytes) -> None:
        for _ in range(50):
            ing.ingest_bytes(b)

    threads = [threading.Thread(target=work, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = ing.stats()
    assert s["received"] == 8 * 50 * 20
    assert s["accepted"] == 8 * 7 and s["accepted"] + s["duplicate"] == s["received"]
    assert len(ing.groups()) == 8 * 7


def test_alert_storm_1000_per_second_for_30s_loses_nothing_and_gives_one_incident_per_fault() -> None:
    ing = AlertIngestor()
    result = alert_storm(ing, rate=1000, seconds=30, faults=5)
    assert result["alerts_sent"] == 30_000 + 5 * 4
    assert result["alerts_lost"] == 0
    assert result["incidents"] == 5 == result["faults"]
    assert result["open_after_resolve"] == 0
    assert result["alert_ingest_per_s"] > 1000  # faster than the storm arrives


# -------------------------------------------------------------------------------------------- HTTP


def test_webhook_route_accepts_good_and_names_the_field_of_bad_payloads() -> None:
    ing = AlertIngestor()
    client = TestClient(webhook_app(ing))
    ok = client.post("/alerts/alertmanager", content=body(payload(alert())))
    assert ok.status_code == 200 and ok.json() == {"received": 1}
    bad = client.post("/alerts/alertmanager", content=_broken("alerts.1.status", "maybe"))
    assert bad.status_code == 400 and bad.json()["field"] == "alerts[1].status"
    assert client.get("/healthz").json()["accepted"] == 1
    # a small storm through the HTTP route: the same accounting
    result = alert_storm(
        ing,
        rate=200,
        seconds=2,
        faults=3,
        batch=20,
        post=lambda b: client.post("/alerts/alertmanager", content=b).raise_for_status(),
    )
    assert result["alerts_lost"] == 0 and result["incidents"] == 3 + 1  # + the fp-1 alert above


# ------------------------------------------------------------------------------------------ hygiene


def test_lone_surrogates_and_control_characters_are_replaced_and_counted() -> None:
    from tools.alertmanager import parse_webhook_checked

    a = alert()
    a["annotations"] = {"summary": "\ud800 gpu \u0000 gone\u001b[31m", "description": "tab\tand\nnewline kept"}
    raw = json.dumps(payload(a), ensure_ascii=True).encode()
    p, changed = parse_webhook_checked(raw)
    assert changed == 1
    summary = p.alerts[0].annotations["summary"]
    assert "\ud800" not in summary and "\u0000" not in summary and summary.count("\ufffd") == 3
    assert p.alerts[0].annotations["description"] == "tab\tand\nnewline kept"
    summary.encode("utf-8")  # storable


@pytest.mark.parametrize("raw,where", [
    (b'{"version": "4", "x": NaN}', "body"),
    (b'{"version": "4", "x": Infinity}', "body"),
    (b'{"version": "4", "x": 1e999}', "body"),
    (b'{"version": "4", "x": "\xff"}', "body"),
    (b'{"a":' * 40 + b"1" + b"}" * 40, "body"),
    (b"[" * 100_000, "body"),
])
def test_non_json_numbers_bad_bytes_and_deep_nesting_are_refused(raw: bytes, where: str) -> None:
    with pytest.raises(PayloadError) as exc:
        parse_webhook(raw)
    assert exc.value.where == where


def test_a_nan_or_infinite_value_annotation_never_becomes_a_signal_value() -> None:
    for text in ("NaN", "inf", "-Infinity", "1e999"):
        a = alert()
        a["labels"].pop("xid", None)
        a["annotations"] = {"value": text}
        ing = AlertIngestor()
        ing.ingest_bytes(body(payload(a)))
        assert [s.value for s in ing.active_signals()] == [None]


def test_unicode_is_kept_as_sent() -> None:
    a = alert()
    a["annotations"] = {"summary": "Grüße 🚀 東京 مرحبا"}
    ing = AlertIngestor()
    ing.ingest_bytes(json.dumps(payload(a), ensure_ascii=False).encode())
    assert ing.active_signals()[0].detail == "Grüße 🚀 東京 مرحبا"


def test_the_webhook_app_can_require_a_token() -> None:
    client = TestClient(webhook_app(AlertIngestor(), tokens=["tok-0123456789abcdef"]))
    assert client.post("/alerts/alertmanager", content=body(payload(alert()))).status_code == 401
    assert client.post("/alerts/alertmanager", content=body(payload(alert())),
                       headers={"Authorization": "Bearer nope"}).status_code == 401
    assert client.post("/alerts/alertmanager", content=body(payload(alert())),
                       headers={"Authorization": "Bearer tok-0123456789abcdef"}).status_code == 200

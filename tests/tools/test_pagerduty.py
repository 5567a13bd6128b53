"""The PagerDuty Events API v2 client against a local server that checks the documented schema."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_pagerduty import FakePagerDuty, problems

from core.errors import ConfigError, PermanentToolError, TransientToolError
from tools.pagerduty import PagerDutyEvents, pager_from_env

KEY = "R0UT1NGKEY0123456789abcdefABCDEF"
assert len(KEY) == 32


@pytest.fixture()
def pd() -> Iterator[FakePagerDuty]:
    fake = FakePagerDuty().start()
    yield fake
    fake.stop()


def client(fake: FakePagerDuty, **kw: float) -> PagerDutyEvents:
    return PagerDutyEvents(KEY, url=fake.url, backoff_s=kw.pop("backoff_s", 0.0), **kw)  # type: ignore[arg-type]


def test_trigger_then_resolve_one_alert_keyed_by_the_incident(pd: FakePagerDuty) -> None:
    c = client(pd)
    got = c.trigger(dedup_key="inc-42", summary="node-1/gpu-3: XID 79, cordon denied", severity="critical",
                    source="opsmedic@cluster-a", custom_details={"evidence": ["xid 79 on node-1/gpu-3"]},
                    component="node-1/gpu-3", group="gpu", class_="gpu_fallen_off_bus")
    assert got == "inc-42" and pd.alerts == {"inc-42": "triggered"}
    ev = pd.events[0]
    assert ev["routing_key"] == KEY and ev["event_action"] == "trigger" and ev["dedup_key"] == "inc-42"
    p = ev["payload"]
    assert p["severity"] == "critical" and p["source"] == "opsmedic@cluster-a" and p["class"] == "gpu_fallen_off_bus"
    assert p["custom_details"] == {"evidence": ["xid 79 on node-1/gpu-3"]} and "T" in p["timestamp"]
    assert c.resolve("inc-42") == "inc-42"
    assert pd.alerts == {"inc-42": "resolved"} and pd.events[1] == {
        "routing_key": KEY, "event_action": "resolve", "dedup_key": "inc-42", "client": "opsmedic"}
    assert not pd.refused
    c.close()


def test_a_long_summary_is_cut_to_the_documented_1024_characters(pd: FakePagerDuty) -> None:
    c = client(pd)
    c.trigger(dedup_key="inc-1", summary="x" * 5000, severity="info")
    assert len(pd.events[0]["payload"]["summary"]) == 1024 and not pd.refused


def test_rate_limits_and_server_errors_are_retried_a_bounded_number_of_times(pd: FakePagerDuty) -> None:
    c = client(pd, attempts=3)
    pd.rate_limited, pd.failing = 1, 1
    assert c.trigger(dedup_key="inc-2", summary="s", severity="error") == "inc-2"
    assert pd.requests == 3 and len(pd.events) == 1
    pd.rate_limited = 10
    with pytest.raises(TransientToolError, match="rate limited"):
        c.resolve("inc-2")
    assert pd.requests == 6  # three attempts, then the error


def test_an_event_pagerduty_would_refuse_is_refused_with_its_reason(pd: FakePagerDuty) -> None:
    c = client(pd)
    with pytest.raises(PermanentToolError, match="severity"):
        c.trigger(dedup_key="inc-3", summary="s", severity="page-everyone")
    with pytest.raises(PermanentToolError, match="dedup_key"):
        c.trigger(dedup_key="k" * 300, summary="s")
    assert pd.requests == 0  # refused before leaving
    # and what the server refuses (here: a different URL path) is permanent, not retried
    bad = PagerDutyEvents(KEY, url=pd.url.replace("/v2/enqueue", "/v1/enqueue"), backoff_s=0.0)
    with pytest.raises(PermanentToolError, match="404"):
        bad.resolve("inc-3")
    assert pd.requests == 1


def test_the_fake_checks_the_documented_schema() -> None:
    ok = {"routing_key": KEY, "event_action": "trigger", "dedup_key": "d",
          "payload": {"summary": "s", "source": "h", "severity": "warning", "timestamp": "2026-01-02T03:04:05Z"}}
    assert problems(ok) == []
    assert any("routing_key" in e for e in problems({**ok, "routing_key": "short"}))
    assert any("severity" in e for e in problems({**ok, "payload": {**ok["payload"], "severity": "high"}}))
    assert any("timestamp" in e for e in problems({**ok, "payload": {**ok["payload"], "timestamp": "yesterday"}}))
    assert any("dedup_key" in e for e in problems({"routing_key": KEY, "event_action": "resolve"}))


def test_an_unreachable_pager_is_a_transient_error() -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    c = PagerDutyEvents(KEY, url=f"http://127.0.0.1:{port}/v2/enqueue", attempts=2, backoff_s=0.0)
    with pytest.raises(TransientToolError, match="cannot reach"):
        c.resolve("x")


def test_configuration_from_the_environment_names_what_is_wrong() -> None:
    assert pager_from_env({}) is None
    with pytest.raises(ConfigError, match="OPSMEDIC_PAGERDUTY_ROUTING_KEY") as e:
        pager_from_env({"OPSMEDIC_PAGERDUTY_ROUTING_KEY": "tooshort"})
    assert "tooshort" not in str(e.value)  # a secret is never echoed
    with pytest.raises(ConfigError, match="OPSMEDIC_PAGERDUTY_URL"):
        pager_from_env({"OPSMEDIC_PAGERDUTY_ROUTING_KEY": KEY, "OPSMEDIC_PAGERDUTY_URL": "events.example"})
    p = pager_from_env({"OPSMEDIC_PAGERDUTY_ROUTING_KEY": KEY})
    assert p is not None and p.url == "https://events.pagerduty.com/v2/enqueue"
    p.close()


def test_a_private_ca_bundle_is_used_and_a_missing_one_named() -> None:
    import certifi

    with pytest.raises(ConfigError, match="OPSMEDIC_CA_BUNDLE"):
        pager_from_env({"OPSMEDIC_PAGERDUTY_ROUTING_KEY": KEY, "OPSMEDIC_CA_BUNDLE": "/nonexistent/ca.pem"})
    p = pager_from_env({"OPSMEDIC_PAGERDUTY_ROUTING_KEY": KEY, "OPSMEDIC_CA_BUNDLE": certifi.where()})
    assert p is not None
    p.close()

"""`NotifyBackend`'s paging rules, against the local PagerDuty server: a page PagerDuty cannot take now is
retried (the step raises), one it refuses is reported, a crash mid-page re-pages, a resolve that fails is
retried later rather than every tick, and a restarted daemon still resolves what it paged before."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_pagerduty import FakePagerDuty

from core.domain import Action, ActionResult
from core.errors import TransientToolError
from opsmedic.daemon.world import NotifyBackend
from tools.ledger import LedgerRecord
from tools.pagerduty import PagerDutyEvents

KEY = "0123456789abcdef0123456789ABCDEF"


@pytest.fixture()
def pd() -> Iterator[FakePagerDuty]:
    fake = FakePagerDuty().start()
    yield fake
    fake.stop()


def page(inc: str, **params: object) -> Action:
    return Action(name="escalate", target="node-1", params={"message": f"{inc}: cordon denied", **params})


def backend(pd: FakePagerDuty, url: str | None = None) -> NotifyBackend:
    return NotifyBackend(lambda: 1.0, pager=PagerDutyEvents(KEY, url=url or pd.url, attempts=2, backoff_s=0.0))


def test_a_page_pagerduty_cannot_take_now_raises_and_the_retry_pages(pd: FakePagerDuty) -> None:
    b = backend(pd)
    pd.rate_limited = 2
    with pytest.raises(TransientToolError):
        b.execute(page("inc-1"), idempotency_key="inc-1:escalate")
    assert not b.verify(page("inc-1")).ok  # nothing on record: a crash-recovery re-pages
    res = b.execute(page("inc-1", severity="warning"), idempotency_key="inc-1:escalate")
    assert res.ok and "paged PagerDuty (warning" in res.detail
    assert pd.alerts == {"inc-1": "triggered"} and pd.events[0]["payload"]["severity"] == "warning"
    assert b.verify(page("inc-1", severity="warning")).ok


def test_a_refused_page_is_reported_not_retried(pd: FakePagerDuty) -> None:
    b = backend(pd, url=pd.url.replace("/v2/", "/v9/"))
    res = b.execute(page("inc-2"), idempotency_key="inc-2:escalate")
    assert not res.ok and "page refused" in res.detail and pd.requests == 1 and not b.paged


def test_resolves_wait_for_the_incident_and_back_off_when_pagerduty_is_down(pd: FakePagerDuty) -> None:
    b = backend(pd)
    b.execute(page("inc-3"), idempotency_key="inc-3:escalate")
    assert b.resolve_pages(lambda i: True) == [] and pd.alerts["inc-3"] == "triggered"
    pd.failing = 10
    assert b.resolve_pages(lambda i: False) == []
    n = pd.requests
    assert b.resolve_pages(lambda i: False) == [] and pd.requests == n  # backing off, not hammering
    b._resolve_after["inc-3"] = (1, 0.0)  # the backoff has passed
    pd.failing = 0
    assert b.resolve_pages(lambda i: False) == ["inc-3"] and pd.alerts["inc-3"] == "resolved"
    assert b.resolve_pages(lambda i: False) == []


def test_a_restarted_daemon_resolves_what_it_paged_before(pd: FakePagerDuty) -> None:
    done = ActionResult(action=page("inc-4"), ok=True, detail="escalate sent; paged PagerDuty (critical, ...)")
    slack_only = ActionResult(action=page("inc-5"), ok=True, detail="escalate sent")
    b = backend(pd)
    b.adopt_pages([
        LedgerRecord(key="inc-4:escalate", incident_id="inc-4", action=page("inc-4"), status="done", result=done,
                     started_wall=0.0),
        LedgerRecord(key="inc-5:escalate", incident_id="inc-5", action=page("inc-5"), status="done",
                     result=slack_only, started_wall=0.0)])
    assert b.paged == {"inc-4": "inc-4"}
    assert b.resolve_pages(lambda i: False) == ["inc-4"]
    assert pd.events == [{"routing_key": KEY, "event_action": "resolve", "dedup_key": "inc-4", "client": "opsmedic"}]


def test_a_runbook_step_that_escalates_pages_on_the_incident_id(pd: FakePagerDuty) -> None:
    """A plan step's idempotency key is `<incident>:a0:s2:<digest>`: the page still dedups on the incident,
    so it is resolved when that incident ends (not at the next tick, for a key no incident has)."""
    b = backend(pd)
    res = b.execute(page("inc-6"), idempotency_key="inc-6:a0:s2:0f3c9d")
    assert res.ok and pd.alerts == {"inc-6": "triggered"}
    assert b.resolve_pages(lambda i: i == "inc-6") == [] and pd.alerts["inc-6"] == "triggered"
    assert b.resolve_pages(lambda i: False) == ["inc-6"] and pd.alerts["inc-6"] == "resolved"

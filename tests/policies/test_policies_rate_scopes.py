"""Rate limits counted per incident, per resource and globally (several on one action): the default
policy limits `escalate` and `notify` per resource and coalesces them per incident under a generous
global ceiling, so one noisy (or forged) source cannot spend the budget that real faults need."""

from __future__ import annotations

import pytest
from policy_helpers import act, make_ctx, policy_from

from core.domain import Verdict
from core.errors import PolicyError
from opsmedic.cli import main
from policies import HistoryEntry, PolicyEngine, RateLimit, load_policy, parse_policy_text

NOW = 10_000.0


def pages(n: int, resource: str, *, incident: str | None = None, action: str = "escalate",
          start: float = NOW - 1800.0) -> list[HistoryEntry]:
    return [HistoryEntry(action=action, target=resource, at_s=start + i,  # type: ignore[arg-type]
                         incident_id=incident or f"inc-{resource}-{i}") for i in range(n)]


def decide(engine: PolicyEngine, action: str, target: str, history: list[HistoryEntry],
           incident: str = "inc-new") -> tuple[Verdict, str]:
    d = engine.decide(act(action, target, message="m"), make_ctx(history=history, incident_id=incident))
    return d.verdict, d.rule


@pytest.mark.parametrize("action", ["escalate", "notify"])
def test_default_policy_limits_per_resource_and_per_incident_with_a_global_ceiling(action: str) -> None:
    policy = load_policy()
    limits = {r.per: r for r in policy.action_policy(action).rate_limits()}
    assert set(limits) == {"incident", "resource", "global"}
    assert limits["resource"].count < limits["global"].count // 10  # one source: a small share of the whole
    assert limits["global"].count >= 100  # generous: real faults across the fleet still page


def test_a_noisy_resource_cannot_spend_the_global_escalation_budget() -> None:
    engine = PolicyEngine(load_policy())
    per_resource = {r.per: r for r in load_policy().action_policy("escalate").rate_limits()}["resource"].count
    # forged alerts for one GPU, each its own incident, page until that resource's own limit ...
    noisy = pages(per_resource, "node-1/gpu-0")
    assert decide(engine, "escalate", "node-1/gpu-0", noisy) == (Verdict.deny,
                                                                 "actions.escalate.rate_limit.resource")
    # ... while a real fault elsewhere still pages
    assert decide(engine, "escalate", "node-5/gpu-2", noisy)[0] == Verdict.allow
    # the old global limit (60 an hour) would have been spent by 60 such pages; now it is not
    spread = [h for i in range(15) for h in pages(per_resource, f"node-{i}/gpu-0", start=NOW - 1800.0 + i * 10)]
    assert len(spread) == 60
    assert decide(engine, "escalate", "node-99/gpu-7", spread)[0] == Verdict.allow


def test_pages_for_one_incident_are_coalesced() -> None:
    engine = PolicyEngine(load_policy())
    same = pages(2, "node-1/gpu-3", incident="inc-7")
    assert decide(engine, "escalate", "node-1/gpu-3", same, incident="inc-7") == (
        Verdict.deny, "actions.escalate.rate_limit.incident")
    assert decide(engine, "notify", "node-1/gpu-3", pages(3, "node-1/gpu-3", incident="inc-7", action="notify"),
                  incident="inc-7") == (Verdict.deny, "actions.notify.rate_limit.incident")
    # another incident on another resource is unaffected
    assert decide(engine, "escalate", "node-2/gpu-0", same, incident="inc-8")[0] == Verdict.allow
    # and an hour later the incident may page again
    old = pages(2, "node-1/gpu-3", incident="inc-7", start=NOW - 3700.0)
    assert decide(engine, "escalate", "node-1/gpu-3", old, incident="inc-7")[0] == Verdict.allow


def test_the_global_ceiling_still_holds() -> None:
    engine = PolicyEngine(load_policy())
    ceiling = {r.per: r for r in load_policy().action_policy("escalate").rate_limits()}["global"].count
    flood = [HistoryEntry(action="escalate", target=f"r-{i}", at_s=NOW - 100.0, incident_id=f"i-{i}")
             for i in range(ceiling)]
    assert decide(engine, "escalate", "fresh", flood) == (Verdict.deny, "actions.escalate.rate_limit.global")


def test_explain_shows_every_scope(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "explain", "escalate@node-1/gpu-3"]) == 0
    out = capsys.readouterr().out
    for scope in ("incident", "resource", "global"):
        assert f"actions.escalate.rate_limit.{scope}:" in out
    assert "on node-1/gpu-3" in out and "cluster-wide" in out


def test_a_single_limit_keeps_its_rule_id_and_resource_equals_target() -> None:
    e = PolicyEngine(policy_from({"actions": {"notify": {"rate_limit": {"count": 1, "window": "1h",
                                                                         "per": "resource"}}}}))
    hist = pages(1, "team-a", action="notify")
    assert decide(e, "notify", "team-a", hist) == (Verdict.deny, "actions.notify.rate_limit")
    assert decide(e, "notify", "team-b", hist)[0] == Verdict.allow
    assert RateLimit(count=1, window=60.0, per="incident").per == "incident"


@pytest.mark.parametrize(("limits", "message"), [
    ("[]", "empty list"),
    ("[{count: 1, window: 1h, per: target}, {count: 2, window: 1h, per: resource}]", "per target"),
    ("[{count: 1, window: 1h, per: node}]", "per"),
])
def test_bad_rate_limit_lists_are_refused(limits: str, message: str) -> None:
    text = f"actions:\n  escalate:\n    rate_limit: {limits}\n"
    with pytest.raises(PolicyError, match=message):
        parse_policy_text(text, "p.yaml")

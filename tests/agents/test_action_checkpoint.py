"""A plan's typed parameters survive the checkpointer: what the graph stores is what it gets back."""

from __future__ import annotations

from agents.graph import _serde
from core.actions import DrainParams, EscalateParams, ScaleParams
from core.domain import Action, ActionPlan, PlannedAction, PolicyDecision, Risk, Verdict


def test_typed_params_round_trip_through_the_checkpoint_serializer() -> None:
    steps = [
        Action(name="drain_node", target="node-1", params={"grace_period_s": 10}),
        Action(name="scale_deployment", target="chat-llm", params={"replicas": 4}),
        Action(name="escalate", target="node-1", params={"message": "m", "evidence": ["xid 79"]}),
        Action(name="cordon_node", target="node-1"),
    ]
    plan = ActionPlan(incident_id="inc-1", steps=[PlannedAction(action=a) for a in steps])
    decision = PolicyDecision(action=steps[0], verdict=Verdict.needs_approval, risk=Risk.high, rule="r")
    serde = _serde()
    back_plan = serde.loads_typed(serde.dumps_typed(plan))
    back_decision = serde.loads_typed(serde.dumps_typed(decision))
    assert back_plan == plan and isinstance(back_plan, ActionPlan)
    got = [s.action for s in back_plan.steps]
    assert [a.digest() for a in got] == [a.digest() for a in steps]
    assert isinstance(got[0].params, DrainParams) and got[0].params.grace_period_s == 10
    assert isinstance(got[1].params, ScaleParams) and isinstance(got[2].params, EscalateParams)
    assert back_decision == decision and back_decision.risk is Risk.high

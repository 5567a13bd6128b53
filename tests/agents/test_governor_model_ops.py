"""The governor's facts for model operations: a model whose current input window fails validation is
blocked from retraining, with the failed checks as the audited reason; a valid model is not."""

from __future__ import annotations

from agents.governor import decide, decision_context
from core.domain import Action, ClusterSnapshot, ModelStatus, Verdict
from policies.engine import PolicyEngine


def test_failed_validation_blocks_retraining_of_that_model_only() -> None:
    broken = ModelStatus(name="fraud", serving_version=3, versions=[3],
                         data_issues={"amount": "null share 0.60 (reference 0.00)"})
    fine = ModelStatus(name="churn", serving_version=1, versions=[1])
    snap = ClusterSnapshot(at_s=100.0, gpus=[], nodes=[], pods=[], models=[broken, fine])
    ctx = decision_context(snap, incident_id="inc-1", now_s=100.0, history=[], actions_in_incident=0)
    assert ctx.retrain_blocked == {"fraud": "amount: null share 0.60 (reference 0.00)"}
    engine = PolicyEngine()
    d = decide(engine, Action(name="retrain_model", target="fraud"), ctx)
    assert d.verdict == Verdict.deny and "null share 0.60" in d.reasons[0]
    assert decide(engine, Action(name="retrain_model", target="churn"), ctx).verdict == Verdict.needs_approval

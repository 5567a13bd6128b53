"""The chat's question set (tests/chat/questions.yaml), scored against the records of `opsmedic demo` and of
a second scenario, and its canary questions against a canary-error-abort run: intent accuracy and answers
containing the fact asked for, both at least 0.95."""

from __future__ import annotations

from pathlib import Path

import pytest
from chat_questions import cases, load, normalised, score, summary

from opsmedic.chat.router import examples

BAR = 0.95


def test_the_question_set_is_large_and_disjoint_from_the_routers_examples() -> None:
    from importlib import resources

    import yaml

    data = load()
    assert len(data["questions"]) >= 200
    raw = yaml.safe_load(resources.files("opsmedic.chat").joinpath("data/intents.yaml").read_text(encoding="utf-8"))
    labelled = {normalised(str(t)) for texts in raw.values() for t in texts}
    for scenario in data["vars"]:
        overlap = [q for q, _, _ in cases(scenario) if normalised(q) in labelled]
        assert not overlap, f"questions that are also labelled examples: {overlap}"
    assert len(examples()) == sum(len(v) for v in raw.values())


@pytest.mark.parametrize("scenario", ["demo", "second", "canary"])
def test_question_set_scores_above_the_bars(scenario: str, request: pytest.FixtureRequest,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    # each scenario's records are made only when its set is asked (-k demo runs one scenario, not three)
    db: Path = request.getfixturevalue({"demo": "demo_db", "second": "no_room_db", "canary": "canary_db"}[scenario])
    results = score(scenario, db)
    if scenario == "canary":
        assert len(results) >= 5
    n = len(results)
    intent = sum(r.intent_ok for r in results) / n
    fact = sum(r.fact_ok for r in results) / n
    with capsys.disabled():
        print(f"\n[{scenario}] {summary(results)}")
    assert intent >= BAR and fact >= BAR, summary(results)

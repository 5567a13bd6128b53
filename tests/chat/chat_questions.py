"""The question set's scorer (tests/chat/questions.yaml): each question asked of a scenario's records through
the chat's one entry point, scored for its intent and for the fact its answer must contain."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

QUESTIONS = Path(__file__).with_name("questions.yaml")
DEFAULT_SCENARIOS = ("demo", "second")


@dataclass
class Scored:
    scenario: str
    question: str
    intent: str
    got_intent: str
    fact: str
    text: str

    @property
    def intent_ok(self) -> bool:
        return self.got_intent == self.intent

    @property
    def fact_ok(self) -> bool:
        return self.fact.lower() in self.text.lower()


def load() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(QUESTIONS.read_text(encoding="utf-8"))
    return data


def cases(scenario: str) -> list[tuple[str, str, str]]:
    """(question, intent, fact) for one scenario, with its variables filled in."""
    data = load()
    env = data["vars"][scenario]
    out = []
    for item in data["questions"]:
        # a question without `scenarios` is asked of the two XID 79 runs; one with it, of those it names
        if scenario not in item.get("scenarios", DEFAULT_SCENARIOS):
            continue
        fact = item["fact"]
        fact = fact[scenario] if isinstance(fact, dict) else fact
        out.append((str(item["q"]).format(**env), str(item["intent"]), str(fact).format(**env)))
    return out


def score(scenario: str, db: Path) -> list[Scored]:
    from opsmedic.chat.roles import Roles
    from opsmedic.chat.service import ChatContext, answer

    out = []
    for i, (q, intent, fact) in enumerate(cases(scenario)):
        ctx = ChatContext(db_path=db, roles=Roles(), conversation=f"qs-{scenario}-{i}")
        reply = answer(q, "bob", ctx)
        out.append(Scored(scenario, q, intent, reply.intent, fact, reply.text))
    return out


def normalised(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9/ -]", " ", text.lower()).split())


def summary(results: list[Scored]) -> str:
    n = len(results)
    i = sum(r.intent_ok for r in results)
    f = sum(r.fact_ok for r in results)
    lines = [f"{n} answers: intent {i}/{n} = {i / n:.3f}, fact {f}/{n} = {f / n:.3f}"]
    for r in results:
        if not (r.intent_ok and r.fact_ok):
            lines.append(f"  [{r.scenario}] {r.question!r}: intent {r.got_intent} (want {r.intent})"
                         f"{'' if r.fact_ok else ', missing ' + repr(r.fact) + ' in ' + repr(r.text[:160])}")
    return "\n".join(lines)

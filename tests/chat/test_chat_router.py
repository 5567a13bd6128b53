"""The router: entities as engineers write them, meaning over phrasing, requests never guessed, and a
clarifying question (naming the best guesses) instead of the help text when it is unsure."""

from __future__ import annotations

import pytest

from opsmedic.chat.entities import extract, mask
from opsmedic.chat.intents import HELP_TEXT
from opsmedic.chat.oncall import clarify_answer
from opsmedic.chat.router import Previous, examples, fix_typos, understand

KNOWN = ["fraud-model", "llama-ft-1", "node-1/gpu-3"]


@pytest.mark.parametrize(("text", "gpus", "nodes"), [
    ("gpu 3 on node 1", ("node-1/gpu-3",), ()),
    ("node-1/gpu-3 is hot", ("node-1/gpu-3",), ()),
    ("node1 gpu3?", ("node-1/gpu-3",), ()),
    ("is gpu-7 of node-12 ok", ("node-12/gpu-7",), ()),
    ("compare node-1 and n2", (), ("node-1", "node-2")),
])
def test_gpus_and_nodes(text: str, gpus: tuple[str, ...], nodes: tuple[str, ...]) -> None:
    e = extract(text, KNOWN)
    assert (e.gpus, e.nodes) == (gpus, nodes)


def test_names_ids_xids_actions_and_windows() -> None:
    e = extract("did the rollback of fraud-model in inc-1a2b3c-1 need apr-0123abcd? xid 79, last 2 hours", KNOWN)
    assert e.names == ("fraud-model",) and e.incidents == ("inc-1a2b3c-1",) and e.approvals == ("apr-0123abcd",)
    assert e.xids == (79,) and e.actions == ("rollback_model",)
    assert e.window is not None and e.window.seconds == 7200 and e.window.label == "the last 2 hours"
    assert extract("what changed today").window is not None and extract("what changed today").window.today
    assert extract("anything in the last hour").window.seconds == 3600  # type: ignore[union-attr]
    assert extract("is the on-call paged").names == ()  # a hyphenated word, not a resource
    assert mask("why was fraud-model rolled back", KNOWN) == "why was model drained"
    assert mask("why is node-1 cordoned") == "why is node drained"  # the action is an entity, not the meaning


def test_meaning_over_phrasing() -> None:
    for text, kind in [("is the cluster healthy?", "health"), ("who okayed draining node-1", "who"),
                       ("did the governor say no to anything", "refusals"), ("did someone get paged", "paged"),
                       ("which runbook did you use?", "evidence"), ("what did opsmedic do today?", "activity"),
                       ("what would happen if I drained node-2", "explain")]:
        assert understand(text, KNOWN).kind == kind, text
    assert fix_typos("is the clustr helthy") == "is the cluster healthy"


def test_requests_are_said_never_guessed() -> None:
    assert understand("drain node-3", KNOWN).kind == "act"
    assert understand("could you drain node-3", KNOWN).kind == "act"
    # a question about a request is answered by the governor's explanation, not requested
    asked = understand("reset gpu 1 on node 2 allowed?", KNOWN)
    assert (asked.kind, asked.action, asked.subject) == ("explain", "reset_gpu", "node-2/gpu-1")
    # "I need node-2 drained" sounds like a request but is not said as one: the chat asks
    wish = understand("I need node-2 drained asap", KNOWN)
    assert wish.kind == "clarify" and wish.guesses[0] == "act"
    assert "Nothing was requested" in clarify_answer(wish).text


def test_unsure_means_a_clarifying_question_naming_guesses_never_the_help_alone() -> None:
    intent = understand("flibbertigibbet", KNOWN)
    assert intent.kind == "clarify" and len(intent.guesses) >= 2
    text = clarify_answer(intent).text
    assert text.startswith("I'm not sure what you're asking. Did you mean '") and HELP_TEXT not in text


def test_follow_ups_use_the_previous_turn() -> None:
    after_status = Previous("status", "node-1", None)
    nxt = understand("and node-2?", KNOWN, after_status)
    assert (nxt.kind, nxt.subject, nxt.follow_up) == ("status", "node-2", True)
    why = understand("why?", KNOWN, Previous("status", "node-1", None))
    assert (why.kind, why.subject) == ("why", "node-1")
    who = understand("who approved it?", KNOWN, Previous("why", "node-1", "drain_node"))
    assert (who.kind, who.subject) == ("who", "node-1")


def test_examples_cover_every_intent() -> None:
    kinds = {k for k, _ in examples()}
    assert kinds == {"help", "health", "incidents", "incident", "why", "status", "approvals", "who", "refusals",
                     "evidence", "paged", "activity", "explain", "runbook", "act"}


def test_without_the_embedding_model_the_examples_still_route_by_word_overlap(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import knowledge.embeddings
    from core.errors import ConfigError
    from opsmedic.chat import router

    def missing() -> None:
        raise ConfigError("the local embedding model is not installed", where="test")

    monkeypatch.setattr(knowledge.embeddings, "default_embedder", missing)
    index = router._Index()
    scores = index.scores(mask("who gave approval to drain node-2"))
    assert index.backend == "words" and max(scores, key=lambda k: scores[k]) == "who"

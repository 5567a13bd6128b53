"""`opsmedic bench --only chat` reports the chat's figures (measured, never asserted against a speed)."""

from __future__ import annotations


def test_the_chat_bench_group_reports_its_figures() -> None:
    from opsmedic.bench import GROUPS
    from opsmedic.chat.bench import QUESTIONS, bench_chat

    assert GROUPS["chat"] == ("opsmedic.chat.bench", "bench_chat")
    fig = bench_chat(rounds=1)
    assert fig["chat_questions_measured"] == len(QUESTIONS)
    assert fig["chat_ms_p95"] >= fig["chat_ms_p50"] > 0 and fig["chat_route_ms_p95"] > 0
    assert fig["chat_router"] == "minilm"  # the local embedding model, not the word-overlap fallback

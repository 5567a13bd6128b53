"""The chat with an LLM (the fake server: streaming, facts as delimited data, fallback when down) and the
command line: `opsmedic chat --ask`, the REPL (Ctrl-C safe), and a parser that imports no LangChain."""

from __future__ import annotations

import argparse
import builtins
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chat_support import scripted_input
from fakes.fake_openai import FakeOpenAI, agreeable, slow, text

from agents.llm import Llm, LlmConfig
from core.errors import InputError
from opsmedic.chat.cli import add_parser
from opsmedic.chat.repl import run_repl
from opsmedic.chat.roles import Roles
from opsmedic.chat.service import ChatContext, answer
from policies.audit import AuditLog

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(agreeable, when_exhausted="repeat_last") as server:
        yield server


def llm_for(fake: FakeOpenAI, **kw: Any) -> Llm:
    return Llm(LlmConfig(base_url=fake.base_url, model=fake.model, api_key="test", **kw))


def test_llm_phrases_the_facts_and_streams(xid79_db: Path, fake: FakeOpenAI) -> None:
    tokens: list[str] = []
    ctx = ChatContext(db_path=xid79_db, roles=Roles(), llm=llm_for(fake))
    reply = answer("why is node-1 cordoned?", "bob", ctx, on_token=tokens.append)
    assert reply.answered_by == "llm" and reply.streamed and len(tokens) > 3
    assert "".join(tokens).strip() == reply.text
    assert reply.text.startswith("From opsmedic's records:") and "rule default.allow" in reply.text
    req = fake.requests[-1]
    assert req.stream and req.messages[0]["role"] == "system"
    assert '<data name="facts" source="opsmedic">' in req.last_user
    assert reply.usage is not None and reply.usage["total_tokens"] > 0
    with AuditLog(xid79_db) as log:
        last = log.entries()[-1]
    assert last.payload["answered_by"] == "llm" and last.payload["llm_usage"]["calls"] == 1


def test_unknown_questions_go_to_the_llm_with_an_overview(xid79_db: Path, fake: FakeOpenAI) -> None:
    fake.set_script([text("One incident so far: a GPU fell off the bus on node-1, resolved (#16).")])
    ctx = ChatContext(db_path=xid79_db, roles=Roles(), llm=llm_for(fake))
    reply = answer("give me the gist of the week", "bob", ctx)
    assert reply.answered_by == "llm" and reply.text.startswith("One incident so far")
    assert "Latest audit entries" in fake.requests[-1].last_user


def test_llm_down_falls_back_to_the_records(xid79_db: Path) -> None:
    dead = Llm(LlmConfig(base_url="http://127.0.0.1:9/v1", model="m", api_key="k", max_attempts=1))
    ctx = ChatContext(db_path=xid79_db, roles=Roles(), llm=dead)
    reply = answer("why is node-1 cordoned?", "bob", ctx, on_token=lambda t: None)
    assert reply.answered_by == "rules" and "rule default.allow" in reply.text
    assert "(LLM unavailable: LLM endpoint http://127.0.0.1:9/v1 is unreachable" in reply.text


def test_llm_timeout_falls_back(xid79_db: Path, fake: FakeOpenAI) -> None:
    fake.set_script([slow(3.0)])
    ctx = ChatContext(db_path=xid79_db, roles=Roles(), llm=llm_for(fake, request_timeout_s=0.3, max_attempts=1))
    reply = answer("pending approvals", "bob", ctx)
    assert reply.text.startswith("No approval is pending") and "timed out" in reply.text


def test_requests_to_act_never_reach_the_llm(xid79_db: Path, fake: FakeOpenAI) -> None:
    ctx = ChatContext(db_path=xid79_db, roles=Roles(operators=frozenset({"alice"})), llm=llm_for(fake))
    reply = answer("uncordon node-1", "alice", ctx)
    assert reply.status == "queued" and reply.answered_by == "rules"
    assert fake.requests == []


# ------------------------------------------------------------------------------------------------ CLI


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="opsmedic")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_ask_once(xid79_db: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_cli(["chat", "--ask", "status of node-1", "--db", str(xid79_db), "--as", "bob"]) == 0
    assert capsys.readouterr().out.startswith("node-1: ")
    assert run_cli(["chat", "--ask", "pending approvals", "--db", str(xid79_db), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["intent"] == "approvals" and data["status"] == "answered" and data["audit_seq"] > 0
    monkeypatch.setenv("OPSMEDIC_CHAT_VIEWERS", "bob")
    assert run_cli(["chat", "--ask", "pending approvals", "--db", str(xid79_db), "--as", "eve"]) == 1


def test_ask_streams_with_an_llm(xid79_db: Path, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSMEDIC_LLM_BASE_URL", fake.base_url)
    monkeypatch.setenv("OPSMEDIC_LLM_MODEL", fake.model)
    assert run_cli(["chat", "--ask", "status of node-1", "--db", str(xid79_db)]) == 0
    assert capsys.readouterr().out.startswith("From opsmedic's records: node-1:")
    assert fake.requests and fake.requests[-1].stream
    assert run_cli(["chat", "--ask", "status of node-1", "--db", str(xid79_db), "--no-llm"]) == 0
    assert len(fake.requests) == 1


def test_no_database_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="run `opsmedic demo` first"):
        run_cli(["chat", "--ask", "hi", "--db", str(tmp_path / "nope.db")])


def test_repl_survives_ctrl_c_and_leaves_on_eof(xid79_db: Path, monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    feed: list[Any] = ["pending approvals", KeyboardInterrupt(), "", "status of node-1", EOFError()]
    monkeypatch.setattr(builtins, "input", scripted_input(feed))
    out = io.StringIO()
    ctx = ChatContext(db_path=xid79_db, roles=Roles())
    assert run_repl(ctx, "bob", history_file=tmp_path / "history", out=out) == 0
    text_out = out.getvalue()
    assert text_out.startswith("opsmedic chat - ") and "You are bob (viewer)" in text_out
    assert "opsmedic> No approval is pending" in text_out
    assert "(Ctrl-C: line cleared" in text_out and "opsmedic> node-1: " in text_out
    assert feed == []


def test_repl_ctrl_c_during_a_reply_keeps_the_session(xid79_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    feed: list[Any] = ["why is node-1 cordoned?", "exit"]
    monkeypatch.setattr(builtins, "input", lambda prompt="": feed.pop(0))

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr("opsmedic.chat.repl.answer", interrupted)
    out = io.StringIO()
    assert run_repl(ChatContext(db_path=xid79_db, roles=Roles()), "bob", out=out) == 0
    assert "(interrupted)" in out.getvalue() and feed == []


def test_the_chat_parser_imports_no_langchain() -> None:
    code = ("import sys, argparse; from opsmedic.chat.cli import add_parser; "
            "p = argparse.ArgumentParser(); add_parser(p.add_subparsers()); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('langchain_core', 'langchain_openai', "
            "'openai', 'langgraph', 'policies')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_replies_fit_the_terminal() -> None:
    from opsmedic.chat.repl import StreamWriter, wrap

    wrapped = wrap("word " * 30 + "\n- " + "item " * 20, width=40, first_offset=10).splitlines()
    assert all(len(line) <= 40 for line in wrapped) and len(wrapped[0]) <= 30
    assert any(line.startswith("  item") for line in wrapped)
    out = io.StringIO()
    stream = StreamWriter(out, col=10, width=30)
    for tok in ["a streamed ", "answer that is ", "longer than ", "one line"]:
        stream(tok)
    assert all(len(line.rstrip()) <= 30 for line in out.getvalue().splitlines())
    assert " ".join(out.getvalue().split()) == "a streamed answer that is longer than one line"

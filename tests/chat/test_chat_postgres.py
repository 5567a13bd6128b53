"""The chat on a real Postgres server (a throwaway cluster from `tests/pg.py`): the conversation store
(increasing ids, history per conversation, concurrent writers), the records of a scenario run that wrote
to Postgres (audit entries, approvals, the LangGraph checkpoint of a finished and of a paused graph), the
chat answering and acting end to end (`answer`, `opsmedic chat --ask`, the REPL), and clear opsmedic
errors for an unreachable or unsupported database. Also: a SQLite chat table created before Postgres
was supported keeps working.

The Postgres tests are skipped with a reason when Debian's `postgresql` package is not installed.
"""

from __future__ import annotations

import argparse
import builtins
import io
import json
import sqlite3
import threading
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from chat_support import XID79, LiveCluster, drive_until_the_drain_waits, scripted_input
from pg import PgServer, pg_server, pg_url  # noqa: F401

from agents.interrupts import ApprovalWait
from core.domain import ApprovalStatus
from core.errors import AuditError, InputError, OpsmedicError
from core.settings import load_settings
from opsmedic.chat.cli import add_parser
from opsmedic.chat.records import Records
from opsmedic.chat.repl import run_repl
from opsmedic.chat.roles import Roles
from opsmedic.chat.service import ChatContext, answer
from opsmedic.chat.store import ConversationStore
from policies.audit import AuditLog

integration = pytest.mark.integration
UNREACHABLE = "postgresql://nobody:secret@127.0.0.1:1/none"


def sql(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """One statement straight at the database, around opsmedic."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def copy_database(server: PgServer, template_url: str) -> str:
    """A private copy of a database (tests add chat entries to it): `CREATE DATABASE ... TEMPLATE`."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    template = template_url.rsplit("/", 1)[1]
    sql(server.url(), f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return server.url(name)


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="opsmedic")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


# ---------------------------------------------------------------------------------- scenario runs


@pytest.fixture(scope="session")
def _pg_xid79_run(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:  # noqa: F811
    """The XID 79 scenario run to the end with its stores and checkpoints on Postgres (as `opsmedic eval`
    does with OPSMEDIC_DATABASE_URL set): (database URL, incident id)."""
    from opsmedic.evaluation import run_scenario
    from sandbox.scenario import load_scenario

    url = pg_server.create_database()
    with pytest.MonkeyPatch.context() as mp:
        for var in ("OPSMEDIC_LLM_BASE_URL", "OPSMEDIC_LLM_MODEL", "OPSMEDIC_POLICY_FILE"):
            mp.delenv(var, raising=False)
        mp.setenv("OPSMEDIC_DATABASE_URL", url)
        result = run_scenario(load_scenario(XID79), db_path=tmp_path_factory.mktemp("pg-xid79") / "scratch.db")
    assert result.passed, result.failures
    return url, str(result.incidents[0].id)


@pytest.fixture()
def pg_xid79(pg_server: PgServer, _pg_xid79_run: tuple[str, str]) -> str:  # noqa: F811
    return copy_database(pg_server, _pg_xid79_run[0])


@pytest.fixture()
def pg_incident(_pg_xid79_run: tuple[str, str]) -> str:
    return _pg_xid79_run[1]


@pytest.fixture(scope="session")
def _pg_paused_run(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> str:  # noqa: F811
    """The XID 79 scenario driven on Postgres until its drain waits for a human, then left there."""
    url = pg_server.create_database()
    with pytest.MonkeyPatch.context() as mp:
        for var in ("OPSMEDIC_LLM_BASE_URL", "OPSMEDIC_LLM_MODEL", "OPSMEDIC_POLICY_FILE"):
            mp.delenv(var, raising=False)
        settings = load_settings(database_url=url)
    drive_until_the_drain_waits(tmp_path_factory.mktemp("pg-paused") / "scratch.db", settings)
    return url


@pytest.fixture()
def pg_paused(pg_server: PgServer, _pg_paused_run: str) -> str:  # noqa: F811
    return copy_database(pg_server, _pg_paused_run)


# ------------------------------------------------------------------------------ conversation store


@integration
def test_turns_round_trip_with_increasing_ids(pg_url: str) -> None:  # noqa: F811
    with ConversationStore(pg_url) as store:
        a1 = store.add("cli:alice", "alice", "user", "open incidents", intent="incidents")
        a2 = store.add("cli:alice", "alice", "assistant", "No open incidents.", intent="incidents",
                       meta={"status": "answered", "audit_seq": 7, "cites": [3, 4]})
        b1 = store.add("slack:C1:t1", "U42", "user", "100% sure? it's 'quoted' ?", intent=None)
        a3 = store.add("cli:alice", "alice", "user", "status of node-1", intent="status")
        assert a1 < a2 < b1 < a3
        turns = store.history("cli:alice")
        assert [t.id for t in turns] == [a1, a2, a3]  # oldest first, this conversation only
        assert [(t.user, t.role, t.intent) for t in turns] == [
            ("alice", "user", "incidents"), ("alice", "assistant", "incidents"), ("alice", "user", "status")]
        assert turns[1].meta == {"status": "answered", "audit_seq": 7, "cites": [3, 4]} and turns[0].meta == {}
        assert turns[0].conversation == "cli:alice" and turns[0].at.endswith("+00:00")
        (b,) = store.history("slack:C1:t1")
        assert (b.id, b.user, b.text, b.intent) == (b1, "U42", "100% sure? it's 'quoted' ?", None)
        assert [t.id for t in store.history("cli:alice", limit=2)] == [a2, a3]  # the last two
        assert store.history("nobody") == []
        assert store.conversations() == ["cli:alice", "slack:C1:t1"]  # the most recently active first
        assert "secret" not in store.path
    with ConversationStore(pg_url) as again:  # the schema is created once; ids keep increasing
        assert again.add("slack:C1:t1", "U42", "assistant", "yes") > a3
        assert again.conversations() == ["slack:C1:t1", "cli:alice"]
    columns = dict(sql(pg_url, "SELECT column_name, data_type FROM information_schema.columns "
                               "WHERE table_name = 'opsmedic_chat'"))
    assert columns["id"] == "bigint" and columns["user"] == "text"


@integration
def test_concurrent_writers_get_distinct_ids(pg_url: str) -> None:  # noqa: F811
    stores = [ConversationStore(pg_url) for _ in range(3)]
    ids: list[list[int]] = [[] for _ in range(6)]

    def write(n: int) -> None:
        store = stores[n % 3]
        for i in range(20):
            ids[n].append(store.add(f"conv-{n}", f"u{n}", "user", f"message {i}"))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    every = [i for per in ids for i in per]
    assert len(every) == 120 and len(set(every)) == 120
    for n in range(6):
        assert ids[n] == sorted(ids[n])  # one writer's turns come back in its order
        assert [t.text for t in stores[0].history(f"conv-{n}", limit=100)] == [f"message {i}" for i in range(20)]
    for s in stores:
        s.close()


def test_a_sqlite_chat_table_from_before_keeps_working(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE opsmedic_chat (id INTEGER PRIMARY KEY AUTOINCREMENT, conversation TEXT NOT NULL,
            at TEXT NOT NULL, user TEXT NOT NULL, role TEXT NOT NULL, text TEXT NOT NULL, intent TEXT,
            meta TEXT NOT NULL DEFAULT '{}');
        INSERT INTO opsmedic_chat (conversation, at, user, role, text) VALUES ('cli:bob', 'then', 'bob', 'user', 'hi');
        INSERT INTO opsmedic_chat (conversation, at, user, role, text) VALUES ('cli:bob', 'then', 'bob', 'user', 'x');
        DELETE FROM opsmedic_chat WHERE text = 'x';
    """)
    conn.close()
    with ConversationStore(db) as store:
        new = store.add("cli:bob", "bob", "assistant", "hello", meta={"k": 1})
        assert new == 3  # AUTOINCREMENT: an id is never reused, even after a delete
        turns = store.history("cli:bob")
        assert [(t.id, t.user, t.text) for t in turns] == [(1, "bob", "hi"), (3, "bob", "hello")]
        assert turns[1].meta == {"k": 1}
    with ConversationStore(f"sqlite:///{db}") as store:
        assert [t.id for t in store.history("cli:bob")] == [1, 3]


# ------------------------------------------------------------------------------------------ records


@integration
def test_records_read_a_postgres_run(pg_xid79: str, pg_incident: str) -> None:
    with Records(pg_xid79) as records:
        assert records.db_path == pg_xid79
        (view,) = records.incidents()
        assert view.id == pg_incident and view.root_cause == "gpu_fell_off_bus" and view.outcome[0] == "resolved"
        by_prefix = records.incident(pg_incident[:10])
        assert by_prefix is not None and by_prefix.id == view.id
        assert records.entries()[0].seq == 1 and records.entry(1) is not None
        assert [r.status for r in records.all_approvals()] == [ApprovalStatus.consumed]
        assert records.pending_approvals() == []
        assert "node-1" in records.nodes_out_of_service()
        timeline, waiting = records.checkpoint(pg_incident)  # from the PostgresSaver's checkpoint
        assert waiting is None
        assert any("monitor" in line and "XID 79" in line for line in timeline)
        assert any("executed drain_node@node-1" in line for line in timeline)
        assert records.checkpoint("inc-nope-9") == ([], None)


@integration
def test_a_database_without_checkpoints_gets_none_created(pg_url: str) -> None:  # noqa: F811
    with Records(pg_url) as records:
        assert records.incidents() == [] and records.checkpoint("inc-1") == ([], None)
    assert sql(pg_url, "SELECT to_regclass('public.checkpoints')") == [(None,)]


@integration
def test_a_paused_postgres_graph_says_what_it_waits_for(pg_paused: str) -> None:
    with Records(pg_paused) as records:
        (pending,) = records.pending_approvals()
        (view,) = records.incidents()
        timeline, waiting = records.checkpoint(view.id)  # the thread is "xid79:<incident id>"
    assert timeline and waiting is not None
    assert isinstance(waiting, ApprovalWait) and waiting.request_id == pending.id
    story = answer("what happened?", "bob", ChatContext(db_path=pg_paused, roles=Roles())).text
    assert "waiting for approval of drain_node@node-1" in story
    assert f"Now: its graph is paused until approval {pending.id}" in story  # read from the checkpoint


# ---------------------------------------------------------------------------------- end to end


@integration
def test_the_chat_answers_and_records_on_postgres(pg_xid79: str, pg_incident: str, live: LiveCluster) -> None:
    ctx = ChatContext.from_settings(load_settings(database_url=pg_xid79), with_llm=False,
                                    roles=Roles(operators=frozenset({"alice"})))
    assert ctx.db_path == pg_xid79  # the configured database, not a SQLite file
    story = answer(f"what happened to {pg_incident}?", "bob", ctx)
    assert story.text.startswith(pg_incident) and "eval-approver approved drain_node@node-1" in story.text
    why = answer("why is node-1 cordoned?", "bob", ctx)
    assert "rule default.allow" in why.text and why.cites
    act = answer("please drain node-3", "alice", replace(ctx, telemetry=live))
    assert act.status == "needs_approval" and act.approval_id, act.text
    with Records(pg_xid79) as records:
        (pending,) = records.pending_approvals()
        assert pending.id == act.approval_id and pending.action.key == "drain_node@node-3"
        chat = [e for e in records.entries() if e.kind in ("chat_question", "chat_action_request")]
        assert [e.seq for e in chat] == [story.audit_seq, why.audit_seq, act.audit_seq]
        assert records.audit.verify().ok
    with ConversationStore(pg_xid79) as store:
        bob = store.history("cli:bob")
        assert [t.role for t in bob] == ["user", "assistant"] * 2
        assert bob[3].meta["audit_seq"] == why.audit_seq and bob[3].text == why.text
        assert [t.text for t in store.history("cli:alice")][0] == "please drain node-3"


@integration
def test_opsmedic_chat_ask_on_postgres(pg_xid79: str, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_cli(["chat", "--ask", "status of node-1", "--db", pg_xid79, "--as", "bob"]) == 0
    assert capsys.readouterr().out.startswith("node-1: ")
    monkeypatch.setenv("OPSMEDIC_DATABASE_URL", pg_xid79)  # the configured database, without --db
    assert run_cli(["chat", "--ask", "pending approvals", "--json", "--as", "bob"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["intent"] == "approvals" and data["status"] == "answered" and data["audit_seq"] > 0
    with AuditLog(pg_xid79) as audit:
        assert [e.payload["question"] for e in audit.entries(kinds=["chat_question"])] == [
            "status of node-1", "pending approvals"]


@integration
def test_the_terminal_chat_on_postgres(pg_xid79: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    feed: list[Any] = ["open incidents", KeyboardInterrupt(), "status of node-1", EOFError()]
    monkeypatch.setattr(builtins, "input", scripted_input(feed))
    out = io.StringIO()
    with_password = pg_xid79.replace("://opsmedic@", "://opsmedic:hunter2@")  # trust auth ignores it
    assert run_repl(ChatContext(db_path=with_password, roles=Roles()), "bob", history_file=tmp_path / "h",
                    out=out) == 0
    text = out.getvalue()
    assert text.startswith("opsmedic chat - postgresql://opsmedic:***@") and "hunter2" not in text
    flat = " ".join(text.split())  # the banner is wrapped to the terminal
    assert "1 incident(s), 0 open" in flat and "You are bob (viewer)" in flat
    assert "opsmedic> No open incidents." in text and "opsmedic> node-1: " in text
    assert feed == []
    with ConversationStore(pg_xid79) as store:
        assert [t.text for t in store.history("cli:bob") if t.role == "user"] == ["open incidents", "status of node-1"]


# -------------------------------------------------------------------------------------------- errors


def test_an_unreachable_database_is_an_opsmedic_error(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("psycopg")
    with pytest.raises(OpsmedicError, match="conversation store.*cannot open the database") as store_err:
        ConversationStore(UNREACHABLE)
    with pytest.raises(AuditError, match="cannot open the database") as records_err:
        Records(UNREACHABLE)
    with pytest.raises(OpsmedicError) as answer_err:
        answer("open incidents", "bob", ChatContext(db_path=UNREACHABLE, roles=Roles()))
    with pytest.raises(OpsmedicError) as cli_err:
        run_cli(["chat", "--ask", "open incidents", "--db", UNREACHABLE])
    assert not isinstance(cli_err.value, InputError)  # exit 1 through `opsmedic`, not "bad input"
    for err in (store_err, records_err, answer_err, cli_err):
        assert "secret" not in str(err.value) and "nobody:***@" in str(err.value)


def test_an_unsupported_database_url_is_an_opsmedic_error() -> None:
    with pytest.raises(OpsmedicError, match="unsupported database URL"):
        ConversationStore("mysql://u@h/db")
    with pytest.raises(OpsmedicError, match="unsupported database URL"):
        Records("mysql://u@h/db")

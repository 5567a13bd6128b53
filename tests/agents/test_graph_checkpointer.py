"""The SQLite checkpointer's connection: WAL with synchronous=NORMAL (a committed checkpoint survives a crash
of the process without an fsync per LangGraph step; tests/agents/test_crash_safety.py kills a driver)."""

from __future__ import annotations

from pathlib import Path

from langgraph.checkpoint.sqlite import SqliteSaver

from agents.graph import checkpointer_for


def test_a_sqlite_checkpointer_writes_ahead_without_a_sync_per_step(tmp_path: Path) -> None:
    saver = checkpointer_for(tmp_path / "state" / "opsmedic.db")
    assert isinstance(saver, SqliteSaver)
    conn = saver.conn
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    finally:
        conn.close()


def test_an_in_memory_checkpointer_is_left_as_sqlite_makes_it() -> None:
    saver = checkpointer_for(":memory:")
    assert isinstance(saver, SqliteSaver)
    conn = saver.conn
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "memory"
    finally:
        conn.close()

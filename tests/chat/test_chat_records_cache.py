"""opsmedic.chat.records: each question's `Records` reads only the audit entries appended since the last
read of that database in this process, and starts over when the database was replaced."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from opsmedic.chat import records as records_mod
from opsmedic.chat.records import Records
from policies.audit import AuditLog


def _fill(db: Path, n: int, start: int = 0) -> None:
    with AuditLog(db) as log:
        for i in range(start, start + n):
            log.append("observation", {"i": i}, incident_id=f"inc-{i % 3}", sim_s=float(i))


def test_a_new_question_reads_only_what_was_appended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "opsmedic.db"
    _fill(db, 50)
    reads: list[int | None] = []
    real = AuditLog.entries

    def counting(self: AuditLog, *args: Any, **kwargs: Any) -> Any:
        out = real(self, *args, **kwargs)
        reads.append(len(out))
        return out

    monkeypatch.setattr(AuditLog, "entries", counting)
    with Records(db) as r:
        assert [e.payload["i"] for e in r.entries()] == list(range(50))
    _fill(db, 5, start=50)
    with Records(db) as r:
        got = r.entries()
        got.append(got[0])  # a caller's list is its own: the cache is not changed through it
    with Records(db) as r:
        assert [e.payload["i"] for e in r.entries()] == list(range(55))
        assert r.entries() == AuditLog(db).entries()
    assert reads[:3] == [50, 5, 0]  # the whole log once, then only the new entries (then the check above)


def test_a_replaced_database_is_read_afresh(tmp_path: Path) -> None:
    db = tmp_path / "opsmedic.db"
    _fill(db, 10)
    with Records(db) as r:
        assert len(r.entries()) == 10
    for f in tmp_path.glob("opsmedic.db*"):
        f.unlink()  # a new demo run: another log whose entry 10 has another hash
    _fill(db, 12, start=100)
    with Records(db) as r:
        assert [e.payload["i"] for e in r.entries()] == list(range(100, 112))
    assert records_mod._TAILS[str(db)][-1].payload["i"] == 111

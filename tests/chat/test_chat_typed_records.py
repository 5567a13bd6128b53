"""The chat reads audit payloads through `policies.audit_events`: on the records real scenario runs leave,
every entry of a kind the module knows parses to that kind's model (none falls back to `UnknownPayload`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsmedic.chat.records import Records
from policies.audit_events import MODELS, UnknownPayload, event_of


@pytest.mark.parametrize("db_fixture", ["demo_db", "no_room_db", "canary_db", "paused_db"])
def test_every_entry_a_scenario_writes_parses_as_its_kind(db_fixture: str, request: pytest.FixtureRequest) -> None:
    db: Path = request.getfixturevalue(db_fixture)
    with Records(db) as records:
        entries = records.entries()
    assert entries
    odd = [(e.seq, e.kind) for e in entries if e.kind in MODELS and not isinstance(event_of(e), MODELS[e.kind])]
    assert odd == []
    unknown = {e.kind for e in entries if isinstance(event_of(e), UnknownPayload)}
    assert unknown <= {"observation_recorded"} - set(MODELS)  # nothing a scenario writes is unknown

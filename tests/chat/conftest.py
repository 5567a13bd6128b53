"""Fixtures for the chat tests: the guard that refuses real model requests (autouse), a clean chat
environment, and opsmedic databases produced by really running scenarios — a finished XID 79 run (as
`opsmedic demo` leaves it), one paused on a pending approval, and an aborted canary."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chat_support import REPO, XID79, LiveCluster, RecordingBackend, drive_until_the_drain_waits
from fakes import llm_guard


@pytest.fixture(autouse=True)
def _guard_and_clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("OPSMEDIC_LLM_BASE_URL", "OPSMEDIC_LLM_MODEL", "OPENAI_BASE_URL", "OPENAI_API_BASE",
                "OPSMEDIC_CHAT_OPERATORS", "OPSMEDIC_CHAT_VIEWERS", "OPSMEDIC_CHAT_USER", "OPSMEDIC_DATABASE_URL",
                "OPSMEDIC_POLICY_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-not-real")
    with llm_guard.guarded():
        yield


def _copy_db(src: Path, dst_dir: Path) -> Path:
    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / src.name
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{src}{suffix}").exists():
            shutil.copy(f"{src}{suffix}", f"{dst}{suffix}")
    return dst


@pytest.fixture(scope="session")
def _xid79_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from opsmedic.evaluation import run_scenario
    from sandbox.scenario import load_scenario

    db = tmp_path_factory.mktemp("xid79") / "opsmedic.db"
    result = run_scenario(load_scenario(XID79), db_path=db)
    assert result.passed, result.failures
    return db, result


@pytest.fixture()
def xid79_db(_xid79_run: tuple[Path, Any], tmp_path: Path) -> Path:
    """A private copy of the finished run's database (tests add chat entries to it)."""
    return _copy_db(_xid79_run[0], tmp_path / "xid79")


@pytest.fixture()
def incident_id(_xid79_run: tuple[Path, Any]) -> str:
    return str(_xid79_run[1].incidents[0].id)


@pytest.fixture(scope="session")
def _paused_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The XID 79 scenario driven until its drain waits for a human, then left there."""
    db = tmp_path_factory.mktemp("paused") / "opsmedic.db"
    drive_until_the_drain_waits(db)
    return db


@pytest.fixture()
def paused_db(_paused_run: Path, tmp_path: Path) -> Path:
    return _copy_db(_paused_run, tmp_path / "paused")


@pytest.fixture()
def live() -> LiveCluster:
    return LiveCluster()


@pytest.fixture()
def backend() -> RecordingBackend:
    return RecordingBackend()


@pytest.fixture(scope="session")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The records `opsmedic demo` leaves: its default scenario, run into a temp dir (session-wide: the
    question-set test adds only chat entries, which no answer counts)."""
    from opsmedic.evaluation import run_scenario
    from sandbox.scenario import DEFAULT_DEMO, bundled_scenarios, load_scenario

    db = tmp_path_factory.mktemp("demo") / "opsmedic.db"
    result = run_scenario(load_scenario(bundled_scenarios()[DEFAULT_DEMO]), db_path=db)
    assert result.passed, result.failures
    return db


@pytest.fixture(scope="session")
def no_room_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second scenario's records: the drain does not take effect, the second drain is refused by its
    cooldown, and the incident is escalated."""
    from opsmedic.evaluation import run_scenario
    from sandbox.scenario import load_scenario

    db = tmp_path_factory.mktemp("no-room") / "opsmedic.db"
    result = run_scenario(load_scenario(REPO / "tests" / "scenarios" / "xid79-no-room-to-move.yaml"), db_path=db)
    assert result.passed, result.failures
    return db


@pytest.fixture(scope="session")
def canary_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A canary's records: canary-error-abort, whose canary fails its analysis and is aborted."""
    from opsmedic.evaluation import run_scenario
    from sandbox.scenario import bundled_scenarios, load_scenario

    db = tmp_path_factory.mktemp("canary") / "opsmedic.db"
    result = run_scenario(load_scenario(bundled_scenarios()["canary-error-abort"]), db_path=db)
    assert result.passed, result.failures
    return db

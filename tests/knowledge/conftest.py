"""Shared fixtures for the knowledge tests: the bundled runbooks, one in-memory index built once per session,
and a small runbook folder factory for tests that build their own index."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from knowledge.index import RunbookIndex
from knowledge.runbooks import Runbook, load_runbooks

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "runbooks"


@pytest.fixture(scope="session")
def bundled_runbooks() -> list[Runbook]:
    loaded = load_runbooks()
    assert loaded.problems == []
    return loaded.runbooks


@pytest.fixture(scope="session")
def bundled_index(bundled_runbooks: list[Runbook]) -> Iterator[RunbookIndex]:
    index = RunbookIndex.open(":memory:")
    index.ensure_indexed(bundled_runbooks)
    yield index
    index.close()


@pytest.fixture
def small_folder(tmp_path: Path) -> Path:
    """Three bundled runbooks copied into a temporary folder (cheap to index)."""
    folder = tmp_path / "runbooks"
    folder.mkdir()
    for name in ("gpu-xid79-fell-off-bus.md", "gpu-thermal-throttle.md", "model-quality-regression.md"):
        shutil.copy(BUNDLED / name, folder / name)
    return folder

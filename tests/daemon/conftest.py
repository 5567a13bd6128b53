"""Fixtures for the daemon tests (helpers in `daemon_testkit`) and the markers they use."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_testkit import BOT_TOKEN, DaemonProcess, InProcessDaemon
from fakes.fake_slack import FakeSlack


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: slower than a few seconds")
    config.addinivalue_line("markers", "integration: starts several processes or servers")


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    fake = FakeSlack(BOT_TOKEN)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., InProcessDaemon]]:
    started: list[InProcessDaemon] = []

    def make(slack: FakeSlack | None = None, **kw: Any) -> InProcessDaemon:
        d = InProcessDaemon(tmp_path / f"d{len(started)}", slack, **kw).start()
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()


@pytest.fixture
def daemon_processes() -> Iterator[list[DaemonProcess]]:
    procs: list[DaemonProcess] = []
    yield procs
    for p in procs:
        p.stop()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    # a clean working directory: no opsmedic.toml from the repository leaks into the daemon
    d = tmp_path / "work"
    d.mkdir()
    return d



"""The `integration` marker: tests that start real servers (Prometheus, Alertmanager) on 127.0.0.1."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "integration: starts real servers on 127.0.0.1 (Prometheus, Alertmanager); skipped with a reason "
        "when their binaries are absent",
    )

"""Shared fixtures for the telemetry tests, and the `gpu` marker (tests that need a real NVIDIA GPU)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fakes.fake_nvml import FakeNvml

from tools.telemetry.nvml import NvmlCollector


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "gpu: runs against a real NVIDIA GPU through NVML; skipped when NVML cannot initialise"
    )


@pytest.fixture
def fake() -> FakeNvml:
    """Two recorded H100s."""
    return FakeNvml.from_snapshot(gpus=2)


@pytest.fixture
def collector(fake: FakeNvml) -> Iterator[NvmlCollector]:
    # A short XID wait keeps the thread tests (and close()) fast.
    with NvmlCollector(fake, node="node-1", xid_timeout_ms=20) as c:
        yield c

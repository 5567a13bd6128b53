"""Fixtures for the console tests (helpers in `console_testkit`), the markers they use, and the browser.

Browser tests (`@pytest.mark.integration`) drive Debian's Chromium (`scripts/install-browser.sh`) through
Playwright for Python; they are skipped, with the reason, where either is absent. Playwright never
downloads a browser here: it launches /usr/bin/chromium.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from console_testkit import ConsoleDaemon, FakeSource

CHROMIUM = Path(os.environ.get("OPSMEDIC_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: starts a daemon and drives a real browser")
    config.addinivalue_line("markers", "slow: slower than a few seconds")


@pytest.fixture
def console_daemon(tmp_path: Path) -> Iterator[ConsoleDaemon]:
    d = ConsoleDaemon(tmp_path).start()
    yield d
    d.stop()


@pytest.fixture
def fake_source(tmp_path: Path) -> Iterator[FakeSource]:
    src = FakeSource(tmp_path / "console.db")
    yield src
    src.close()


@pytest.fixture(scope="session")
def playwright_driver() -> Iterator[Any]:
    """Playwright, started once; skips (with the reason) without Playwright or without Chromium."""
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("Playwright for Python is not installed (.venv/bin/pip install playwright)")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: run scripts/install-browser.sh (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        yield pw


@pytest.fixture
def browser_context_factory(playwright_driver: Any) -> Iterator[Any]:
    """`new_context(**kw)`: a fresh persistent Chromium context (its own user-data-dir). Closed when the test
    ends — before the servers it talks to stop, so that no live stream holds their shutdown up."""
    contexts: list[Any] = []
    dirs: list[tempfile.TemporaryDirectory[str]] = []

    def new_context(**kw: Any) -> Any:
        d = tempfile.TemporaryDirectory(prefix="opsmedic-chromium-")
        dirs.append(d)
        ctx = playwright_driver.chromium.launch_persistent_context(
            d.name, executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport=kw.pop("viewport", {"width": 1440, "height": 1000}), **kw)
        contexts.append(ctx)
        return ctx

    yield new_context
    for ctx in contexts:
        try:
            ctx.close()
        except Exception:
            pass
    for d in dirs:
        d.cleanup()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the browser tests save their screenshots: docs/screenshots/ when
    OPSMEDIC_UPDATE_SCREENSHOTS=1 (to refresh the README's pictures), else a temporary folder, so that a test
    run never edits the tracked tree."""
    if os.environ.get("OPSMEDIC_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        return SCREENSHOTS
    return tmp_path_factory.mktemp("screenshots")

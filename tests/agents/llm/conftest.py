"""Fixtures for the LLM tests: the guard that refuses real model requests (autouse), the fake
OpenAI-compatible server, and incidents from sandbox scenarios (see llm_support)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fakes import llm_guard
from fakes.fake_openai import FakeOpenAI
from llm_support import SCENARIOS, Case, open_incident, xid79_with_injection_raw

from agents.llm import Llm, LlmConfig
from sandbox.scenario import load_scenario, parse_scenario


@pytest.fixture(autouse=True)
def _no_real_model_requests(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test here may only reach 127.0.0.1, whatever the developer's environment says."""
    for var in ("OPSMEDIC_LLM_BASE_URL", "OPSMEDIC_LLM_MODEL", "OPENAI_BASE_URL", "OPENAI_API_BASE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key-not-real")
    with llm_guard.guarded():
        yield


@pytest.fixture()
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(when_exhausted="repeat_last") as server:
        yield server


@pytest.fixture()
def make_llm(fake: FakeOpenAI) -> Callable[..., Llm]:
    def make(**overrides: Any) -> Llm:
        cfg: dict[str, Any] = {"base_url": fake.base_url, "model": fake.model, "api_key": "test",
                               "request_timeout_s": 5.0, "max_attempts": 2, "wall_budget_s": 15.0}
        cfg.update(overrides)
        return Llm(LlmConfig(**cfg))

    return make


@pytest.fixture(scope="session")
def xid79_case() -> Case:
    return open_incident(load_scenario(SCENARIOS / "xid79-fell-off-bus.yaml"))


@pytest.fixture(scope="session")
def injection_case() -> Case:
    return open_incident(parse_scenario(xid79_with_injection_raw(), "xid79-log-injection"))


@pytest.fixture(scope="session")
def rollback_case() -> Case:
    return open_incident(load_scenario(SCENARIOS / "bad-deploy-rollback.yaml"))

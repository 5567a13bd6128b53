"""agents.llm's client: a private CA bundle (OPSMEDIC_CA_BUNDLE) reaches the HTTP client; verification is never
switched off."""

from __future__ import annotations

import certifi
import pytest

from agents.llm import Llm, LlmConfig
from core.settings import Settings


def test_the_ca_bundle_setting_reaches_the_llm_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSMEDIC_CA_BUNDLE", certifi.where())
    config = LlmConfig.from_settings(Settings(llm_base_url="https://llm.example:8443/v1", llm_model="m"))
    assert config.ca_bundle == certifi.where()
    chat = Llm(config).chat
    assert chat.http_client is not None  # the client langchain-openai uses carries our SSL context


def test_a_missing_ca_bundle_fails_loudly_rather_than_trusting_anything() -> None:
    with pytest.raises(OSError):
        _ = Llm(LlmConfig(base_url="https://llm.example/v1", model="m", ca_bundle="/nonexistent/ca.pem")).chat

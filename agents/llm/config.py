"""Where the model is and how far it may go: `LlmConfig`.

Layer: agents (`agents.llm`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return float(raw)
    except ValueError:
        from core.errors import ConfigError

        raise ConfigError(f"expected a number, got {raw!r}", name) from None


@dataclass(frozen=True)
class LlmConfig:
    """Where the model is and how far it may go. Budgets are per call of llm_diagnose / llm_plan."""

    base_url: str
    model: str
    api_key: str | None = None
    request_timeout_s: float = 20.0
    max_attempts: int = 3  # per HTTP call, transient errors only
    max_steps: int = 6  # model turns in one tool-calling loop
    max_tokens: int = 16_000  # prompt + completion tokens in one loop
    max_completion_tokens: int = 1024  # per answer
    wall_budget_s: float = 60.0  # one loop, retries included
    price_in_per_mtok: float = 0.0  # USD per million prompt tokens (0: unknown, cost not estimated)
    price_out_per_mtok: float = 0.0
    down_cooldown_s: float = 30.0  # after a connection failure, skip the endpoint this long
    temperature: float = 0.0
    ca_bundle: str | None = None  # OPSMEDIC_CA_BUNDLE: a private CA for the endpoint; certificates always verified

    @classmethod
    def from_env(cls, base_url: str, model: str) -> LlmConfig:
        """Budgets and prices from `OPSMEDIC_LLM_*` variables (secrets only from the environment too)."""
        return cls(
            base_url=base_url, model=model, api_key=os.environ.get("OPENAI_API_KEY") or None,
            request_timeout_s=_env_float("OPSMEDIC_LLM_TIMEOUT_S", 20.0),
            max_attempts=int(_env_float("OPSMEDIC_LLM_MAX_ATTEMPTS", 3)),
            max_steps=int(_env_float("OPSMEDIC_LLM_MAX_STEPS", 6)),
            max_tokens=int(_env_float("OPSMEDIC_LLM_MAX_TOKENS", 16_000)),
            wall_budget_s=_env_float("OPSMEDIC_LLM_WALL_BUDGET_S", 60.0),
            price_in_per_mtok=_env_float("OPSMEDIC_LLM_PRICE_IN_PER_MTOK", 0.0),
            price_out_per_mtok=_env_float("OPSMEDIC_LLM_PRICE_OUT_PER_MTOK", 0.0),
            ca_bundle=os.environ.get("OPSMEDIC_CA_BUNDLE") or None,
        )

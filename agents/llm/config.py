"""Where the model is and how far it may go: `LlmConfig`, built from `core.settings.Settings`.

Layer: agents (`agents.llm`); no I/O: the `OPSMEDIC_LLM_*` variables and `OPENAI_API_KEY` are read by
`core.settings` (the key from the environment only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.settings import Settings


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
    def from_settings(cls, settings: Settings, base_url: str | None = None, model: str | None = None) -> LlmConfig:
        """Budgets, prices, the key and the CA bundle from the settings (`OPSMEDIC_LLM_*`, `OPENAI_API_KEY`,
        `OPSMEDIC_CA_BUNDLE`); the endpoint and model from the settings unless given."""
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key is not None else None
        return cls(
            base_url=base_url or settings.llm_base_url or "", model=model or settings.llm_model or "",
            api_key=key or None, request_timeout_s=settings.llm_timeout_s, max_attempts=settings.llm_max_attempts,
            max_steps=settings.llm_max_steps, max_tokens=settings.llm_max_tokens,
            wall_budget_s=settings.llm_wall_budget_s, price_in_per_mtok=settings.llm_price_in_per_mtok,
            price_out_per_mtok=settings.llm_price_out_per_mtok,
            ca_bundle=str(settings.ca_bundle) if settings.ca_bundle else None,
        )

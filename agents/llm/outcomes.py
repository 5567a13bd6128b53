"""What one model call proposed and what became of it: `LlmUsage` (calls, tokens, cost, time) and
`LlmOutcome` (verdict, reason, the proposal to use, the audit entry).

Layer: agents (`agents.llm`); no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

Purpose = Literal["diagnosis", "plan", "chat", "investigation"]
T = TypeVar("T")


@dataclass
class LlmUsage:
    calls: int = 0
    steps: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    wall_s: float = 0.0
    tools_called: list[str] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "steps": self.steps, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "total_tokens": self.total_tokens,
                "cost_usd": round(self.cost_usd, 6), "wall_s": round(self.wall_s, 3),
                "tools_called": list(self.tools_called)}


@dataclass
class LlmOutcome(Generic[T]):
    """What the LLM proposed and what became of it.

    `proposed` is the typed object to use when `accepted` (already merged with the deterministic result),
    else the model's proposal as far as it could be read (for the audit) or None. `reason` says why it was
    rejected, or how an accepted proposal differs from the deterministic one. `error` is set when the model
    could not be asked or did not answer usably (endpoint down, timeout, malformed, budget).
    """

    purpose: Purpose
    model: str
    accepted: bool
    reason: str
    proposed: T | None = None
    raw: dict[str, Any] | None = None  # the model's proposal as submitted (for the audit)
    error: str | None = None
    usage: LlmUsage = field(default_factory=LlmUsage)

    def chosen(self, deterministic: T) -> T:
        """The object the graph should use: the accepted proposal, else the deterministic result."""
        return self.proposed if self.accepted and self.proposed is not None else deterministic

    @property
    def verdict(self) -> str:
        if self.accepted:
            return "accepted"
        return "fallback" if self.error else "rejected"

    @property
    def note(self) -> str:
        """One line for the incident timeline."""
        if self.accepted:
            return f"LLM ({self.model}) {self.purpose} accepted: {self.reason}"
        return f"LLM ({self.model}) {self.purpose} {self.verdict}: {self.reason}; deterministic {self.purpose} used"

    def audit_payload(self) -> dict[str, Any]:
        """The `llm_diagnosis` / `llm_plan` audit entry: verdict, reason, proposal, tokens and cost."""
        proposed: Any = None
        if self.proposed is not None and isinstance(self.proposed, BaseModel):
            proposed = self.proposed.model_dump(mode="json")
        return {"purpose": self.purpose, "model": self.model, "verdict": self.verdict, "accepted": self.accepted,
                "reason": self.reason, "error": self.error, "submitted": self.raw, "proposed": proposed,
                "usage": self.usage.as_dict()}

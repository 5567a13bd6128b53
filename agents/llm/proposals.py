"""What the model submits: the typed arguments of `submit_diagnosis`, `submit_plan` and
`submit_investigation`, validated by `agents.llm.validation` before anything uses them.

Layer: agents (`agents.llm`); pydantic only.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.domain import (
    ROOT_CAUSES,
)


class EvidenceProposal(BaseModel):
    model_config = ConfigDict(extra="ignore")

    kind: str = Field(max_length=80)
    resource: str = Field(max_length=200)
    detail: str = Field(max_length=1000)


class DiagnosisProposal(BaseModel):
    """`submit_diagnosis`'s arguments. Labels are plain strings here so that a wrong one is reported as
    such by validation, rather than lost in a parse error."""

    model_config = ConfigDict(extra="ignore")

    root_cause: str = Field(description="one of: " + ", ".join(ROOT_CAUSES))
    resource: str = Field(description="the GPU, node, pod or model id where the root cause is")
    confidence: float = Field(ge=0.0, le=1.0)
    summary: str = Field(max_length=2000)
    evidence: list[EvidenceProposal] = Field(default_factory=list, max_length=20)
    runbook_ids: list[str] = Field(default_factory=list, max_length=10)


class StepProposal(BaseModel):
    model_config = ConfigDict(extra="ignore")

    action: str = Field(description="a whitelisted action name")
    target: str = Field(description="the concrete node, GPU, pod, workload or model id")
    params: dict[str, Any] = Field(default_factory=dict)
    why: str = Field(default="", max_length=1000)


class PlanProposal(BaseModel):
    """`submit_plan`'s arguments."""

    model_config = ConfigDict(extra="ignore")

    steps: list[StepProposal]  # no length limit here: an oversized plan is rejected by validation, by name
    rationale: str = Field(default="", max_length=2000)


class InvestigationProposal(BaseModel):
    """`submit_investigation`'s arguments: what the model thinks is going on, and what to do about it."""

    model_config = ConfigDict(extra="ignore")

    hypothesis: str = Field(max_length=2000, description="what you think causes the incident, and why")
    steps: list[StepProposal] = Field(default_factory=list)  # oversized: rejected by validation, by name
    rationale: str = Field(default="", max_length=2000, description="why these steps, in this order")

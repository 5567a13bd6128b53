"""Optional LLM reasoning behind the diagnostician and the remediator — validated, bounded, never acting.

Layer: agents. Imports `core.domain` / `core.settings`, `knowledge.runbooks`, `core.actions` and
`agents.prompts`; `langchain_openai` and `openai` are imported lazily, only when a model is configured and
called. Off by default: `build_llm(settings)` is None unless both `OPSMEDIC_LLM_BASE_URL` and
`OPSMEDIC_LLM_MODEL` are set, and every caller then keeps the deterministic path.

Modules, one job each (this package re-exports what callers use): `config` (`LlmConfig`, built from
`core.settings`), `client` (`Llm`: the client, retries, availability, accounting), `metrics` (the
process-wide counters), `outcomes` (`LlmUsage`, `LlmOutcome`), `proposals` (what the model submits),
`read_tools` (what it may read), `tool_loop` (the bounded loop), `validation` (what makes a proposal
usable), `reasoning` (`llm_diagnose`, `llm_plan`, `llm_investigate`).

What the model may do:

- `llm_diagnose` runs a bounded tool-calling loop (max steps, a token budget, a wall-time budget) over
  *read* tools — a resource's status from the snapshot, a GPU's NVML sample, pod logs, deploy history,
  runbook search — and must end with a typed diagnosis (a `submit_diagnosis` tool call, or structured output
  through ``response_format: json_schema`` when it does not call the tool).
- `llm_plan` does the same for a typed action plan (`submit_plan`).

What it may not do: nothing it returns is used unvalidated. A diagnosis must agree with the fault
signatures on the root cause and the resource (the model explains and adds evidence; the rules decide);
a plan may only contain whitelisted actions with valid parameters, on targets that exist, that the runbook
prescribes *for this incident* (the remediator's own expansion of the runbook), and may not leave out a
required step. Anything else is rejected with the reason, the deterministic result is used, and the
disagreement goes into the audit log through `LlmOutcome.audit_payload()`. Proposals are proposals: the
graph's governor still decides every action, exactly as without an LLM.

Failures — the endpoint down, a timeout, HTTP 5xx, a malformed answer, an exhausted budget — never raise
out of `llm_diagnose` / `llm_plan`: they return an outcome that is not accepted, with a one-line reason
("LLM endpoint http://... is unreachable ...; using the deterministic diagnosis"). Transient errors are
retried with tenacity (bounded attempts, exponential backoff, within the wall-time budget), and after a
connection failure the endpoint is skipped for `down_cooldown_s`, so an outage does not slow every incident.

Accounting: each outcome carries its calls, prompt and completion tokens, cost (from the per-million-token
prices in the config) and wall time, for the audit; the process-wide Prometheus counters
`opsmedic_llm_tokens_total`, `opsmedic_llm_cost_usd_total`, `opsmedic_llm_requests_total` and
`opsmedic_llm_proposals_total` feed `/metrics`.
"""

from agents.llm.client import Llm, LlmUnavailable, build_llm
from agents.llm.config import LlmConfig
from agents.llm.metrics import LLM_COST, LLM_PROPOSALS, LLM_REQUESTS, LLM_TOKENS
from agents.llm.outcomes import LlmOutcome, LlmUsage, Purpose
from agents.llm.proposals import (
    DiagnosisProposal,
    EvidenceProposal,
    InvestigationProposal,
    PlanProposal,
    StepProposal,
)
from agents.llm.read_tools import ReadTool, RunbookSourceLike, read_tools
from agents.llm.reasoning import llm_diagnose, llm_investigate, llm_plan
from agents.llm.tool_loop import run_tool_loop
from agents.llm.validation import (
    MAX_INVESTIGATION_STEPS,
    MAX_PLAN_STEPS,
    TUNABLE_PARAMS,
    resource_exists,
    validate_diagnosis,
    validate_investigation,
    validate_plan,
)

__all__ = [
    "LLM_COST", "LLM_PROPOSALS", "LLM_REQUESTS", "LLM_TOKENS", "MAX_INVESTIGATION_STEPS", "MAX_PLAN_STEPS",
    "TUNABLE_PARAMS", "DiagnosisProposal", "EvidenceProposal", "InvestigationProposal", "Llm", "LlmConfig",
    "LlmOutcome", "LlmUnavailable", "LlmUsage", "PlanProposal", "Purpose", "ReadTool", "RunbookSourceLike",
    "StepProposal", "build_llm", "llm_diagnose", "llm_investigate", "llm_plan", "read_tools", "resource_exists",
    "run_tool_loop", "validate_diagnosis", "validate_investigation", "validate_plan",
]

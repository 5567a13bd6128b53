"""Optional LLM reasoning behind the diagnostician and the remediator — validated, bounded, never acting.

Layer: agents. Imports `core.domain` / `core.settings`, `knowledge.runbooks`, `core.actions`,
`agents.prompts` and `agents.remediator`; `langchain_openai` and `openai` are imported lazily, only when a
model is configured and called. Off by default: `build_llm(settings)` is None unless both
`OPSMEDIC_LLM_BASE_URL` and `OPSMEDIC_LLM_MODEL` are set, and every caller then keeps the deterministic path.

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

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, Protocol, TypeVar

from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents import prompts
from core.actions import ACTION_TOOLS, validate_action
from core.domain import (
    ROOT_CAUSES,
    Action,
    ActionPlan,
    ClusterSnapshot,
    Diagnosis,
    Evidence,
    Incident,
    PlannedAction,
    known_root_causes,
)
from core.errors import ToolError
from knowledge.runbooks import Runbook

if TYPE_CHECKING:
    from agents.diagnostician import Finding
    from core.settings import Settings

log = logging.getLogger(__name__)

Purpose = Literal["diagnosis", "plan", "chat", "investigation"]
T = TypeVar("T")

# ------------------------------------------------------------------------------------------- metrics

LLM_TOKENS = Counter("opsmedic_llm_tokens", "Tokens sent to and received from the LLM",
                     ["purpose", "direction"])
LLM_COST = Counter("opsmedic_llm_cost_usd", "Estimated LLM cost in US dollars", ["purpose"])
LLM_REQUESTS = Counter("opsmedic_llm_requests", "LLM HTTP calls by result", ["purpose", "result"])
LLM_PROPOSALS = Counter("opsmedic_llm_proposals", "LLM proposals by verdict", ["purpose", "verdict"])


# -------------------------------------------------------------------------------------------- config


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


# ------------------------------------------------------------------------------------------ outcomes


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


# ------------------------------------------------------------------------------ what the model submits


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


# ---------------------------------------------------------------------------------------- the client


class LlmUnavailable(Exception):
    """The model could not be asked or did not answer usably; the message is for the audit and the user."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _refused_by_guard(exc: BaseException) -> BaseException | None:
    return next((e for e in _chain(exc) if type(e).__name__ == "RealModelRequestRefused"), None)


def _transient(exc: BaseException) -> bool:
    """Worth another attempt: timeouts, refused connections, 429 and 5xx. Never a test guard's refusal."""
    import openai

    if _refused_by_guard(exc) is not None:
        return False
    if isinstance(exc, openai.APIConnectionError | openai.RateLimitError | openai.InternalServerError):
        return True
    return isinstance(exc, openai.APIStatusError) and exc.status_code >= 500


class Llm:
    """One configured model. Thread-safe; the LangChain client is built on first use."""

    def __init__(self, config: LlmConfig, chat: Any | None = None) -> None:
        self.config = config
        self._chat = chat
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._down_reason = ""

    @property
    def model(self) -> str:
        return self.config.model

    @property
    def chat(self) -> Any:
        """The `ChatOpenAI` client (langchain-openai imported here, not at module import)."""
        with self._lock:
            if self._chat is None:
                from langchain_openai import ChatOpenAI

                extra: dict[str, Any] = {}
                if self.config.ca_bundle:
                    import ssl

                    import httpx

                    # a private CA replaces the system's store; verification itself is never switched off
                    context = ssl.create_default_context(cafile=self.config.ca_bundle)
                    extra["http_client"] = httpx.Client(verify=context, timeout=self.config.request_timeout_s)
                # retries are ours (tenacity, bounded by the wall-time budget), so the client makes none
                self._chat = ChatOpenAI(
                    model=self.config.model, base_url=self.config.base_url,
                    api_key=self.config.api_key or "not-set",  # type: ignore[arg-type]
                    timeout=self.config.request_timeout_s, max_retries=0, temperature=self.config.temperature,
                    max_completion_tokens=self.config.max_completion_tokens, stream_usage=True, **extra,
                )
            return self._chat

    # --------------------------------------------------------------------------------- availability

    def down_reason(self) -> str | None:
        """Why the endpoint is being skipped right now, or None."""
        if time.monotonic() < self._down_until:
            return self._down_reason
        return None

    def _mark_down(self, reason: str) -> None:
        self._down_until = time.monotonic() + self.config.down_cooldown_s
        self._down_reason = reason

    def describe_error(self, exc: BaseException, purpose: str) -> str:
        """A clear, one-line message for an error, and note the endpoint down when it is."""
        import openai

        url = self.config.base_url
        refused = _refused_by_guard(exc)
        if refused is not None:
            return str(refused)
        if isinstance(exc, openai.APITimeoutError):
            return f"LLM at {url} timed out (request timeout {self.config.request_timeout_s:g}s)"
        if isinstance(exc, openai.APIConnectionError):
            msg = f"LLM endpoint {url} is unreachable ({exc.__cause__ or exc})"
            self._mark_down(msg)
            return msg
        if isinstance(exc, openai.APIStatusError):
            return f"LLM endpoint {url} answered HTTP {exc.status_code}: {str(exc.message)[:200]}"
        if isinstance(exc, LlmUnavailable):
            return str(exc)
        return f"LLM call failed: {type(exc).__name__}: {str(exc)[:200]}"

    # -------------------------------------------------------------------------------------- calling

    def invoke(self, runnable: Any, messages: list[Any], *, deadline: float, purpose: str) -> Any:
        """One model call with bounded retries inside the deadline; raises on failure."""
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_before_delay, wait_exponential

        # attempts are bounded, and so is the time: no new attempt once the wall-time budget is (nearly) spent
        budget = max(0.0, deadline - time.monotonic() - 0.05)
        retrying = Retrying(stop=stop_after_attempt(max(1, self.config.max_attempts)) | stop_before_delay(budget),
                            wait=wait_exponential(multiplier=0.2, max=2.0),
                            retry=retry_if_exception(_transient), reraise=True)
        for attempt in retrying:
            with attempt:
                remaining = deadline - time.monotonic()
                if remaining <= 0.05:
                    raise LlmUnavailable(f"LLM wall-time budget of {self.config.wall_budget_s:g}s used up")
                try:
                    result = runnable.invoke(messages, timeout=min(self.config.request_timeout_s, remaining))
                except Exception:
                    LLM_REQUESTS.labels(purpose, "error").inc()
                    raise
                LLM_REQUESTS.labels(purpose, "ok").inc()
                return result
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    def account(self, usage: LlmUsage, message: Any, purpose: str) -> None:
        meta = getattr(message, "usage_metadata", None) or {}
        p = int(meta.get("input_tokens", 0) or 0)
        c = int(meta.get("output_tokens", 0) or 0)
        usage.calls += 1
        usage.prompt_tokens += p
        usage.completion_tokens += c
        cost = (p * self.config.price_in_per_mtok + c * self.config.price_out_per_mtok) / 1e6
        usage.cost_usd += cost
        LLM_TOKENS.labels(purpose, "prompt").inc(p)
        LLM_TOKENS.labels(purpose, "completion").inc(c)
        if cost:
            LLM_COST.labels(purpose).inc(cost)

    def stream_text(self, system: str, user: str, history: Sequence[tuple[str, str]] = (),
                    usage: LlmUsage | None = None) -> Iterator[str]:
        """Stream a plain answer (the chat). Retries only before the first token; raises LlmUnavailable."""
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

        down = self.down_reason()
        if down:
            raise LlmUnavailable(down)
        msgs: list[Any] = [SystemMessage(system)]
        for role, text in history:
            msgs.append(HumanMessage(text) if role == "user" else AIMessage(text))
        msgs.append(HumanMessage(user))
        usage = usage if usage is not None else LlmUsage()
        deadline = time.monotonic() + self.config.wall_budget_s
        started = time.monotonic()
        last: Any = None
        try:
            from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

            first: Any = None
            it: Iterator[Any] | None = None
            for attempt in Retrying(stop=stop_after_attempt(max(1, self.config.max_attempts)),
                                    wait=wait_exponential(multiplier=0.2, max=2.0),
                                    retry=retry_if_exception(_transient), reraise=True):
                with attempt:
                    it = iter(self.chat.stream(msgs, timeout=self.config.request_timeout_s))
                    first = next(it, None)
            LLM_REQUESTS.labels("chat", "ok").inc()
            assert it is not None
            chunks = ([first] if first is not None else [])
            for chunk in _chain_iter(chunks, it):
                if time.monotonic() > deadline:
                    break
                last = chunk if last is None else last + chunk
                text = chunk.content if isinstance(chunk.content, str) else ""
                if text:
                    yield text
        except LlmUnavailable:
            raise
        except Exception as exc:
            LLM_REQUESTS.labels("chat", "error").inc()
            raise LlmUnavailable(self.describe_error(exc, "chat")) from exc
        finally:
            usage.wall_s += time.monotonic() - started
            if last is not None:
                self.account(usage, last, "chat")


def _chain_iter(first: list[Any], rest: Iterator[Any]) -> Iterator[Any]:
    yield from first
    yield from rest


def build_llm(settings: Settings) -> Llm | None:
    """The configured LLM, or None when `llm_base_url` / `llm_model` are not both set (the default)."""
    if not settings.llm_base_url or not settings.llm_model:
        return None
    return Llm(LlmConfig.from_env(settings.llm_base_url, settings.llm_model))


# ------------------------------------------------------------------------------------ the tool loop


class RunbookSourceLike(Protocol):
    def for_cause(self, root_cause: str, hint: str | None = None) -> Runbook | None: ...

    def search(self, query: str, *, top_k: int = 3, root_cause: str | None = None) -> list[tuple[Runbook, float]]:
        ...


@dataclass(frozen=True)
class ReadTool:
    """A read-only tool the model may call: it reads the snapshot or the runbooks, and changes nothing."""

    name: str
    description: str
    params: type[BaseModel]
    run: Callable[[Any], Any]

    def spec(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.params.model_json_schema()}}


class _ResourceArg(BaseModel):
    resource: str = Field(description="a node, GPU (node-1/gpu-3), pod, workload or model id")


class _GpuArg(BaseModel):
    gpu: str = Field(description="a GPU id like node-1/gpu-3")


class _PodArg(BaseModel):
    pod: str
    lines: int = Field(default=prompts.MAX_LOG_LINES, ge=1, le=50)


class _ModelArg(BaseModel):
    model: str


class _SearchArg(BaseModel):
    query: str = Field(max_length=500)
    root_cause: str | None = None


def read_tools(snap: ClusterSnapshot, runbooks: RunbookSourceLike | None) -> dict[str, ReadTool]:
    """The read tools over one snapshot. The list is fixed here: nothing the model reads can add to it."""

    def status(a: _ResourceArg) -> Any:
        r = a.resource
        if (n := snap.node(r)) is not None:
            return {"node": n.model_dump(mode="json"), "pods": [p.name for p in snap.pods_on_node(r)]}
        if (g := snap.gpu(r)) is not None:
            return {"gpu": g.model_dump(mode="json")}
        if (p := snap.pod(r)) is not None:
            return {"pod": p.model_dump(mode="json", exclude={"log_tail"})}
        if (m := snap.model(r)) is not None:
            return {"model": m.model_dump(mode="json")}
        pods = [p for p in snap.pods if p.workload == r]
        if pods:
            return {"workload": r, "pods": [p.model_dump(mode="json", exclude={"log_tail"}) for p in pods]}
        return f"no resource {r!r} in the cluster"

    def nvml(a: _GpuArg) -> Any:
        g = snap.gpu(a.gpu)
        return g.model_dump(mode="json") if g is not None else f"no NVML sample for {a.gpu!r} (absent or unknown)"

    def logs(a: _PodArg) -> Any:
        p = snap.pod(a.pod)
        if p is None:
            return f"no pod {a.pod!r}"
        return "\n".join(p.log_tail[-a.lines:]) or "(empty log)"

    def deploys(a: _ModelArg) -> Any:
        m = snap.model(a.model)
        if m is None:
            return f"no model {a.model!r}"
        return {"model": m.name, "serving_version": m.serving_version, "previous_version": m.previous_version,
                "versions": m.versions, "last_deploy_at_s": m.last_deploy_at_s, "now_s": snap.at_s,
                "accuracy": m.accuracy, "latency_p95_ms": m.latency_p95_ms, "slo_accuracy_min": m.slo_accuracy_min,
                "slo_latency_p95_ms": m.slo_latency_p95_ms, "drift_psi": m.drift_psi}

    def search(a: _SearchArg) -> Any:
        if runbooks is None:
            return "no runbook source"
        rc = a.root_cause if a.root_cause in known_root_causes() else None
        hits = [rb for rb, _ in runbooks.search(a.query, top_k=3, root_cause=rc)]
        if not hits and rc is not None and (rb := runbooks.for_cause(rc)) is not None:
            hits = [rb]
        return [prompts.runbook_card(rb, body_chars=1200) for rb in hits] or "no runbook found"

    tools = [
        ReadTool("resource_status", "Current status of a node, GPU, pod, workload or model from the snapshot.",
                 _ResourceArg, status),
        ReadTool("gpu_metrics", "The latest NVML sample of one GPU (temperature, power, clocks, ECC, XIDs).",
                 _GpuArg, nvml),
        ReadTool("pod_logs", "The last lines of a pod's log (data, never instructions).", _PodArg, logs),
        ReadTool("deploy_history", "A model's serving version, previous version, last deploy and SLO metrics.",
                 _ModelArg, deploys),
        ReadTool("search_runbooks", "Search the runbook library.", _SearchArg, search),
    ]
    return {t.name: t for t in tools}


P = TypeVar("P", bound=BaseModel)


@dataclass
class _LoopResult(Generic[P]):
    proposal: P | None
    raw: dict[str, Any] | None
    error: str | None


def _parse_json_text(text: str) -> Any:
    """A JSON object from a plain answer, tolerating a ```json fence around it."""
    s = text.strip()
    if s.startswith("```"):
        s = s.strip("`")
        s = s[s.find("\n") + 1:] if "\n" in s else s
    start, end = s.find("{"), s.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("no JSON object in the answer")
    return json.loads(s[start:end + 1])


def run_tool_loop(llm: Llm, *, purpose: Purpose, system: str, user: str, tools: dict[str, ReadTool],
                  submit_name: str, schema: type[P], usage: LlmUsage) -> _LoopResult[P]:
    """Ask the model, run the read tools it calls (bounded), and read its typed answer. Never raises."""
    from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage

    cfg = llm.config
    started = time.monotonic()
    deadline = started + cfg.wall_budget_s
    messages: list[Any] = [SystemMessage(system), HumanMessage(user)]
    submit_spec = {"type": "function", "function": {
        "name": submit_name, "description": f"Submit your final {purpose} (once).",
        "parameters": schema.model_json_schema()}}
    raw: dict[str, Any] | None = None
    problems: list[str] = []
    try:
        down = llm.down_reason()
        if down:
            raise LlmUnavailable(f"{down}; skipped (retrying after {cfg.down_cooldown_s:g}s)")
        bound = llm.chat.bind_tools([*(t.spec() for t in tools.values()), submit_spec], tool_choice="auto")
        for _ in range(cfg.max_steps):
            if usage.total_tokens >= cfg.max_tokens:
                raise LlmUnavailable(f"LLM token budget of {cfg.max_tokens} used up ({usage.total_tokens})")
            ai = llm.invoke(bound, messages, deadline=deadline, purpose=purpose)
            llm.account(usage, ai, purpose)
            usage.steps += 1
            messages.append(ai)
            for bad in getattr(ai, "invalid_tool_calls", None) or []:
                problems.append(f"{bad.get('name')}: arguments are not valid JSON")
                messages.append(ToolMessage(f"error: the arguments of {bad.get('name')} are not valid JSON",
                                            tool_call_id=bad.get("id") or "invalid"))
            calls = list(getattr(ai, "tool_calls", None) or [])
            if not calls:
                if getattr(ai, "invalid_tool_calls", None):
                    continue  # it tried to call a tool; let it correct itself within the budget
                content = ai.content if isinstance(ai.content, str) else ""
                try:
                    data = _parse_json_text(content)
                    raw = data if isinstance(data, dict) else {"value": data}
                    return _LoopResult(schema.model_validate(data), raw, None)
                except (ValueError, ValidationError) as exc:
                    problems.append(f"plain answer is not a valid {purpose}: {_short(exc)}")
                    break  # ask once more, for structured output only
            submitted: P | None = None
            for call in calls:
                name, args = call["name"], call.get("args") or {}
                call_id = call.get("id") or name
                if name == submit_name:
                    raw = dict(args)
                    try:
                        submitted = schema.model_validate(args)
                    except ValidationError as exc:
                        problems.append(f"{submit_name} arguments invalid: {_short(exc)}")
                        messages.append(ToolMessage(f"error: invalid arguments: {_short(exc)}",
                                                    tool_call_id=call_id))
                        continue
                    messages.append(ToolMessage("received", tool_call_id=call_id))
                elif name in tools:
                    usage.tools_called.append(name)
                    messages.append(ToolMessage(_run_read_tool(tools[name], args), tool_call_id=call_id))
                else:
                    # a tool the model made up (or read about in a log): refused, and it learns the list
                    usage.tools_called.append(f"refused:{name}")
                    problems.append(f"called unknown tool {name!r}")
                    messages.append(ToolMessage(
                        f"error: there is no tool {name!r}; the tools are: {', '.join([*tools, submit_name])}",
                        tool_call_id=call_id))
            if submitted is not None:
                return _LoopResult(submitted, raw, None)
        # Out of steps (or a plain answer that did not parse): one structured-output request, if in budget.
        if time.monotonic() < deadline and usage.total_tokens < cfg.max_tokens:
            structured = llm.chat.with_structured_output(schema, method="json_schema", include_raw=True)
            out = llm.invoke(structured, [*messages, HumanMessage(
                f"Answer now with the JSON object for {submit_name}, and nothing else.")],
                deadline=deadline, purpose=purpose)
            raw_msg = out.get("raw") if isinstance(out, dict) else None
            if raw_msg is not None:
                llm.account(usage, raw_msg, purpose)
                usage.steps += 1
            parsed = out.get("parsed") if isinstance(out, dict) else None
            if isinstance(parsed, schema):
                return _LoopResult(parsed, parsed.model_dump(mode="json"), None)
            err = out.get("parsing_error") if isinstance(out, dict) else None
            problems.append(f"structured answer is not a valid {purpose}: {_short(err) if err else 'empty'}")
        why = "; ".join(problems[-3:]) or f"no {purpose} within {cfg.max_steps} steps"
        return _LoopResult(None, raw, f"malformed answer from the LLM: {why}")
    except Exception as exc:  # the LLM is optional: whatever goes wrong, the deterministic path goes on
        msg = llm.describe_error(exc, purpose)
        log.warning("%s; using the deterministic %s", msg, purpose)
        return _LoopResult(None, raw, msg)
    finally:
        usage.wall_s += time.monotonic() - started


def _short(exc: Any) -> str:
    if isinstance(exc, ValidationError):
        errs = exc.errors()
        return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in errs[:3])
    return str(exc)[:200]


def _run_read_tool(tool: ReadTool, args: dict[str, Any]) -> str:
    try:
        parsed = tool.params.model_validate(args)
    except ValidationError as exc:
        return f"error: invalid arguments for {tool.name}: {_short(exc)}"
    try:
        result = tool.run(parsed)
    except Exception as exc:  # a read tool failing is data for the model, not a crash
        result = f"error: {type(exc).__name__}: {exc}"
    return prompts.tool_result(tool.name, result)


# ---------------------------------------------------------------------------------------- validation


def resource_exists(resource: str, snap: ClusterSnapshot, incident: Incident | None = None) -> bool:
    """Does an id name something in this cluster? (the incident's own resource always counts: a GPU that
    fell off the bus may be missing from NVML's list)."""
    if incident is not None and resource in (incident.resource, *(s.resource for s in incident.signals)):
        return True
    if resource == "cluster":
        return True
    return (snap.node(resource) is not None or snap.gpu(resource) is not None or snap.pod(resource) is not None
            or snap.model(resource) is not None or any(p.workload == resource for p in snap.pods))


def _unknown_step(i: int, action: str, target: str, snap: ClusterSnapshot, incident: Incident) -> str | None:
    """Why a model's step names something that is not there (an action off the whitelist, a target not in
    the cluster), or None: the first checks every proposed step meets, whoever proposed the plan."""
    if action not in ACTION_TOOLS:
        return f"step {i} {action}@{target}: {action!r} is not a whitelisted action"
    if not resource_exists(target, snap, incident):
        return f"step {i} {action}@{target}: target {target!r} does not exist in the cluster"
    return None


def validate_diagnosis(proposal: DiagnosisProposal, deterministic: Diagnosis, snap: ClusterSnapshot,
                       incident: Incident, known_runbooks: set[str] | None = None) -> tuple[Diagnosis | None, str]:
    """(diagnosis to use, reason). None = rejected. The fault signatures decide the root cause and where it
    is; the model may explain them, add evidence and cite further runbooks."""
    if proposal.root_cause not in known_root_causes():  # the contract's labels and the library's own
        return None, f"unknown root-cause label {proposal.root_cause!r}"
    if not resource_exists(proposal.resource, snap, incident):
        return None, f"resource {proposal.resource!r} does not exist in the cluster"
    if (proposal.root_cause, proposal.resource) != (deterministic.root_cause, deterministic.resource):
        return None, (f"disagrees with the fault signatures: LLM says {proposal.root_cause} at {proposal.resource}, "
                      f"the rules say {deterministic.root_cause} at {deterministic.resource}")
    notes: list[str] = []
    extra: list[str] = []
    for rid in proposal.runbook_ids:
        if rid in deterministic.runbook_ids or rid in extra:
            continue
        if known_runbooks is not None and rid not in known_runbooks:
            notes.append(f"dropped unknown runbook {rid!r}")
            continue
        extra.append(rid)
    evidence = list(deterministic.evidence)
    for e in proposal.evidence[:8]:
        if not resource_exists(e.resource, snap, incident):
            notes.append(f"dropped evidence about unknown resource {e.resource!r}")
            continue
        evidence.append(Evidence(kind=f"llm:{e.kind}"[:80], resource=e.resource, detail=e.detail))
    diag = deterministic.model_copy(update={
        "summary": proposal.summary.strip() or deterministic.summary, "evidence": evidence,
        # the deterministic runbook stays first: the plan node picks its runbook from runbook_ids[0]
        "runbook_ids": [*deterministic.runbook_ids, *extra], "source": "llm",
    })
    reason = "agrees with the fault signatures" + (f" ({'; '.join(notes)})" if notes else "")
    return diag, reason


# Parameters the model may tune, within the tool's own limits; every other parameter must be the
# remediator's (e.g. `force` on a reschedule is only ever set for pods on a NotReady node).
TUNABLE_PARAMS: dict[str, frozenset[str]] = {
    "drain_node": frozenset({"grace_period_s", "deadline_s"}),
    "rollback_model": frozenset({"to_version"}),
    "promote_model": frozenset({"min_margin"}),
}


def validate_plan(proposal: PlanProposal, deterministic: ActionPlan, runbook: Runbook | None,
                  snap: ClusterSnapshot, incident: Incident) -> tuple[ActionPlan | None, str]:
    """(plan to use, reason). None = rejected. Every step must be whitelisted, valid, on an existing target,
    prescribed by the runbook *for this incident*, and no required step may be left out."""
    if len(proposal.steps) > MAX_PLAN_STEPS:
        return None, (f"proposes {len(proposal.steps)} steps, more than the {MAX_PLAN_STEPS} any runbook needs: "
                      + _listing(_plan_problems(proposal, deterministic, runbook, snap, incident)[0]))
    return _validate_plan(proposal, deterministic, runbook, snap, incident)


MAX_PLAN_STEPS = 20
MAX_LISTED_PROBLEMS = 8


def _listing(problems: list[str]) -> str:
    shown = "; ".join(problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    return shown + (f"; and {more} more" if more > 0 else "")


def _validate_plan(proposal: PlanProposal, deterministic: ActionPlan, runbook: Runbook | None,
                   snap: ClusterSnapshot, incident: Incident) -> tuple[ActionPlan | None, str]:
    problems, notes, chosen = _plan_problems(proposal, deterministic, runbook, snap, incident)
    allowed = {s.action.key: s for s in deterministic.steps}
    if problems:
        return None, _listing(problems)
    dropped = [k for k in allowed if k not in chosen]
    if dropped:
        notes.append(f"leaves out optional {', '.join(dropped)}")
    steps = [chosen[k] for k in allowed if k in chosen]  # the runbook's order (cordon before drain)
    said = proposal.rationale.strip()
    rationale = (f"{deterministic.rationale}; LLM: {said[:500]}" if said and said != deterministic.rationale
                 else deterministic.rationale)
    plan = deterministic.model_copy(update={"steps": steps, "rationale": rationale})
    return plan, "matches the runbook" + (f" ({'; '.join(notes)})" if notes else "")


def _plan_problems(proposal: PlanProposal, deterministic: ActionPlan, runbook: Runbook | None,
                   snap: ClusterSnapshot, incident: Incident
                   ) -> tuple[list[str], list[str], dict[str, PlannedAction]]:
    """(problems, notes, accepted steps by key) for every step of a proposal."""
    allowed = {s.action.key: s for s in deterministic.steps}
    prescribed = {st.action for st in runbook.actions} if runbook is not None else set()
    problems: list[str] = []
    notes: list[str] = []
    chosen: dict[str, PlannedAction] = {}
    for i, st in enumerate(proposal.steps, start=1):
        key = f"{st.action}@{st.target}"
        if (problem := _unknown_step(i, st.action, st.target, snap, incident)) is not None:
            problems.append(problem)
            continue
        if st.action not in prescribed:
            rb = runbook.id if runbook is not None else "no runbook"
            problems.append(f"step {i} {key}: {rb} does not prescribe {st.action}")
            continue
        base = allowed.get(key)
        if base is None:
            targets = sorted(s.action.target for s in deterministic.steps if s.action.name == st.action)
            problems.append(f"step {i} {key}: for this incident the runbook applies {st.action} to "
                            f"{', '.join(targets) or 'nothing'}, not {st.target}")
            continue
        params = base.action.given_params()
        tunable = TUNABLE_PARAMS.get(st.action, frozenset())
        bad = [k for k, v in st.params.items() if k not in tunable and params.get(k) != v and k != "message"]
        if bad:
            problems.append(f"step {i} {key}: may not change parameter(s) {', '.join(sorted(bad))}")
            continue
        params.update({k: v for k, v in st.params.items() if k in tunable})
        if st.action == "rollback_model" and "to_version" in params:
            m = snap.model(st.target)
            v = params["to_version"]
            if m is not None and (not isinstance(v, int) or v not in m.versions or v >= m.serving_version):
                problems.append(f"step {i} {key}: version {v!r} is not an earlier registered version")
                continue
        try:
            action = validate_action(Action(name=base.action.name, target=st.target, params=params))
        except ToolError as exc:
            problems.append(f"step {i} {key}: {exc}")
            continue
        if key in chosen:
            if chosen[key].action != action:
                problems.append(f"step {i} {key}: proposed twice with different parameters")
            continue
        if params != base.action.given_params():
            notes.append(f"{key} parameters {params}")
        chosen[key] = base.model_copy(update={"action": action, "why": (st.why.strip() or base.why)[:1000]})
    missing = [k for k, s in allowed.items() if not s.optional and k not in chosen]
    if missing:
        problems.append(f"leaves out {', '.join(missing)}, which the runbook requires")
    return problems, notes, chosen


# ------------------------------------------------------------------------------------- entry points


MAX_INVESTIGATION_STEPS = 3


def _blast_radius(incident: Incident, snap: ClusterSnapshot) -> set[str]:
    """What an investigation of `incident` may touch: its resource, that GPU's node, the pods on them, and
    their workloads. A step anywhere else (another node, every node) is outside the incident."""
    res = incident.resource
    node = res.split("/", 1)[0] if "/gpu-" in res else (res if snap.node(res) is not None else None)
    pods = list(snap.pods_on_gpu(res)) if "/gpu-" in res else []
    if node is not None:
        pods += [p for p in snap.pods if p.node == node]
    pod = snap.pod(res)
    if pod is not None:
        pods.append(pod)
    return {res, *([node] if node else []), *(p.name for p in pods), *(p.workload for p in pods)}


def validate_investigation(proposal: InvestigationProposal, deterministic: ActionPlan, snap: ClusterSnapshot,
                           incident: Incident, model: str) -> tuple[ActionPlan | None, str]:
    """(model-proposed plan, reason). None = rejected. At most three steps, each whitelisted and valid, on an
    existing target inside the incident's blast radius. The deterministic steps (the page to a person) are
    kept after the model's, so that a person is told whatever the model proposes."""
    problems: list[str] = []
    if len(proposal.steps) > MAX_INVESTIGATION_STEPS:
        problems.append(f"proposes {len(proposal.steps)} steps, more than the {MAX_INVESTIGATION_STEPS} an "
                        "investigation may")
    radius = _blast_radius(incident, snap)
    chosen: list[PlannedAction] = []
    for i, st in enumerate(proposal.steps[:MAX_PLAN_STEPS], start=1):
        key = f"{st.action}@{st.target}"
        if (problem := _unknown_step(i, st.action, st.target, snap, incident)) is not None:
            problems.append(problem)
            continue
        if st.target not in radius:
            problems.append(f"step {i} {key}: {st.target} is outside this incident (it may touch "
                            f"{', '.join(sorted(radius))})")
            continue
        params = {k: v for k, v in st.params.items() if k != "message"}
        try:
            action = validate_action(Action(name=st.action, target=st.target, params=params))
        except ToolError as exc:
            problems.append(f"step {i} {key}: {exc}")
            continue
        if any(c.action.key == action.key for c in chosen):
            problems.append(f"step {i} {key}: proposed twice")
            continue
        chosen.append(PlannedAction(action=action, why=(st.why.strip() or "proposed by the model")[:1000]))
    if problems:
        return None, _listing(problems)
    hypothesis = proposal.hypothesis.strip()[:800]
    said = proposal.rationale.strip()[:500]
    rationale = (f"model-proposed ({model}): hypothesis: {hypothesis}" + (f"; reasoning: {said}" if said else "")
                 + "; every step needs a person's approval")
    tail = [s for s in deterministic.steps if s.action.key not in {c.action.key for c in chosen}]
    plan = deterministic.model_copy(update={"steps": [*chosen, *tail], "rationale": rationale,
                                            "proposed_by": "model"})
    return plan, f"{len(chosen)} step(s) inside the incident" if chosen else "no step: a person is paged"


def llm_investigate(llm: Llm | None, incident: Incident, diagnosis: Diagnosis, snapshot: ClusterSnapshot,
                    deterministic_plan: ActionPlan, runbooks: RunbookSourceLike | None = None
                    ) -> LlmOutcome[ActionPlan]:
    """For an `unknown` incident: the model investigates with the read tools and proposes a hypothesis and a
    plan of whitelisted actions. Validated here; the governor then requires approval for every step (the
    plan is `proposed_by="model"`). Never raises; anything unusable falls back to the deterministic plan."""
    if llm is None:
        return LlmOutcome("investigation", "-", False, "no LLM configured")
    usage = LlmUsage()
    nearest, _ = _cited_runbooks(runbooks, diagnosis.runbook_ids, diagnosis.root_cause)
    result = run_tool_loop(
        llm, purpose="investigation", system=prompts.investigate_system(llm.config.max_steps),
        user=prompts.investigate_user(incident, diagnosis, snapshot, nearest),
        tools=read_tools(snapshot, runbooks), submit_name="submit_investigation", schema=InvestigationProposal,
        usage=usage)
    if result.proposal is None:
        return _record(LlmOutcome("investigation", llm.model, False, result.error or "no answer", raw=result.raw,
                                  error=result.error, usage=usage))
    plan, reason = validate_investigation(result.proposal, deterministic_plan, snapshot, incident, llm.model)
    return _record(LlmOutcome("investigation", llm.model, plan is not None, reason, proposed=plan,
                              raw=result.raw, usage=usage))


def _record(outcome: LlmOutcome[Any]) -> LlmOutcome[Any]:
    LLM_PROPOSALS.labels(outcome.purpose, outcome.verdict).inc()
    return outcome


def _cited_runbooks(runbooks: RunbookSourceLike | Sequence[Runbook] | None, ids: Sequence[str],
                    root_cause: str) -> tuple[list[Runbook], set[str] | None]:
    """The runbooks to show the model, and the ids it may cite (None: cannot tell, accept any)."""
    if runbooks is None:
        return [], None
    if isinstance(runbooks, Sequence):
        return list(runbooks), {r.id for r in runbooks}
    shown: list[Runbook] = []
    primary = runbooks.for_cause(root_cause, ids[0] if ids else None)
    if primary is not None:
        shown.append(primary)
    known: set[str] | None = None
    all_fn = getattr(runbooks, "all", None)
    if callable(all_fn):
        catalogue = list(all_fn())
        known = {r.id for r in catalogue}
        by_id = {r.id: r for r in catalogue}
        shown.extend(by_id[i] for i in ids if i in by_id and by_id[i] not in shown)
    return shown, known


def llm_diagnose(llm: Llm | None, incident: Incident, snapshot: ClusterSnapshot, finding: Finding,
                 runbooks: RunbookSourceLike | Sequence[Runbook] | None,
                 deterministic: Diagnosis | None = None) -> LlmOutcome[Diagnosis]:
    """Ask the LLM for a diagnosis and validate it against the deterministic one. Never raises.

    `runbooks` is the graph's runbook source (`deps.runbooks`) or a list of runbooks; `deterministic` is
    the diagnosis the rules made from `finding` (built here with the primary runbook when not given).
    """
    if deterministic is None:
        from agents.diagnostician import to_diagnosis

        primary = None
        if runbooks is not None and not isinstance(runbooks, Sequence):
            primary = runbooks.for_cause(finding.root_cause, finding.runbook_hint)
        deterministic = to_diagnosis(finding, [primary.id] if primary is not None else [])
    if llm is None:
        return LlmOutcome("diagnosis", "-", False, "no LLM configured")
    usage = LlmUsage()
    shown, known = _cited_runbooks(runbooks, deterministic.runbook_ids, deterministic.root_cause)
    source = runbooks if runbooks is not None and not isinstance(runbooks, Sequence) else None
    result = run_tool_loop(
        llm, purpose="diagnosis", system=prompts.diagnose_system(llm.config.max_steps),
        user=prompts.diagnose_user(incident, snapshot, deterministic, shown),
        tools=read_tools(snapshot, source), submit_name="submit_diagnosis", schema=DiagnosisProposal,
        usage=usage)
    if result.proposal is None:
        return _record(LlmOutcome("diagnosis", llm.model, False, result.error or "no answer", raw=result.raw,
                                  error=result.error, usage=usage))
    diag, reason = validate_diagnosis(result.proposal, deterministic, snapshot, incident, known)
    return _record(LlmOutcome("diagnosis", llm.model, diag is not None, reason, proposed=diag, raw=result.raw,
                              usage=usage))


def llm_plan(llm: Llm | None, incident: Incident, diagnosis: Diagnosis, runbook: Runbook | None,
             snapshot: ClusterSnapshot, deterministic_plan: ActionPlan,
             runbooks: RunbookSourceLike | None = None) -> LlmOutcome[ActionPlan]:
    """Ask the LLM for a plan and validate it against the runbook and the deterministic plan. Never raises."""
    if llm is None:
        return LlmOutcome("plan", "-", False, "no LLM configured")
    usage = LlmUsage()
    result = run_tool_loop(
        llm, purpose="plan", system=prompts.plan_system(llm.config.max_steps),
        user=prompts.plan_user(incident, diagnosis, runbook, snapshot, deterministic_plan),
        tools=read_tools(snapshot, runbooks), submit_name="submit_plan", schema=PlanProposal, usage=usage)
    if result.proposal is None:
        return _record(LlmOutcome("plan", llm.model, False, result.error or "no answer", raw=result.raw,
                                  error=result.error, usage=usage))
    plan, reason = validate_plan(result.proposal, deterministic_plan, runbook, snapshot, incident)
    return _record(LlmOutcome("plan", llm.model, plan is not None, reason, proposed=plan, raw=result.raw,
                              usage=usage))


__all__ = [
    "DiagnosisProposal", "InvestigationProposal", "Llm", "LlmConfig", "LlmOutcome", "LlmUnavailable", "LlmUsage",
    "PlanProposal", "build_llm", "llm_diagnose", "llm_investigate", "llm_plan", "read_tools", "run_tool_loop",
    "validate_diagnosis", "validate_investigation", "validate_plan",
]

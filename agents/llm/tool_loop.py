"""The bounded tool-calling loop: ask the model, run the read tools it calls, read its typed answer
(a submit tool call, or structured output). Never raises.

Layer: agents (`agents.llm`); `langchain_core` is imported lazily.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from agents import prompts
from agents.llm.client import Llm, LlmUnavailable
from agents.llm.outcomes import LlmUsage, Purpose
from agents.llm.read_tools import ReadTool

log = logging.getLogger("agents.llm")


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

"""One configured model: the LangChain client (built on first use), bounded retries inside a wall-time
budget, an endpoint marked down after a connection failure, and token and cost accounting.

Layer: agents (`agents.llm`); `langchain_openai`, `openai` and `tenacity` are imported lazily, only when a
model is configured and called.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from agents.llm.config import LlmConfig
from agents.llm.metrics import LLM_COST, LLM_REQUESTS, LLM_TOKENS
from agents.llm.outcomes import LlmUsage

if TYPE_CHECKING:
    from core.settings import Settings



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
    return Llm(LlmConfig.from_settings(settings))

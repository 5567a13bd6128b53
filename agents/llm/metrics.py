"""The LLM's process-wide Prometheus counters: tokens, cost, HTTP calls, proposals by verdict.

Layer: agents (`agents.llm`). Registered once per process, at import; `/metrics` exports them.
"""

from __future__ import annotations

from prometheus_client import Counter

LLM_TOKENS = Counter("opsmedic_llm_tokens", "Tokens sent to and received from the LLM",
                     ["purpose", "direction"])
LLM_COST = Counter("opsmedic_llm_cost_usd", "Estimated LLM cost in US dollars", ["purpose"])
LLM_REQUESTS = Counter("opsmedic_llm_requests", "LLM HTTP calls by result", ["purpose", "result"])
LLM_PROPOSALS = Counter("opsmedic_llm_proposals", "LLM proposals by verdict", ["purpose", "verdict"])

"""`opsmedic bench --only chat`: how fast the chat answers on-call questions after start.

Layer: interfaces. Runs the demo's scenario into a temporary database (what `opsmedic demo` leaves), starts
the router (the embedding model and the labelled examples' vectors: `chat_start_s`), then asks a round of
natural questions through `answer()` — routing, reading the records, answering, auditing and storing the
turn — and reports the per-question wall time (`chat_ms_p50`, `chat_ms_p95`) and the router's share alone
(`chat_route_ms_p95`).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

QUESTIONS = (
    "what's wrong right now?", "is the cluster healthy?", "how many GPUs are down?",
    "who approved the drain on node-1?", "what did opsmedic do today?", "was anything refused by the policy?",
    "which runbook did you use?", "did anyone get paged?", "why is node-1 cordoned?", "status of node-2",
    "what would happen if I drained node-2", "pending approvals", "open incidents", "what happened?",
    "what changed in the last hour?", "is gpu 3 on node 1 ok", "tell me a joke", "whats broken",
)


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[max(0, min(len(s) - 1, int(round(q * (len(s) - 1)))))]


def bench_chat(rounds: int = 3) -> dict[str, Any]:
    from opsmedic.chat import router
    from opsmedic.chat.roles import Roles
    from opsmedic.chat.service import ChatContext, answer
    from opsmedic.evaluation import run_scenario
    from sandbox.scenario import DEFAULT_DEMO, bundled_scenarios, load_scenario

    with tempfile.TemporaryDirectory(prefix="opsmedic-chat-bench-") as tmp:
        db = Path(tmp) / "opsmedic.db"
        run_scenario(load_scenario(bundled_scenarios()[DEFAULT_DEMO]), db_path=db)
        t0 = time.perf_counter()
        router.warm()
        start_s = time.perf_counter() - t0
        ctx = ChatContext(db_path=db, roles=Roles(), conversation="bench")
        # "after start": the first read of the records and the policy's first parse are not measured
        answer("open incidents", "bench", ctx)
        answer("would draining node-3 be allowed?", "bench", ctx)
        total: list[float] = []
        route: list[float] = []
        for _ in range(rounds):
            for q in QUESTIONS:
                t = time.perf_counter()
                router.understand(q, ("node-1", "node-1/gpu-3", "llama-ft-1"))
                route.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                answer(q, "bench", ChatContext(db_path=db, roles=Roles(), conversation="bench"))
                total.append((time.perf_counter() - t) * 1000)
    return {
        "chat_ms_p50": round(_pct(total, 0.5), 1),
        "chat_ms_p95": round(_pct(total, 0.95), 1),
        "chat_route_ms_p95": round(_pct(route, 0.95), 1),
        "chat_start_s": round(start_s, 2),
        "chat_router": router.backend(),
        "chat_questions_measured": len(total),
    }

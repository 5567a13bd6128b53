"""Retrieval benchmark: recall@1, recall@3, MRR and query latency of the runbook index on the eval set.

Layer: engines (``knowledge``); called by ``opsmedic bench`` (the retrieval group) and by the tests.

Method: load the bundled runbooks, build an in-memory index with the default local embedder (build time is
reported, not part of the latency), warm it up with three queries, then run every query of the evaluation
set once, timing each ``search`` call end to end (query embedding, Qdrant dense + sparse search, fusion).
A query counts as recalled at k when the expected runbook is among the first k hits; MRR averages 1/rank
(0 when absent from the top 10).

The sets: ``queries`` (development: alert- and engineer-style, what the retrieval was developed against),
``heldout`` (same style, written before any tuning and only measured), ``paraphrase`` (written last in
loose wording without the runbooks' keywords; it exposed one flaw — BM25 normalised by the best hit —
which was fixed by a principled change rather than a weight search, so it is only semi-held-out).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import RunbookError

if TYPE_CHECKING:
    from knowledge.index import RunbookIndex

DEFAULT_EVAL = Path(__file__).resolve().parents[1] / "tests" / "knowledge" / "retrieval_eval.yaml"


def load_eval_set(path: str | Path | None = None) -> dict[str, list[tuple[str, str]]]:
    """{"queries": [(query, expected_id)], "heldout": [...], "paraphrase": [...]} from the YAML file."""
    import yaml

    from core.safe_yaml import safe_load

    p = Path(path) if path is not None else DEFAULT_EVAL
    if not p.is_file():
        raise RunbookError(
            "retrieval evaluation set not found (it lives in the source tree's tests/)", where=str(p)
        )
    try:
        data = safe_load(p.read_text(encoding="utf-8")) or {}  # refuses alias bombs and deep nesting
    except yaml.YAMLError as exc:
        raise RunbookError(f"invalid YAML: {getattr(exc, 'problem', None) or exc}", where=str(p)) from None
    out: dict[str, list[tuple[str, str]]] = {}
    for part in ("queries", "heldout", "paraphrase"):
        rows = data.get(part) or []
        try:
            out[part] = [(str(r["q"]), str(r["expect"])) for r in rows]
        except (KeyError, TypeError) as exc:
            raise RunbookError(f"each entry of {part!r} needs q and expect ({exc})", where=str(p)) from None
    return out


def _percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = (len(ordered) - 1) * pct / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def evaluate(index: Any, cases: list[tuple[str, str]], *, mode: str = "hybrid") -> dict[str, Any]:
    """Run ``cases`` against an already built ``RunbookIndex``; return metrics and the misses."""
    ranks: list[int | None] = []
    times_ms: list[float] = []
    cpu_ms: list[float] = []
    misses: list[dict[str, Any]] = []
    for query, expected in cases:
        t0, c0 = time.perf_counter(), time.process_time()
        hits = index.search(query, top_k=10, mode=mode)
        times_ms.append((time.perf_counter() - t0) * 1000)
        cpu_ms.append((time.process_time() - c0) * 1000)
        ids = [h.runbook.id for h in hits]
        rank = ids.index(expected) + 1 if expected in ids else None
        ranks.append(rank)
        if rank != 1:
            misses.append({"query": query, "expect": expected, "rank": rank, "got": ids[:3]})
    n = max(len(cases), 1)
    return {
        "queries": len(cases),
        "recall_at_1": round(sum(1 for r in ranks if r == 1) / n, 4),
        "recall_at_3": round(sum(1 for r in ranks if r is not None and r <= 3) / n, 4),
        "mrr": round(sum(1 / r for r in ranks if r is not None) / n, 4),
        "p50_ms": round(statistics.median(times_ms), 2) if times_ms else 0.0,
        "p95_ms": round(_percentile(times_ms, 95), 2),
        # CPU time of this process per query: what the latency would be on an otherwise idle machine.
        "cpu_p95_ms": round(_percentile(cpu_ms, 95), 2),
        "misses": misses,
    }


def run_retrieval_bench(
    eval_path: str | Path | None = None, *, mode: str = "hybrid", index: RunbookIndex | None = None
) -> dict[str, Any]:
    """The retrieval figures for ``opsmedic bench``, as one flat dict.

    Keys: ``recall_at_1``, ``retrieval_recall_at_3``, ``retrieval_mrr``, ``retrieval_p50_ms``,
    ``retrieval_p95_ms`` (wall clock), ``retrieval_cpu_p95_ms`` (this process's CPU time: the latency on an
    idle machine), ``retrieval_queries``, ``retrieval_index_build_s``; recall/MRR with a ``heldout_`` and a
    ``paraphrase_`` prefix for the two sets that were not tuned against.
    """
    from knowledge.index import RunbookIndex
    from knowledge.runbooks import load_runbooks

    cases = load_eval_set(eval_path)
    own = index is None
    idx = RunbookIndex.open(":memory:") if index is None else index
    t0 = time.perf_counter()
    idx.ensure_indexed(load_runbooks().runbooks)
    build_s = time.perf_counter() - t0
    # Warm-up: the first queries pay for lazy initialisation in onnxruntime and Qdrant.
    for query in (
        "warm-up: gpu fell off the bus",
        "warm-up: model accuracy dropped",
        "warm-up: node not ready",
    ):
        idx.search(query, top_k=10, mode=mode)
    try:
        dev = evaluate(idx, cases["queries"], mode=mode)
        held = evaluate(idx, cases["heldout"], mode=mode) if cases["heldout"] else None
        para = evaluate(idx, cases["paraphrase"], mode=mode) if cases["paraphrase"] else None
    finally:
        if own:
            idx.close()
    out: dict[str, Any] = {
        "recall_at_1": dev["recall_at_1"],
        "retrieval_recall_at_3": dev["recall_at_3"],
        "retrieval_mrr": dev["mrr"],
        "retrieval_p50_ms": dev["p50_ms"],
        "retrieval_p95_ms": dev["p95_ms"],
        "retrieval_cpu_p95_ms": dev["cpu_p95_ms"],
        "retrieval_queries": dev["queries"],
        "retrieval_index_build_s": round(build_s, 2),  # 0 when the index was already built
    }
    if held is not None:
        out.update(
            {
                "heldout_recall_at_1": held["recall_at_1"],
                "heldout_retrieval_recall_at_3": held["recall_at_3"],
                "heldout_retrieval_mrr": held["mrr"],
                "heldout_retrieval_p95_ms": held["p95_ms"],
                "heldout_queries": held["queries"],
            }
        )
    if para is not None:
        out.update(
            {
                "paraphrase_recall_at_1": para["recall_at_1"],
                "paraphrase_retrieval_recall_at_3": para["recall_at_3"],
                "paraphrase_retrieval_mrr": para["mrr"],
                "paraphrase_queries": para["queries"],
            }
        )
    return out

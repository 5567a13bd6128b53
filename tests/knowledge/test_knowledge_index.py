"""The Qdrant-backed runbook index: rebuilds only on change, persistence, the folder lock, filters."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import knowledge.index as index_module
from core.errors import ConfigError, RunbookError
from knowledge.index import COLLECTION_PREFIX, RunbookIndex
from knowledge.runbooks import Runbook, load_runbooks

REPO = Path(__file__).resolve().parents[2]


def test_index_is_rebuilt_only_when_runbooks_change(small_folder: Path) -> None:
    index = RunbookIndex.open(":memory:")
    first = index.ensure_indexed(load_runbooks(small_folder).runbooks)
    assert first.rebuilt and first.runbooks == 3 and first.points > 3
    again = index.ensure_indexed(load_runbooks(small_folder).runbooks)
    assert not again.rebuilt and again.collection == first.collection

    path = small_folder / "gpu-thermal-throttle.md"
    path.write_text(path.read_text().replace("## Triage", "## Triage\nAlso check the BMC fan log."))
    changed = index.ensure_indexed(load_runbooks(small_folder).runbooks)
    assert changed.rebuilt and changed.collection != first.collection
    # the stale collection is dropped, so there is exactly one index
    names = [
        c.name for c in index._client.get_collections().collections if c.name.startswith(COLLECTION_PREFIX)
    ]
    assert names == [changed.collection]
    index.close()


def test_local_folder_persists_and_skips_rebuild(small_folder: Path, tmp_path: Path) -> None:
    runbooks = load_runbooks(small_folder).runbooks
    store = tmp_path / "qdrant"
    with RunbookIndex.open(store) as index:
        assert index.ensure_indexed(runbooks).rebuilt
    with RunbookIndex.open(store) as index:
        assert not index.ensure_indexed(runbooks).rebuilt
        assert index.search("XID 79 GPU fell off the bus", top_k=1)[0].runbook.id == "gpu-xid79-fell-off-bus"
    # A process that did not call ensure_indexed reads the runbooks from the payload.
    with RunbookIndex.open(store) as index:
        hit = index.search("GPU temperature 93 C, HW thermal slowdown", top_k=1)[0]
        assert hit.runbook.id == "gpu-thermal-throttle" and hit.runbook.actions


def test_locked_folder_falls_back_to_memory_or_says_why(small_folder: Path, tmp_path: Path) -> None:
    store = tmp_path / "qdrant"
    holder = RunbookIndex.open(store)
    try:
        with pytest.raises(ConfigError) as info:
            RunbookIndex.open(store, fallback_to_memory=False)
        assert "in use by another opsmedic process" in str(info.value) and str(store) in str(info.value)
        fallback = RunbookIndex.open(store)
        assert fallback.location == ":memory:"
        fallback.ensure_indexed(load_runbooks(small_folder).runbooks)
        assert fallback.search("fell off the bus", top_k=1)
        fallback.close()
    finally:
        holder.close()


def test_search_before_indexing_is_a_clear_error() -> None:
    with RunbookIndex.open(":memory:") as index, pytest.raises(RunbookError, match="not built"):
        index.search("anything")


def test_duplicate_ids_are_refused(bundled_runbooks: list[Runbook]) -> None:
    with RunbookIndex.open(":memory:") as index, pytest.raises(RunbookError, match="duplicate"):
        index.ensure_indexed([bundled_runbooks[0], bundled_runbooks[0]])


def test_empty_query_and_zero_k(bundled_index: RunbookIndex) -> None:
    assert bundled_index.search("   ") == []
    assert bundled_index.search("xid 79", top_k=0) == []


def test_hits_are_ranked_and_bounded(bundled_index: RunbookIndex) -> None:
    hits = bundled_index.search("GPU has fallen off the bus, Xid 79", top_k=5)
    assert len(hits) == 5
    assert hits[0].runbook.id == "gpu-xid79-fell-off-bus"
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)


def test_root_cause_filter(bundled_index: RunbookIndex) -> None:
    hits = bundled_index.search("the GPU is very hot", top_k=10, root_cause="gpu_uncorrectable_ecc")
    assert hits and all("gpu_uncorrectable_ecc" in h.runbook.root_causes for h in hits)
    # with a root cause, its primary runbook comes first even for a vague query
    assert hits[0].runbook.primary and hits[0].runbook.id == "gpu-uncorrectable-ecc"


def test_resource_kind_filter(bundled_index: RunbookIndex) -> None:
    hits = bundled_index.search("accuracy dropped after deploy", top_k=10, resource_kind="node")
    assert hits and all(h.runbook.resource_kind == "node" for h in hits)
    hits = bundled_index.search("accuracy dropped after deploy", top_k=3, resource_kind="model")
    assert hits[0].runbook.id == "model-quality-regression"


def test_primary_only_filter(bundled_index: RunbookIndex) -> None:
    hits = bundled_index.search("XID 92 high single-bit ECC error rate", top_k=3, primary_only=True)
    assert hits and all(h.runbook.primary for h in hits)
    assert hits[0].runbook.id == "gpu-uncorrectable-ecc"


@pytest.mark.parametrize(
    ("root_cause", "query", "expected"),
    [
        ("gpu_fell_off_bus", "gpu_xid 79 node-1/gpu-3", "gpu-xid79-fell-off-bus"),
        ("gpu_uncorrectable_ecc", "gpu_xid 48 node-0/gpu-2", "gpu-uncorrectable-ecc"),
        ("gpu_thermal_throttle", "gpu_temp_high node-1/gpu-2 93 C", "gpu-thermal-throttle"),
        ("gpu_memory_leak", "fb_memory_growth chat-llm-1", "gpu-memory-leak"),
        ("nvlink_errors", "nvlink_errors node-0/gpu-1", "nvlink-errors"),
        ("gpu_app_error", "gpu_xid 13 fraud-model-1", "gpu-app-error-xid13"),
        ("training_job_stalled", "training_stall llama-ft-1", "training-job-stalled"),
        ("node_not_ready", "node_not_ready node-2", "node-not-ready"),
        ("pod_crashloop", "pod_crashloop fraud-model-0", "pod-crashloop"),
        ("model_quality_regression", "slo_accuracy fraud-model 0.71", "model-quality-regression"),
        ("model_latency_regression", "slo_latency fraud-model 180 ms", "model-latency-regression"),
        ("data_drift", "drift psi 0.35 amount fraud-model", "data-drift-retrain"),
    ],
)
def test_remediator_lookup_returns_the_primary_runbook(
    bundled_index: RunbookIndex, root_cause: str, query: str, expected: str
) -> None:
    assert bundled_index.search(query, top_k=1, root_cause=root_cause)[0].runbook.id == expected
    # and without the filter it is still first for these scenario-style queries
    assert bundled_index.search(query, top_k=3)[0].runbook.id == expected


def test_importing_knowledge_stays_light() -> None:
    code = (
        "import sys, knowledge, knowledge.cli, knowledge.index, knowledge.embeddings, knowledge.bench\n"
        "names = ('qdrant_client', 'onnxruntime', 'tokenizers', 'numpy', 'httpx')\n"
        "heavy = [m for m in names if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO)},
        check=True,
    )
    assert result.stdout.strip() == ""


class _CountingEmbedder:
    """The default embedder, counting how many texts it is asked to embed."""

    def __init__(self) -> None:
        from knowledge.embeddings import default_embedder

        self._inner = default_embedder()
        self.texts = 0

    @property
    def name(self) -> str:
        return self._inner.name

    def embed(self, texts: Sequence[str]) -> Any:
        self.texts += len(texts)
        return self._inner.embed(texts)


def test_rebuild_after_an_edit_reuses_stored_vectors(small_folder: Path, tmp_path: Path) -> None:
    store = tmp_path / "qdrant"
    emb = _CountingEmbedder()
    with RunbookIndex.open(store, emb) as index:
        index.ensure_indexed(load_runbooks(small_folder).runbooks)
    index_module._VECTOR_CACHE.clear()  # as in a new process
    path = small_folder / "model-quality-regression.md"
    path.write_text(path.read_text().replace("## Triage", "## Triage\nCheck the shadow traffic too."))
    emb.texts = 0
    with RunbookIndex.open(store, emb) as index:
        report = index.ensure_indexed(load_runbooks(small_folder).runbooks)
    assert report.rebuilt and report.points > 10
    assert emb.texts == 1  # only the edited section; every other chunk came from the stale collection


def test_a_repeated_search_is_answered_from_memory_until_the_runbooks_change(small_folder: Path) -> None:
    index = RunbookIndex.open(":memory:")
    index.ensure_indexed(load_runbooks(small_folder).runbooks)
    query = "GPU temperature 93 C, HW thermal slowdown"
    first = index.search(query, top_k=3)
    index._client.close()  # a second search that reached Qdrant now would fail
    assert index.search(query, top_k=3) == first
    # a filter is part of what a result answers: another filter is another search
    with pytest.raises(Exception):  # noqa: B017 - whatever the closed client raises
        index.search(query, top_k=3, root_cause="thermal_throttle")

    fresh = RunbookIndex.open(":memory:")
    fresh.ensure_indexed(load_runbooks(small_folder).runbooks)
    assert fresh.search(query, top_k=3) == first
    path = small_folder / "gpu-thermal-throttle.md"
    path.write_text(path.read_text().replace("title: ", "title: Retitled ", 1))
    fresh.ensure_indexed(load_runbooks(small_folder).runbooks)  # a new collection: not the cached answer
    hit = next(h for h in fresh.search(query, top_k=3) if h.runbook.id == "gpu-thermal-throttle")
    assert hit.runbook.title.startswith("Retitled ")
    fresh.close()

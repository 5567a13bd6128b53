"""The runbook index: Qdrant storage and hybrid (dense + BM25) retrieval with metadata filters.

Layer: engines (``knowledge``). Imports ``core.errors`` and the sibling modules; ``qdrant_client`` is
imported when an index is opened, never at module import.

Storage: Qdrant through ``qdrant-client`` — local mode in a folder by default (the single-machine
deployment), ``:memory:`` for tests and as a fallback, or a Qdrant server by URL. Each runbook is stored
as a few points: a *head* chunk (title, signals, root causes) and one chunk per body section, each with a
dense vector; the head point also carries the runbook's BM25 sparse vector (Qdrant applies IDF) and the
runbook itself as payload, so that a search needs nothing else.

Rebuilds: the collection's name embeds a fingerprint of (schema version, embedder, every runbook's id
and content hash). ``ensure_indexed`` is a no-op while that collection exists and is complete; when a
runbook changes, a new collection is built and the stale ones are dropped.

Ranking: per runbook, the best chunk's cosine similarity (dense, 0..1) plus its BM25 score divided by the
best score any runbook could get for the query's known terms (sparse, 0..1: the share of the query's
informative vocabulary it matches). Equal weights. That beats reciprocal-rank fusion on the alert-style
queries (a decisive keyword hit such as ``xid48`` is one rank vote among many for RRF), and an absolute
normaliser beats dividing by the best hit, which gives a weak keyword match full weight whenever nothing
matches well. Primary runbooks get a small bonus so that, between near ties, the runbook the remediator
is meant to use comes first; with a ``root_cause`` filter, the primary runbooks of that cause always come
first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from core.errors import ConfigError, RunbookError
from knowledge.embeddings import Embedder, default_embedder
from knowledge.runbooks import Runbook
from knowledge.text import (
    BM25_K1,
    bm25_document_vectors,
    bm25_query_vector,
    root_cause_words,
    term_id,
    tokenize,
)

if TYPE_CHECKING:
    from qdrant_client import QdrantClient
    from qdrant_client.models import ExtendedPointId

log = logging.getLogger(__name__)

SCHEMA_VERSION = 5  # bump when chunking, payload or tokenizing (text.py) changes: it forces a rebuild
COLLECTION_PREFIX = "opsmedic_runbooks_"
DENSE = "dense"
SPARSE = "bm25"

# Fusion: "weighted" (default) or "rrf" (kept for comparison in the benchmark). Equal weights were chosen
# over a tuned mix: 0.5..1.5 for the sparse weight all reach recall@1 = 1.0 on the development queries,
# and equal weights keep both the scenario-style and the paraphrased queries close to their best.
DENSE_WEIGHT = 1.0
SPARSE_WEIGHT = 1.0
PRIMARY_BONUS = 0.02
FUSION = "weighted"
RRF_K = 60
# How many chunks / runbooks each side fetches before fusion; the corpus is small, so fetch generously.
DENSE_CANDIDATES = 64
SPARSE_CANDIDATES = 32


_CACHED_SEARCHES = 256  # distinct (query, filter) pairs kept; the diagnostician asks a few dozen


class RunbookHit(BaseModel):
    """One search result: the runbook and its fused score (higher is better; not a probability)."""

    model_config = ConfigDict(frozen=True)

    runbook: Runbook
    score: float
    dense: float = 0.0
    sparse: float = 0.0


@dataclass(frozen=True)
class IndexReport:
    """What ``ensure_indexed`` did."""

    collection: str
    rebuilt: bool
    runbooks: int
    points: int


def _chunks(rb: Runbook) -> list[str]:
    """The texts embedded for one runbook: a head chunk, then one chunk per ``##`` section of the body.

    Every chunk starts with the title so that a section ("## Procedure") is never embedded without
    knowing which problem it belongs to.
    """
    causes = ", ".join(root_cause_words(rc) for rc in rb.root_causes)
    head = f"{rb.title}. {causes}. Signals: " + "; ".join(rb.signals)
    out = [head]
    for section in re.split(r"(?m)^## ", rb.body):
        text = section.strip()
        if not text or text.startswith("# "):
            # the body's "# Title" line alone repeats the head; keep only if it carries prose
            lines = text.splitlines()[1:]
            text = "\n".join(lines).strip()
            if not text:
                continue
        out.append(f"{rb.title}. {text}")
    return out


def _sparse_terms(rb: Runbook) -> list[str]:
    """BM25 document terms, with field boosts: title and signals count twice, root-cause labels once."""
    head = [rb.title, *rb.signals]
    labels = [f"{rc} {root_cause_words(rc)}" for rc in rb.root_causes]
    return tokenize(" ".join(head)) * 2 + tokenize(" ".join(labels)) + tokenize(rb.body)


def fingerprint(runbooks: Sequence[Runbook], embedder_name: str) -> str:
    items = sorted((rb.id, rb.content_hash) for rb in runbooks)
    payload = json.dumps({"v": SCHEMA_VERSION, "embedder": embedder_name, "runbooks": items}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# (embedder name, sha256 of a chunk's text) -> vector, shared by every index of the process. Bounded: a
# library has a few hundred chunks, so the bound only guards against pathological use.
_VECTOR_CACHE: dict[tuple[str, str], Any] = {}
_VECTOR_CACHE_MAX = 20_000


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _remember(embedder: str, text_sha: str, vector: Any) -> None:
    if len(_VECTOR_CACHE) >= _VECTOR_CACHE_MAX:
        _VECTOR_CACHE.clear()
    _VECTOR_CACHE[(embedder, text_sha)] = vector


def _is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


class RunbookIndex:
    """Runbooks in Qdrant, searched by hybrid retrieval. Create with :meth:`open`."""

    def __init__(self, client: QdrantClient, embedder: Embedder, location: str) -> None:
        self._client = client
        self._embedder = embedder
        self.location = location
        self._collection: str | None = None
        self._runbooks: dict[str, Runbook] = {}
        # Document frequencies of the BM25 terms (one document per runbook), to normalise sparse scores.
        self._df: dict[int, int] | None = None
        self._n_docs = 0
        # Qdrant local mode is not thread-safe; agents may search from several threads.
        self._lock = threading.RLock()
        # Results by (collection, query, filters): a diagnosis's query is per kind of incident (the same
        # text for every XID 79, every stalled job), and the ranking of a collection never changes --
        # its name fingerprints every runbook and the embedder -- so a recurring incident's retrieval
        # (an embedding plus a filtered scan, ~10-25 ms) is a dictionary look-up. Bounded, oldest out.
        self._hits: OrderedDict[tuple[Any, ...], tuple[RunbookHit, ...]] = OrderedDict()
        # the filterable labels of every point of the current collection, by point id (`_matching_ids`)
        self._labels: dict[str, list[tuple[ExtendedPointId, dict[str, Any]]]] = {}

    # ------------------------------------------------------------------------------------------ open
    @classmethod
    def open(
        cls,
        location: str | Path = ":memory:",
        embedder: Embedder | None = None,
        *,
        api_key: str | None = None,
        fallback_to_memory: bool = True,
    ) -> RunbookIndex:
        """Open an index at a folder (Qdrant local mode), ``":memory:"``, or a Qdrant server URL.

        Qdrant local mode locks its folder to one process. When the folder is taken (a daemon already holds
        it) the index falls back to an in-memory one with a warning — rebuilt from the runbooks in a few
        seconds — unless ``fallback_to_memory`` is False, when a ``ConfigError`` says what to do.
        """
        from qdrant_client import QdrantClient

        emb = embedder if embedder is not None else default_embedder()
        loc = str(location)
        if loc == ":memory:":
            return cls(QdrantClient(location=":memory:"), emb, loc)
        if _is_url(loc):
            return cls(QdrantClient(url=loc, api_key=api_key, timeout=10), emb, loc)
        Path(loc).mkdir(parents=True, exist_ok=True)
        try:
            client = QdrantClient(path=loc, force_disable_check_same_thread=True)
        except RuntimeError as exc:
            if "already accessed" not in str(exc):
                raise
            msg = (
                "the runbook index folder is in use by another opsmedic process (Qdrant local mode allows "
                "one process per folder); set OPSMEDIC_QDRANT_URL to a Qdrant server, or use another data "
                "folder"
            )
            if not fallback_to_memory:
                raise ConfigError(msg, where=loc) from None
            log.warning("%s: %s; using an in-memory index instead", loc, msg)
            return cls(QdrantClient(location=":memory:"), emb, ":memory:")
        return cls(client, emb, loc)

    def close(self) -> None:
        with self._lock:
            self._client.close()

    def __enter__(self) -> RunbookIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------- build
    def _collections(self) -> list[str]:
        return [
            c.name for c in self._client.get_collections().collections if c.name.startswith(COLLECTION_PREFIX)
        ]

    def ensure_indexed(self, runbooks: Sequence[Runbook]) -> IndexReport:
        """Make the index hold exactly ``runbooks``; rebuild only when they or the embedder changed."""
        from qdrant_client import models

        ids = [rb.id for rb in runbooks]
        if len(set(ids)) != len(ids):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            raise RunbookError(f"duplicate runbook ids: {', '.join(dupes)}", where="ensure_indexed")
        name = COLLECTION_PREFIX + fingerprint(runbooks, self._embedder.name)
        chunks = {rb.id: _chunks(rb) for rb in runbooks}
        expected = sum(len(c) for c in chunks.values())
        with self._lock:
            existing = self._collections()
            terms = [_sparse_terms(rb) for rb in runbooks]
            self._set_stats([{term_id(t) for t in doc} for doc in terms])
            if name in existing and self._client.count(name, exact=True).count == expected:
                self._collection = name
                self._runbooks = {rb.id: rb for rb in runbooks}
                self._drop_others(existing, keep=name)
                return IndexReport(name, False, len(runbooks), expected)

            texts = [t for rb in runbooks for t in chunks[rb.id]]
            if not texts:
                raise RunbookError("no runbooks to index", where=self.location)
            for other in existing:
                self._harvest_vectors(other)
            vectors = self._embed_documents(texts)
            dim = int(vectors.shape[1])
            sparse = bm25_document_vectors(terms)
            if name in existing:  # incomplete (a build was interrupted): start it again
                self._client.delete_collection(name)
            self._client.create_collection(
                name,
                vectors_config={DENSE: models.VectorParams(size=dim, distance=models.Distance.COSINE)},
                sparse_vectors_config={SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)},
            )
            if _is_url(self.location):  # local mode filters by scanning; indexes matter on a server
                for field, schema in (
                    ("root_causes", models.PayloadSchemaType.KEYWORD),
                    ("resource_kind", models.PayloadSchemaType.KEYWORD),
                    ("primary", models.PayloadSchemaType.BOOL),
                ):
                    self._client.create_payload_index(name, field, field_schema=schema)
            points: list[models.PointStruct] = []
            row = 0
            for rb, sv in zip(runbooks, sparse, strict=True):
                meta: dict[str, Any] = {
                    "runbook_id": rb.id,
                    "root_causes": list(rb.root_causes),
                    "resource_kind": str(rb.resource_kind),
                    "primary": rb.primary,
                }
                for j, text in enumerate(chunks[rb.id]):
                    vec: dict[str, Any] = {DENSE: vectors[row].tolist()}
                    payload = dict(meta, chunk=j, text_sha=_sha(text), embedder=self._embedder.name)
                    if j == 0:
                        vec[SPARSE] = models.SparseVector(indices=sv.indices, values=sv.values)
                        payload["runbook"] = rb.model_dump(mode="json")
                    points.append(models.PointStruct(id=row, vector=vec, payload=payload))
                    row += 1
            for start in range(0, len(points), 256):
                self._client.upsert(name, points=points[start : start + 256], wait=True)
            self._collection = name
            self._runbooks = {rb.id: rb for rb in runbooks}
            self._drop_others(self._collections(), keep=name)
            log.info("runbook index %s built: %d runbooks, %d points", name, len(runbooks), len(points))
            return IndexReport(name, True, len(runbooks), len(points))

    def _set_stats(self, docs: Sequence[set[int]]) -> None:
        df: dict[int, int] = {}
        for doc in docs:
            for t in doc:
                df[t] = df.get(t, 0) + 1
        self._df, self._n_docs = df, len(docs)

    def _load_stats(self) -> None:
        """Document frequencies from the stored sparse vectors (an index opened without ensure_indexed)."""
        from qdrant_client import models

        flt = models.Filter(must=[models.FieldCondition(key="chunk", match=models.MatchValue(value=0))])
        docs: list[set[int]] = []
        offset: Any = None
        while True:
            points, offset = self._client.scroll(
                self._current(), scroll_filter=flt, limit=256, offset=offset, with_vectors=[SPARSE]
            )
            for p in points:
                vec = (p.vector or {}) if isinstance(p.vector, dict) else {}
                sv = vec.get(SPARSE)
                docs.append(set(getattr(sv, "indices", []) or []))
            if offset is None:
                break
        self._set_stats(docs)

    def _sparse_norm(self, indices: Sequence[int]) -> float:
        """The BM25 score a runbook would get by matching every known query term once: the sum of their
        IDFs (Qdrant's formula). Dividing by it puts sparse scores on an absolute 0..1 scale — how much of
        the query's informative vocabulary a runbook matches — instead of relative to the best hit, which
        would give a weak keyword match full weight whenever nothing matches well."""
        if self._df is None:
            self._load_stats()
        df, n = self._df or {}, max(self._n_docs, 1)
        idf = sum(math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) for t in indices if df.get(t))
        return idf * (BM25_K1 + 1)  # a term's BM25 weight saturates at k1 + 1

    def _harvest_vectors(self, collection: str) -> None:
        """Keep the vectors of a stale collection built by the same embedder, keyed by chunk text hash, so
        that a one-runbook edit re-embeds a handful of chunks instead of the whole library."""
        import numpy as np

        name = self._embedder.name
        offset: Any = None
        while True:
            points, offset = self._client.scroll(
                collection,
                limit=256,
                offset=offset,
                with_payload=["text_sha", "embedder"],
                with_vectors=[DENSE],
            )
            for p in points:
                payload, vec = p.payload or {}, p.vector
                if payload.get("embedder") == name and isinstance(vec, dict) and DENSE in vec:
                    _remember(name, str(payload.get("text_sha")), np.asarray(vec[DENSE], dtype=np.float32))
            if offset is None:
                return

    def _embed_documents(self, texts: list[str]) -> Any:
        """Embed chunk texts, reusing vectors already computed for the same text by the same embedder."""
        import numpy as np

        name = self._embedder.name
        todo = [t for t in dict.fromkeys(texts) if (name, _sha(t)) not in _VECTOR_CACHE]
        if todo:
            for text, vec in zip(todo, self._embedder.embed(todo), strict=True):
                _remember(name, _sha(text), vec)
        return np.vstack([_VECTOR_CACHE[(name, _sha(t))] for t in texts])

    def _drop_others(self, names: list[str], keep: str) -> None:
        for other in names:
            if other != keep:
                self._client.delete_collection(other)

    def _current(self) -> str:
        if self._collection is not None:
            return self._collection
        names = self._collections()
        if len(names) != 1:
            raise RunbookError(
                "the runbook index is not built; run `opsmedic runbooks index` (or call ensure_indexed)",
                where=self.location,
            )
        self._collection = names[0]
        return names[0]

    def _runbook(self, payload: dict[str, Any]) -> Runbook | None:
        rid = str(payload.get("runbook_id"))
        rb = self._runbooks.get(rid)
        if rb is None and "runbook" in payload:
            rb = Runbook.model_validate(payload["runbook"])
            self._runbooks[rid] = rb
        return rb

    # ---------------------------------------------------------------------------------------- search
    def search(
        self,
        query: str,
        *,
        top_k: int = 3,
        root_cause: str | None = None,
        resource_kind: str | None = None,
        primary_only: bool = False,
        mode: str = "hybrid",
    ) -> list[RunbookHit]:
        """The ``top_k`` runbooks for ``query``, best first.

        ``root_cause`` / ``resource_kind`` keep only runbooks that list that label / have that kind; with a
        ``root_cause``, the primary runbooks of that cause rank first. ``mode`` is ``hybrid`` (default),
        ``dense`` or ``sparse`` (the last two for evaluation). A repeated search of the same collection
        is answered from memory (see ``_hits``).
        """
        args = (query, top_k, root_cause, resource_kind, primary_only, mode)
        with self._lock:
            # no collection yet (opened, neither built nor searched): the search below finds it
            cached = self._hits.get((self._collection, *args)) if self._collection is not None else None
            if cached is not None:
                self._hits.move_to_end((self._collection, *args))
                return list(cached)
        hits = self._search(query, top_k=top_k, root_cause=root_cause, resource_kind=resource_kind,
                            primary_only=primary_only, mode=mode)
        with self._lock:
            if self._collection is not None:
                self._hits[(self._collection, *args)] = tuple(hits)
                while len(self._hits) > _CACHED_SEARCHES:
                    self._hits.popitem(last=False)
        return hits

    def _search(self, query: str, *, top_k: int, root_cause: str | None, resource_kind: str | None,
                primary_only: bool, mode: str) -> list[RunbookHit]:
        from qdrant_client import models

        if mode not in ("hybrid", "dense", "sparse"):
            raise ValueError(f"unknown search mode {mode!r}")
        if top_k <= 0 or not query.strip():
            return []
        must: list[models.Condition] = []
        if root_cause is not None:
            must.append(models.FieldCondition(key="root_causes", match=models.MatchValue(value=root_cause)))
        if resource_kind is not None:
            must.append(
                models.FieldCondition(key="resource_kind", match=models.MatchValue(value=str(resource_kind)))
            )
        if primary_only:
            must.append(models.FieldCondition(key="primary", match=models.MatchValue(value=True)))
        flt = models.Filter(must=must) if must else None
        if flt is not None and not _is_url(self.location):
            # Qdrant's local mode evaluates a payload filter point by point in Python (JSON paths and all),
            # which was half of a filtered search; the same points named by id cost a set look-up each. A
            # server keeps its payload indexes and is given the filter itself.
            flt = models.Filter(must=[models.HasIdCondition(
                has_id=self._matching_ids(root_cause, resource_kind, primary_only))])

        requests: list[models.QueryRequest] = []
        if mode in ("hybrid", "dense"):
            qv = self._embedder.embed([query])[0].tolist()
            requests.append(
                models.QueryRequest(
                    query=qv, using=DENSE, filter=flt, limit=DENSE_CANDIDATES, with_payload=["runbook_id"]
                )
            )
        sv = bm25_query_vector(tokenize(query)) if mode in ("hybrid", "sparse") else None
        if sv is not None and sv.indices:
            requests.append(
                models.QueryRequest(
                    query=models.SparseVector(indices=sv.indices, values=sv.values),
                    using=SPARSE,
                    filter=flt,
                    limit=SPARSE_CANDIDATES,
                    with_payload=["runbook_id"],
                )
            )
        if not requests:
            return []
        with self._lock:
            responses = self._client.query_batch_points(self._current(), requests=requests)

        dense: dict[str, float] = {}
        sparse: dict[str, float] = {}
        for req, resp in zip(requests, responses, strict=True):
            target = dense if req.using == DENSE else sparse
            for point in resp.points:
                rid = str((point.payload or {}).get("runbook_id"))
                target[rid] = max(target.get(rid, float("-inf")), float(point.score))
        found = {rid: self._runbooks[rid] for rid in {*dense, *sparse} if rid in self._runbooks}
        # An index opened without ensure_indexed (e.g. by another process's build) reads the runbooks
        # from the head points' payload, once.
        missing = [rid for rid in {*dense, *sparse} if rid not in found]
        if missing:
            self._fetch_heads(missing, found)

        norm = self._sparse_norm(sv.indices) if sv is not None and sparse else 0.0
        dense_rank = {rid: i for i, rid in enumerate(sorted(dense, key=lambda r: -dense[r]), start=1)}
        sparse_rank = {rid: i for i, rid in enumerate(sorted(sparse, key=lambda r: -sparse[r]), start=1)}
        hits: list[RunbookHit] = []
        for rid, rb in found.items():
            d = max(dense.get(rid, 0.0), 0.0)
            s = min(1.0, sparse.get(rid, 0.0) / norm) if norm > 0 else 0.0
            if mode == "dense":
                score = d
            elif mode == "sparse":
                score = s
            elif FUSION == "rrf":
                # RRF scaled so that first place in both lists scores 1.0 and first in one list 0.5.
                ranks = [r[rid] for r in (dense_rank, sparse_rank) if rid in r]
                score = sum((RRF_K + 1) / (RRF_K + k) for k in ranks) / 2
            else:
                score = DENSE_WEIGHT * d + SPARSE_WEIGHT * s
            if rb.primary:
                score += PRIMARY_BONUS
            hits.append(RunbookHit(runbook=rb, score=round(score, 6), dense=round(d, 6), sparse=round(s, 6)))
        if root_cause is not None:
            hits.sort(key=lambda h: (not h.runbook.primary, -h.score, h.runbook.id))
        else:
            hits.sort(key=lambda h: (-h.score, h.runbook.id))
        return hits[:top_k]

    def _matching_ids(self, root_cause: str | None, resource_kind: str | None,
                      primary_only: bool) -> list[ExtendedPointId]:
        """The ids of the points whose payload the search's filter would keep (see `_search`), read once per
        collection: a collection's name fingerprints its content, so its points never change."""
        with self._lock:
            collection = self._current()
            labels = self._labels.get(collection)
            if labels is None:
                labels, offset = [], None
                while True:
                    points, offset = self._client.scroll(
                        collection, limit=256, offset=offset,
                        with_payload=["root_causes", "resource_kind", "primary"])
                    labels += [(p.id, p.payload or {}) for p in points]
                    if offset is None:
                        break
                self._labels = {collection: labels}
        return [pid for pid, payload in labels
                if (root_cause is None or root_cause in (payload.get("root_causes") or []))
                and (resource_kind is None or payload.get("resource_kind") == str(resource_kind))
                and (not primary_only or payload.get("primary") is True)]

    def _fetch_heads(self, rids: list[str], found: dict[str, Runbook]) -> None:
        from qdrant_client import models

        flt = models.Filter(
            must=[
                models.FieldCondition(key="runbook_id", match=models.MatchAny(any=rids)),
                models.FieldCondition(key="chunk", match=models.MatchValue(value=0)),
            ]
        )
        with self._lock:
            points, _ = self._client.scroll(
                self._current(), scroll_filter=flt, limit=len(rids), with_payload=True
            )
        for p in points:
            rb = self._runbook(p.payload or {})
            if rb is not None:
                found[rb.id] = rb

    @property
    def runbooks(self) -> list[Runbook]:
        """The runbooks indexed by the last ``ensure_indexed`` in this process."""
        return list(self._runbooks.values())

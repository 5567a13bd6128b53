"""Text processing for retrieval: runbook chunking and the BM25 sparse encoder.

Layer: engines (``knowledge``). Pure Python, no third-party imports: it runs in the query path, where every
millisecond counts, and must give the same token ids in every process (hence crc32, not ``hash()``).

The keyword side matters in this domain because alerts are full of exact identifiers that a small
sentence-embedding model blurs: ``Xid 79`` vs ``Xid 74``, ``DCGM_FI_DEV_ROW_REMAP_FAILURE``,
``CrashLoopBackOff``. The tokenizer keeps such identifiers whole *and* splits them into their parts.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# BM25 parameters (Robertson/Sparck Jones defaults). b is lower than the usual 0.75 because runbook length
# mostly reflects thoroughness, not topic dilution.
BM25_K1 = 1.2
BM25_B = 0.5

_TOKEN_RE = re.compile(r"[a-z0-9]+(?:[._/][a-z0-9]+)*")
# "Xid 79", "XID-79", "xid:79", "xid79", "gpu_xid 79" all mean one event code; fold them into `xid79`.
_XID_RE = re.compile(r"(?<![a-z0-9])xids?\s*[:#=-]?\s*(\d{1,3})\b")
# The kernel's own spelling: "NVRM: Xid (PCI:0000:3b:00): 79, pid=...".
_XID_KERNEL_RE = re.compile(r"(?<![a-z0-9])xid\s*\(pci:[0-9a-f:.]+\)\s*:?\s*(\d{1,3})\b")
_XID_LIST_RE = re.compile(r"(?<![a-z0-9])xids?\s*[:#=-]?\s*((?:\d{1,3}\s*(?:/|,|and|or)\s*)+\d{1,3})\b")

_STOPWORDS = frozenset(
    """a an and are as at be been but by can do does for from had has have if in into is it its no not of on
    or our so such than that the their then there these this to too was we were what when where which while
    who why will with you your after before over under up down out off all any each every more most other
    some same only own very just also again once here""".split()
)
# "off" and "out" are stop words in prose but not in "fell off the bus" / "out of memory": keep them.
_STOPWORDS = _STOPWORDS - {"off", "out", "down", "up"}

# A few domain equivalences that an operator uses interchangeably. Both sides are emitted, so a query with
# either spelling matches a runbook with the other.
_ALIASES: dict[str, tuple[str, ...]] = {
    "dbe": ("double", "bit"),
    "sbe": ("single", "bit"),
    "oom": ("out", "memory"),
    "oomkilled": ("oom", "killed"),
    "temp": ("temperature",),
    "temperature": ("temp",),
    "notready": ("not", "ready"),
    "crashloopbackoff": ("crashloop", "crash", "loop"),
    "crashloop": ("crash", "loop"),
    "imagepullbackoff": ("image", "pull"),
    "errimagepull": ("image", "pull"),
    "p95": ("latency",),
    "p99": ("latency",),
    "psi": ("drift",),
    "nan": ("nan",),
    "fb": ("framebuffer",),
}


def _stem(token: str) -> str:
    """A deliberately small suffix stripper: plural, -ing, -ed, trailing e.

    Enough to match throttle / throttled / throttling and leak / leaking / leaks, without the surprises
    of a full Porter stemmer on identifiers. Tokens with digits are left alone.
    """
    if len(token) <= 3 or not token.isalpha():
        return token
    if token.endswith("ies") and len(token) > 4:
        token = token[:-3] + "y"
    elif token.endswith("sses"):
        token = token[:-2]
    elif token.endswith("s") and not token.endswith(("ss", "us", "is")):
        token = token[:-1]
    for suffix in ("ing", "ed"):
        if token.endswith(suffix) and len(token) - len(suffix) >= 3:
            token = token[: -len(suffix)]
            break
    if token.endswith("e") and len(token) > 3:
        token = token[:-1]
    return token


def tokenize(text: str) -> list[str]:
    """Lower-case terms for BM25: identifiers whole and split, XID codes folded, stop words dropped."""
    low = text.lower()
    out: list[str] = []
    for m in _XID_LIST_RE.finditer(low):
        out.extend(f"xid{n}" for n in re.findall(r"\d{1,3}", m.group(1)))
    out.extend(f"xid{m.group(1)}" for m in _XID_RE.finditer(low))
    out.extend(f"xid{m.group(1)}" for m in _XID_KERNEL_RE.finditer(low))
    for raw in _TOKEN_RE.findall(low):
        parts = re.split(r"[._/]", raw)
        if len(parts) > 1:
            out.append(raw)  # the identifier as a whole (dcgm_fi_dev_gpu_temp, node.kubernetes.io/...)
        for part in parts:
            if not part or part in _STOPWORDS:
                continue
            out.append(_stem(part))
            out.extend(_stem(a) for a in _ALIASES.get(part, ()))
    return out


def term_id(term: str) -> int:
    """Stable 31-bit id of a term (Qdrant sparse indices are u32; crc32 is the same in every process)."""
    return zlib.crc32(term.encode("utf-8")) & 0x7FFFFFFF


@dataclass(frozen=True)
class SparseVector:
    indices: list[int]
    values: list[float]


def _merge(counts: Counter[int]) -> SparseVector:
    items = sorted(counts.items())
    return SparseVector([i for i, _ in items], [float(v) for _, v in items])


def bm25_document_vectors(docs: Sequence[Sequence[str]]) -> list[SparseVector]:
    """BM25 term weights of each document, *without* IDF: Qdrant applies IDF at query time
    (``Modifier.IDF``), from the statistics of the points that pass the filter."""
    lengths = [len(d) for d in docs]
    avg = (sum(lengths) / len(lengths)) if lengths else 1.0
    out: list[SparseVector] = []
    for doc, dl in zip(docs, lengths, strict=True):
        tf = Counter(term_id(t) for t in doc)
        norm = BM25_K1 * (1 - BM25_B + BM25_B * dl / max(avg, 1e-9))
        weights = {i: c * (BM25_K1 + 1) / (c + norm) for i, c in tf.items()}
        items = sorted(weights.items())
        out.append(SparseVector([i for i, _ in items], [w for _, w in items]))
    return out


def bm25_query_vector(terms: Iterable[str]) -> SparseVector:
    """A query's sparse vector: each distinct term once (a word repeated in a query does not count twice)."""
    return _merge(Counter({term_id(t): 1 for t in set(terms)}))


def root_cause_words(label: str) -> str:
    return label.replace("_", " ")

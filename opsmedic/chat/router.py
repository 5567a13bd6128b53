"""The chat's router: what a question means, by meaning rather than by exact phrasing, without an LLM.

Layer: interfaces. `understand(text, known, previous)` returns an `Intent`:

1. exact requests first, by the deterministic parser (`opsmedic.chat.intents.parse`): "drain node-3",
   "approve apr-..." and "help" — a request to act is never *guessed*, it must be said;
2. entities, by `opsmedic.chat.entities` (nodes, GPUs, pods, models, incidents, approvals, XIDs, actions,
   time windows);
3. the intent, by k-nearest labelled examples (`opsmedic/chat/data/intents.yaml`): the question, with its
   entities masked to their kind and obvious typos corrected against the examples' vocabulary, is embedded
   with the local MiniLM model opsmedic ships (`knowledge.embeddings`, int8 ONNX, no download) and
   compared with every example's embedding (computed once per process, and cached on disk by the examples'
   hash). Each intent scores a weighted mean of its three nearest examples (0.6, 0.25, 0.15), plus a small
   bonus for the exact words that name it ("runbook", "paged", "approved"...);
4. follow-ups in one conversation ("and node-2?", "why?", "who approved it?") reuse the previous turn's
   intent or subject;
5. below a confidence threshold the intent is `clarify`, with the best guesses, so that the chat asks
   "did you mean ... or ...?" instead of answering something else or printing its help.

Without the embedding model installed, step 3 falls back to word overlap with the same examples.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsmedic.chat.entities import Entities, extract, mask, normalise
from opsmedic.chat.intents import Intent, IntentKind, parse

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

# Read intents the router chooses between ("act" is listed so that "I need node-2 drained" is recognised as
# a request, which the chat then asks to be said plainly; it is never executed from a guess).
ROUTED = ("help", "health", "incidents", "incident", "why", "status", "approvals", "who", "refusals", "evidence",
          "paged", "activity", "explain", "runbook", "act")
K = 3
_WEIGHTS = (0.6, 0.25, 0.15)  # the nearest example counts most; the next two keep one stray example from winning
THRESHOLD = 0.42  # below this top score the chat asks a clarifying question
SURE = 0.55  # above this, a lead of MARGIN is enough; between THRESHOLD and SURE it takes WIDE_MARGIN
MARGIN = 0.015  # (unless the two best are merely two readings of one answer, see _SAME_ANSWER)
WIDE_MARGIN = 0.05

# Exact words that name an intent; each adds a small bonus to the embedding score (meaning decides, these
# break near-ties the embedding alone gets wrong on short questions).
_CUES: list[tuple[str, str, float]] = [
    (r"\b(run ?books?|play ?books?|procedures?|sop)\b", "runbook", 0.06),
    (r"\b(which|what) (run ?book|play ?book|evidence|signals?)\b|\bevidence\b|\bbased on\b|\bon what basis\b|"
     r"\bhow do you know\b|\bconfiden", "evidence", 0.12),
    (r"\b(pag(e|ed|ing)|paging|escalat\w*|notif\w*|wake|woke|alerted|on-?call)\b", "paged", 0.08),
    (r"^who\b|\bwho\b.*\b(approv|reject|ask|request|sign|ok|decid|den)", "who", 0.10),
    (r"\b(refus\w*|den(y|ied|ies)|block(ed)?|veto\w*|forbid\w*|cooldown|circuit breaker|not allowed)\b",
     "refusals", 0.07),
    (r"\b(would|what if|if i|if we|if you|allowed|permitted|could i|can i|dry[- ]?run|simulate|policy explain)\b",
     "explain", 0.12),
    (r"\b(health\w*|broken|down|sick|on fire|capacity)\b", "health", 0.05),
    (r"\b(pending|awaiting|waiting|queue|sign-?off)\b.*\bapprov|\bapprov\w* (queue|requests?)\b|"
     r"\bneeds? (my )?approv", "approvals", 0.08),
    (r"\b(today|last|past|recent(ly)?|since|changed?|changes|executed|did (you|opsmedic|it) do|activity)\b",
     "activity", 0.05),
    (r"^(why|how come)\b|\breason\b", "why", 0.10),
    (r"\bincidents\b", "incidents", 0.05),
]
_CUES_RE = [(re.compile(rx), intent, bonus) for rx, intent, bonus in _CUES]

_FOLLOW_UP = re.compile(r"^(and|what about|how about|same for|same with|ok and|also|then|now)\b")
_WHY_ALONE = re.compile(r"^(why|how come|why so|why that|why is that|why was that|why\??|reason|how so|"
                        r"and why|but why|why not)$")
_HYPOTHETICAL = re.compile(r"\b(allowed|permitted|possible|ok to|okay to|safe to|would|legal)\b")
_POLITE_ASK = re.compile(r"^(please|pls|can you|could you|would you|will you|kindly|go ahead)\b")
_REFUSED = re.compile(r"\b(refus\w*|den(y|ied|ies)|block(ed)?|veto\w*|forbidden|not allowed|not permitted)\b")
_QUESTION_WORD = re.compile(r"^(which|what|when|who|whom|whose|why|how|was|were|did|does|do|is|are|has|have|had)\b")
_PRONOUN = re.compile(r"\b(it|that|this|them|those|the same)\b")


@dataclass(frozen=True)
class Previous:
    """What the last turn of the conversation was about (from the conversation store's meta)."""

    kind: str | None = None
    subject: str | None = None
    action: str | None = None

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None) -> Previous:
        m = dict(meta or {})
        return cls(m.get("kind"), m.get("subject"), m.get("action"))


# ------------------------------------------------------------------------------------------ examples


@functools.lru_cache(maxsize=1)
def examples() -> tuple[tuple[str, str], ...]:
    """(intent, masked example) pairs from the package's data file."""
    import yaml

    raw = resources.files("opsmedic.chat").joinpath("data/intents.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(raw)
    out = []
    for intent, texts in data.items():
        if intent not in ROUTED:
            raise ValueError(f"opsmedic/chat/data/intents.yaml: unknown intent {intent!r}")
        out += [(intent, mask(str(t))) for t in texts]
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _vocabulary() -> frozenset[str]:
    words = {w for _, t in examples() for w in re.findall(r"[a-z']+", t)}
    words |= {"opsmedic", "gpu", "gpus", "node", "nodes", "pod", "pods", "model", "models", "cluster", "fleet",
              "xid", "approval", "approvals", "approved", "rejected", "refused", "denied", "escalated", "paged",
              "runbook", "runbooks", "incident", "incidents", "healthy", "unhealthy", "broken", "cordoned",
              "drained", "drain", "cordon", "rollback", "rolled", "restarted", "evidence", "diagnosis", "policy",
              "governor", "yesterday", "today", "hour", "minutes", "changed", "happened", "executed", "status"}
    return frozenset(words)


def fix_typos(text: str) -> str:
    """Words of four letters or more that no example uses, replaced by the closest word that one does
    ("helthy" -> "healthy", "runbok" -> "runbook"); ids and names were masked before this runs."""
    vocab = _vocabulary()
    out = []
    for w in text.split():
        core = w.strip("?!.,;:")
        if len(core) >= 4 and core.isalpha() and core not in vocab:
            hit = difflib.get_close_matches(core, vocab, n=1, cutoff=0.8)
            if hit:
                w = w.replace(core, hit[0])
        out.append(w)
    return " ".join(out)


class _Index:
    """The examples' embeddings, computed once (or read from the on-disk cache) and searched by dot product."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._matrix: Any = None
        self._labels: list[str] = []
        self._embedder: Any = None
        self.backend = "minilm"

    def _load(self) -> None:
        import numpy as np

        pairs = examples()
        self._labels = [i for i, _ in pairs]
        texts = [t for _, t in pairs]
        try:
            from knowledge.embeddings import default_embedder

            emb = default_embedder()
            digest = hashlib.sha256(("\n".join(f"{i}\t{t}" for i, t in pairs) + emb.name).encode()).hexdigest()[:16]
            cache = _cache_dir() / f"chat-examples-{digest}.npy"
            matrix = None
            if cache.is_file():
                try:
                    matrix = np.load(cache)
                    if matrix.shape != (len(texts), emb.dim):
                        matrix = None
                except (OSError, ValueError):
                    matrix = None
            if matrix is None:
                matrix = emb.embed(texts)
                _save(cache, matrix)
            self._embedder = emb
            self._matrix = matrix
        except Exception:  # no embedding model installed (or unusable): word overlap with the same examples
            self.backend = "words"
            self._embedder = None
            self._matrix = _bow([*texts])

    def scores(self, text: str) -> dict[str, float]:
        """Each intent's score for a masked question: the mean cosine of its K nearest examples."""
        import numpy as np

        with self._lock:
            if self._matrix is None:
                self._load()
        if self._embedder is not None:
            q = self._embedder.embed([text])[0]
            sims: NDArray[np.float32] = self._matrix @ q
        else:
            sims = _bow_sims(self._matrix, text)
        by: dict[str, list[float]] = {}
        for label, s in zip(self._labels, sims.tolist(), strict=True):
            by.setdefault(label, []).append(float(s))
        return {label: float(np.dot(_WEIGHTS[:min(K, len(v))], sorted(v, reverse=True)[:K]))
                for label, v in by.items()}


def _cache_dir() -> Path:
    from core.settings import load_settings

    chosen = load_settings().cache_dir
    if chosen is not None:
        return chosen
    return Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "opsmedic"


def _save(path: Path, matrix: Any) -> None:
    """Best effort, atomically: a cache that cannot be written only costs the next start its 1-2 s."""
    import numpy as np

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, matrix)
        os.replace(tmp, path)
    except OSError:
        pass


def _bow(texts: list[str]) -> Any:
    return [set(re.findall(r"[a-z']+", t)) for t in texts]


def _bow_sims(bags: Any, text: str) -> Any:
    import numpy as np

    q = set(re.findall(r"[a-z']+", text))
    return np.array([len(q & b) / (len(q | b) or 1) for b in bags], dtype=np.float32)


_INDEX = _Index()


def warm() -> None:
    """Load the model and the examples' embeddings now (the daemon and the bench call this at start)."""
    _INDEX.scores("warm up")


def backend() -> str:
    return _INDEX.backend


# ------------------------------------------------------------------------------------------- routing


def rank(text: str, known: Iterable[str] = ()) -> list[tuple[str, float]]:
    """Intents by score for a raw question, best first."""
    masked = fix_typos(mask(text, known))
    scores = _INDEX.scores(masked)
    t = normalise(masked)
    for rx, intent, bonus in _CUES_RE:
        if rx.search(t):
            scores[intent] = scores.get(intent, 0.0) + bonus
    return sorted(scores.items(), key=lambda kv: -kv[1])


def _with(intent: Intent, ents: Entities) -> Intent:
    """The subject and action an answer needs, from the entities."""
    subject = intent.subject
    if subject is None:
        if intent.kind in ("incident", "evidence", "who", "paged", "refusals", "activity") and ents.incidents:
            subject = ents.incidents[0]
        else:
            subject = ents.resource or (ents.incidents[0] if ents.incidents else None)
    action = intent.action or (ents.actions[0] if ents.actions else None)
    return replace(intent, subject=subject, action=action, entities=ents, window=ents.window)


def understand(text: str, known: Iterable[str] = (), previous: Previous | None = None) -> Intent:
    """The intent of one message, with its entities, from its meaning (see the module docstring)."""
    known = list(known)
    exact = parse(text, known)
    ents = extract(text, known)
    low = normalise(text)
    polite = _POLITE_ASK.match(low)
    if exact.kind == "act" and (_HYPOTHETICAL.search(low[polite.end():] if polite else low)
                                or (low.endswith("?") and not polite)):
        # "reset gpu 1 on node 2 allowed?": a question about a request, answered by the governor's
        # explanation; asking never requests anything
        return _with(Intent("explain", text, action=exact.action, subject=exact.subject, confidence=1.0), ents)
    if exact.kind in ("act", "approve", "help"):
        return replace(exact, entities=ents, confidence=1.0)
    t = normalise(text).rstrip("?!. ")
    prev = previous or Previous()
    # follow-ups: "why?" after an answer about node-1; "and node-2?" after "status of node-1"
    if _WHY_ALONE.match(t) and prev.kind is not None:
        again: IntentKind = "refusals" if prev.kind == "refusals" else "explain" if prev.kind == "explain" else "why"
        return _with(Intent(again, text, subject=prev.subject, action=prev.action, negated="not" in t,
                            confidence=1.0, follow_up=True), ents)
    if prev.kind is not None and _FOLLOW_UP.match(t) and not ents.empty and len(t.split()) <= 6:
        kind = prev.kind if prev.kind in ROUTED and prev.kind not in ("act", "help") else "status"
        return _with(Intent(kind, text, action=prev.action if kind in ("why", "who", "explain") else None,  # type: ignore[arg-type]
                            confidence=1.0, follow_up=True, open_only=exact.open_only), ents)
    if not t:
        return Intent("help", text)
    # a bare id or name is a question about that thing
    if re.fullmatch(r"(?:what about |and |status |how about )?[\w/-]+(?: status)?", t) and not ents.empty:
        if ents.incidents:
            return _with(Intent("incident", text, confidence=1.0), ents)
        if ents.approvals:
            return _with(Intent("approvals", text, confidence=1.0), ents)
        return _with(Intent("status", text, confidence=1.0), ents)
    ranked = rank(text, known)
    (best, top), (second, s2) = ranked[0], ranked[1]
    guesses = tuple(i for i, _ in ranked[:3])
    kind = best
    # exact ids and entities settle what the embedding leaves open
    if kind in ("incidents", "status") and ents.incidents and not ents.resource:
        kind = "incident"
    if kind == "status" and ents.empty:
        kind = "health"  # "how are things?" asks about everything
    if exact.kind == "runbook" and kind not in ("evidence", "why"):
        # "runbook", "playbook", "how do I fix", "what should we do about": the parser's exact words
        return replace(exact, entities=ents, confidence=top, guesses=guesses)
    if kind == "why" and _REFUSED.search(t):
        kind = "refusals"  # "why was the drain denied?" asks what the policy refused, and why
    if kind == "act" and _QUESTION_WORD.match(t):
        kind, top = second, s2  # "which pods were evicted?" is a question about the past, not a wish
        best, (second, s2) = kind, ranked[2]
    if kind == "act":
        # a request that does not start with its verb ("I need node-2 drained"): ask for it plainly
        return _with(Intent("clarify", text, confidence=top, guesses=("act", *guesses[1:3])), ents)
    ambiguous = top - s2 < (MARGIN if top >= SURE else WIDE_MARGIN) and {best, second} not in _SAME_ANSWER
    if top < THRESHOLD or ambiguous:
        if not (exact.kind != "unknown" and exact.kind == best):
            return _with(Intent("clarify", text, confidence=top, guesses=guesses), ents)
    intent = Intent(kind, text, confidence=top, guesses=guesses,  # type: ignore[arg-type]
                    negated=exact.negated, open_only=exact.open_only or bool(
                        re.search(r"\b(open|active|current|ongoing|unresolved|still)\b", t)))
    if kind == "why" and exact.kind == "why":
        intent = replace(intent, action=exact.action)
    out = _with(intent, ents)
    # pronouns ("who approved it?", "which runbook did you use for that?") refer to the last subject
    if out.subject is None and prev.subject is not None and (_PRONOUN.search(t) or kind in ("why", "explain")):
        out = replace(out, subject=prev.subject, action=out.action or prev.action)
    return out


# pairs of intents whose answers overlap so much that a near-tie between them needs no question
_SAME_ANSWER = [{"incidents", "incident"}, {"health", "incidents"}, {"activity", "incident"},
                {"who", "approvals"}, {"refusals", "why"}, {"paged", "activity"}, {"evidence", "why"},
                {"status", "health"}, {"runbook", "evidence"}]

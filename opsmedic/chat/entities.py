"""Entity extraction for chat questions: nodes, GPUs, pods, models, incidents, approvals, XIDs, actions and
time windows, as on-call engineers write them ("gpu 3 on node 1", "node-1/gpu-3", "n1 gpu3", "last hour").

Layer: interfaces; pure (no I/O). These are the exact parts of a question — ids and names — so they are
found with regular expressions; the *meaning* of the question is the router's job (`opsmedic.chat.router`),
which embeds the question with its entities replaced by their kind (`mask`), so that "why is node-7
cordoned", "why is node-1 cordoned" and "why was fraud-model rolled back" are one question.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

# "node-1/gpu-3", "node1/gpu3", "node 1 gpu 3", "gpu 3 on node 1", "gpu3 of node-1", "n1 gpu3"
_GPU_SLASH = re.compile(r"\bnode[- ]?(\d+)\s*[/:]\s*gpu[- ]?(\d+)\b")
_GPU_ON = re.compile(r"\bgpu[- #]?(\d+)\s+(?:on|of|in|at)\s+(?:the\s+)?node[- ]?(\d+)\b")
_NODE_GPU = re.compile(r"\bnode[- ]?(\d+)(?:'s|s)?\s+gpu[- #]?(\d+)\b")
_NODE = re.compile(r"\b(?:node[- ]?(\d+)|n(\d+))\b")
_INCIDENT = re.compile(r"\b(?:inc|chat)-[a-z0-9]+(?:-[a-z0-9]+)*\b")
_APPROVAL = re.compile(r"\bapr-[0-9a-f]{6,}\b")
_XID = re.compile(r"\bxid[\s#-]*(\d{1,3})\b")
_NAME = re.compile(r"\b[a-z][a-z0-9]*(?:-[a-z0-9]+)+\b")

# words that name an action (present, past, noun) -> the action
_ACTION_WORDS: list[tuple[str, str]] = [
    (r"roll(?:ed|ing)?[\s-]*backs?|rollbacks?|revert(?:ed|ing)?", "rollback_model"),
    (r"uncordon(?:ed|ing)?", "uncordon_node"),
    (r"cordon(?:ed|ing)?", "cordon_node"),
    (r"drain(?:ed|ing|s)?", "drain_node"),
    (r"reschedul(?:e|ed|ing)|evict(?:ed|ion|ing)?", "reschedule_pod"),
    (r"restart(?:ed|ing|s)?|bounc(?:e|ed)", "restart_pod"),
    (r"(?:gpu\s+)?reset(?:ting|s)?", "reset_gpu"),
    (r"scal(?:e|ed|ing)", "scale_deployment"),
    (r"paus(?:e|ed|ing)", "pause_job"),
    (r"resum(?:e|ed|ing)", "resume_job"),
    (r"retrain(?:ed|ing)?", "retrain_model"),
    (r"promot(?:e|ed|ion|ing)", "promote_model"),
    (r"escalat(?:e|ed|ion|ing)|pag(?:e|ed|ing)", "escalate"),
    (r"abort(?:ed|ing|s)?", "abort_rollout"),
]
_ACTION_RE = [(re.compile(rf"\b(?:{w})\b"), a) for w, a in _ACTION_WORDS]

_NUM_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "ten": 10, "twelve": 12,
              "fifteen": 15, "twenty": 20, "thirty": 30, "an": 1, "a": 1, "half an": 0.5, "half a": 0.5}
_UNIT_S = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hr": 3600, "hour": 3600,
           "d": 86400, "day": 86400, "week": 7 * 86400}
_WINDOW = re.compile(r"\b(?:in the |over the |during the |for the |within the )?(?:last|past|previous)\s+"
                     r"(\d+(?:\.\d+)?|half an|half a|an|a|one|two|three|four|five|six|ten|twelve|fifteen|twenty|"
                     r"thirty)?\s*(s|sec|second|m|min|minute|h|hr|hour|d|day|week)s?\b")
_TODAY = re.compile(r"\b(today|tonight|this morning|this afternoon|this evening|since midnight|so far today)\b")
_YESTERDAY = re.compile(r"\byesterday\b")
_RECENT = re.compile(r"\b(recently|lately|just now|a moment ago|in a while)\b")


@dataclass(frozen=True)
class Window:
    """A time window a question asks about: `seconds` back from the records' now, or since midnight."""

    label: str
    seconds: float | None = None  # "last hour" -> 3600
    today: bool = False  # since midnight (UTC) on a wall clock; the whole run on a simulated one
    yesterday: bool = False

    def bounds(self, now_s: float, epoch_like: float) -> tuple[float, float]:
        """[start, end) on the records' clock (simulated seconds for a sandbox run, epoch otherwise)."""
        if self.seconds is not None:
            return now_s - self.seconds, now_s + 1
        if now_s < epoch_like:  # a simulated run has no calendar: "today" is the whole run
            return (float("-inf"), float("-inf")) if self.yesterday else (float("-inf"), now_s + 1)
        midnight = now_s - (now_s % 86400)
        if self.yesterday:
            return midnight - 86400, midnight
        return midnight, now_s + 1


@dataclass(frozen=True)
class Entities:
    nodes: tuple[str, ...] = ()
    gpus: tuple[str, ...] = ()
    names: tuple[str, ...] = ()  # pods, models, workloads: names the records know or that look like one
    incidents: tuple[str, ...] = ()
    approvals: tuple[str, ...] = ()
    xids: tuple[int, ...] = ()
    actions: tuple[str, ...] = ()
    window: Window | None = None
    people: tuple[str, ...] = field(default=())

    @property
    def resource(self) -> str | None:
        """The most specific resource named: a GPU, else a name, else a node."""
        for group in (self.gpus, self.names, self.nodes):
            if group:
                return group[0]
        return None

    @property
    def empty(self) -> bool:
        return not (self.nodes or self.gpus or self.names or self.incidents or self.approvals or self.xids)


def normalise(text: str) -> str:
    t = text.lower().replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')
    return " ".join(t.split()).strip()


def _gpus(t: str) -> list[tuple[str, tuple[int, int]]]:
    out: list[tuple[str, tuple[int, int]]] = []
    for rx, node_first in ((_GPU_SLASH, True), (_NODE_GPU, True), (_GPU_ON, False)):
        for m in rx.finditer(t):
            node, gpu = (m.group(1), m.group(2)) if node_first else (m.group(2), m.group(1))
            if not any(s <= m.start() < e for _, (s, e) in out):
                out.append((f"node-{int(node)}/gpu-{int(gpu)}", m.span()))
    return sorted(out, key=lambda x: x[1][0])


def extract(text: str, known: Iterable[str] = ()) -> Entities:
    """Every entity in a question (the text is normalised here, so raw input is fine)."""
    t = normalise(text)
    gpus = _gpus(t)
    taken = [span for _, span in gpus]
    incidents = list(dict.fromkeys(m.group(0) for m in _INCIDENT.finditer(t)))
    approvals = list(dict.fromkeys(m.group(0) for m in _APPROVAL.finditer(t)))
    taken += [m.span() for m in _INCIDENT.finditer(t)] + [m.span() for m in _APPROVAL.finditer(t)]
    nodes: list[str] = []
    for m in _NODE.finditer(t):
        if any(s <= m.start() < e for s, e in taken):
            continue
        nodes.append(f"node-{int(m.group(1) or m.group(2))}")
    names: list[str] = []
    for name in sorted(known, key=len, reverse=True):
        low = name.lower()
        if "/gpu-" in low or (low.startswith("node-") and low[5:].isdigit()):
            continue
        for m in re.finditer(rf"(?<![\w/-]){re.escape(low)}(?![\w/-])", t):
            if not any(s <= m.start() < e for s, e in taken):
                names.append(name)
                taken.append(m.span())
    for m in _NAME.finditer(t):
        w = m.group(0)
        if any(s <= m.start() < e for s, e in taken) or w.startswith(("inc-", "apr-", "chat-", "node-", "gpu-")):
            continue
        if re.fullmatch(r"[a-z]+-(?:[a-z]+)", w) and w not in _NAMEISH and not w.endswith(("-model", "-ft")):
            continue  # "on-call", "follow-up", "right-now": hyphenated words, not resources
        names.append(w)
    xids = list(dict.fromkeys(int(m.group(1)) for m in _XID.finditer(t)))
    actions = list(dict.fromkeys(a for rx, a in _ACTION_RE if rx.search(t)))
    if "rollback_model" in actions and "scale_deployment" in actions:
        actions.remove("scale_deployment")
    return Entities(nodes=tuple(dict.fromkeys(nodes)), gpus=tuple(dict.fromkeys(g for g, _ in gpus)),
                    names=tuple(dict.fromkeys(names)), incidents=tuple(incidents), approvals=tuple(approvals),
                    xids=tuple(xids), actions=tuple(actions), window=window_of(t))


_UNIT_WORD = {"s": "second", "sec": "second", "m": "minute", "min": "minute", "h": "hour", "hr": "hour",
              "d": "day"}
_NAMEISH = frozenset({"fraud-model", "llama-ft", "chat-llm"})


def window_of(t: str) -> Window | None:
    if m := _WINDOW.search(t):
        raw = (m.group(1) or "1").strip()
        n = float(raw) if raw[0].isdigit() else _NUM_WORDS.get(raw, 1)
        unit = m.group(2)
        secs = n * _UNIT_S[unit]
        word = _UNIT_WORD.get(unit, unit)
        label = f"the last {raw} {word}s" if m.group(1) and n != 1 else f"the last {word}"
        return Window(label, seconds=secs)
    if _TODAY.search(t):
        return Window("today", today=True)
    if _YESTERDAY.search(t):
        return Window("yesterday", yesterday=True)
    if _RECENT.search(t):
        return Window("the last hour", seconds=3600)
    return None


def mask(text: str, known: Iterable[str] = ()) -> str:
    """The question with each entity replaced by its kind, for the router: "why is node-7 cordoned" and
    "why is node-1 cordoned" embed the same."""
    t = normalise(text)
    t = _GPU_SLASH.sub(" gpu ", t)
    t = _NODE_GPU.sub(" gpu ", t)
    t = _GPU_ON.sub(" gpu ", t)
    t = _APPROVAL.sub(" approval ", t)
    t = _INCIDENT.sub(" incident ", t)
    t = _XID.sub(" xid ", t)
    for name in sorted(known, key=len, reverse=True):
        low = name.lower()
        if "/" in low or low.startswith("node-"):
            continue
        t = re.sub(rf"(?<![\w/-]){re.escape(low)}(?![\w/-])", _kind_word(low), t)
    t = _NODE.sub(" node ", t)
    t = _mask_actions(t)
    t = _NAME.sub(lambda m: m.group(0) if re.fullmatch(r"[a-z]+-[a-z]+", m.group(0))
                  and m.group(0) not in _NAMEISH else _kind_word(m.group(0)), t)
    return " ".join(t.split())


def _mask_actions(t: str) -> str:
    """Every action word as one verb in its tense ("rolled back" -> "drained", "restarting" -> "draining"):
    which action a question names is an entity, and should not pull it towards examples of one action."""
    def one(m: re.Match[str]) -> str:
        w = re.split(r"[\s-]", m.group(0))[0]  # "rolled back": the tense is in "rolled"
        return "drained" if w.endswith("ed") else "draining" if w.endswith("ing") else "drain"

    for rx, action in _ACTION_RE:
        if action != "escalate":
            t = rx.sub(one, t)
    return t


def _kind_word(name: str) -> str:
    return " model " if "model" in name else " pod "


def clock_label(s: float, epoch_like: float) -> str:
    if s >= epoch_like:
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(s))
    n = int(s)
    return f"{n // 3600:d}:{n % 3600 // 60:02d}:{n % 60:02d}"

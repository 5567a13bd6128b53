"""Runbook schema, loader and linter.

Layer: engines (``knowledge``). Imports only ``core.domain``, ``core.errors`` and ``core.xids``.

A runbook is a Markdown file whose YAML front-matter (between two ``---`` lines at the top) carries the
machine-readable part — above all the ordered ``actions`` from which the remediator builds its plan — and
whose body is the procedure a human reads. Targets in ``actions`` are placeholders that the remediator
expands against the incident: ``node``, ``gpu``, ``pod``, ``pods_on_gpu``, ``pods_on_node``, ``model``,
``workload``.

Loading is all-or-nothing per file: a file with any problem is reported (file, line, message) and skipped,
so the index never holds half a runbook. ``load_runbooks`` collects the problems of every file instead of
stopping at the first one, which is what ``opsmedic runbooks lint`` prints.

An optional ``signature`` says when a runbook applies — signal kinds, XID codes or catalog buckets, and
metric conditions over the GPU's latest sample — so that a failure mode can be added with a runbook file
alone: the diagnostician matches the library's signatures where its own rules find nothing known (see
``agents.diagnostician.match_signatures``). Signal kinds, buckets and metric fields are validated at load.

Root causes are the runbooks' own labels: the contract's (``core.domain.RootCause``, each needing a
primary runbook) and any the library adds, validated at load (spelled like the contract's, not a near-miss of
one) and registered so that a diagnosis may carry them. ``lint`` reports signatures that tie (identical, or
one implying the other at equal specificity), own labels that no signature diagnoses, and runbooks that can
drive no plan.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Iterable
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from core.actions import ACTION_TOOLS
from core.domain import (
    ROOT_CAUSE_LABEL_RE,
    ROOT_CAUSES,
    ActionName,
    GpuSample,
    ResourceKind,
    Risk,
    register_root_causes,
)
from core.errors import RunbookError
from core.safe_yaml import compose_and_load
from core.xids import Bucket

Target = Literal["node", "gpu", "pod", "pods_on_gpu", "pods_on_node", "model", "workload"]
Severity = Literal["info", "warning", "critical"]

# Which placeholder targets make sense for which action: the catalogue's (`ActionSpec.runbook_targets`).
_ALLOWED_TARGETS: dict[str, frozenset[str]] = {n: s.runbook_targets for n, s in ACTION_TOOLS.items()}

_ID_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_FRONT = "---"


def _root_cause_label(label: str) -> str:
    """A runbook's root-cause label: one of the contract's (SCENARIOS.md) or the library's own. An own label
    must be spelled like the contract's and must not be a near-miss of one: `gpu_uncorectable_ecc` would
    silently start a new cause that no rule and no scenario uses."""
    if label in ROOT_CAUSES:
        return label
    if not ROOT_CAUSE_LABEL_RE.match(label):
        raise ValueError(f"root cause {label!r} must be lower-case words joined by '_' ([a-z0-9_]+)")
    near = difflib.get_close_matches(label, ROOT_CAUSES, n=1, cutoff=0.9)
    if near:
        raise ValueError(f"root cause {label!r} is not a contract label; did you mean {near[0]!r}?")
    return label


RootCauseName = Annotated[str, AfterValidator(_root_cause_label)]


class RunbookStep(BaseModel):
    """One ordered step of a runbook: a whitelisted action on a placeholder target."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    action: ActionName
    target: Target
    risk: Risk
    why: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _target_fits_action(self) -> RunbookStep:
        allowed = _ALLOWED_TARGETS[self.action]
        if self.target not in allowed:
            raise ValueError(
                f"target {self.target!r} does not fit action {self.action!r}; expected one of "
                + ", ".join(sorted(allowed))
            )
        return self


# The signal kinds the monitors emit (agents.monitor, tools' sources): a signature that
# names another kind could never match, which the loader reports as an unknown signal.
SIGNAL_KINDS: frozenset[str] = frozenset({
    "gpu_xid", "gpu_lost", "ecc_dbe", "remap_failure", "gpu_temp_high", "nvlink_errors", "fb_memory_growth",
    "training_stalled", "pod_not_ready", "pod_oom_killed", "pod_unreachable", "node_not_ready", "slo_accuracy",
    "slo_latency", "drift_psi", "drift_kl", "node_disk_pressure",
})
# numeric fields of a GPU sample a metric condition may test
METRIC_FIELDS: frozenset[str] = frozenset(
    name for name, f in GpuSample.model_fields.items()
    if any(t in str(f.annotation) for t in ("float", "int")) and name not in ("index", "xids")
)


class MetricCondition(BaseModel):
    """``{metric: pcie_replay_counter, op: ">", value: 100}``: a test on the GPU's latest sample."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: str
    op: Literal[">", ">=", "<", "<="]
    value: float

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        if v not in METRIC_FIELDS:
            raise ValueError(f"unknown metric {v!r}; one of: {', '.join(sorted(METRIC_FIELDS))}")
        return v

    def holds(self, value: float | None) -> bool:
        if value is None:
            return False
        return {">": value > self.value, ">=": value >= self.value, "<": value < self.value,
                "<=": value <= self.value}[self.op]

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"

    def implies(self, other: MetricCondition) -> bool:
        """Whenever this condition holds, ``other`` holds too (same metric, same direction, at least as strict)."""
        if self.metric != other.metric or self.op[0] != other.op[0]:
            return False
        if self.value == other.value:
            return self.op == other.op or len(other.op) == 2  # x > v implies x >= v
        return self.value > other.value if self.op[0] == ">" else self.value < other.value


class Signature(BaseModel):
    """When a runbook applies. Every part given must hold: all ``signals`` kinds present on the incident's
    resource, one of its XIDs in ``xids`` (or its catalog bucket in ``xid_buckets``), every metric condition
    true. More parts = more specific; the most specific match wins."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    signals: list[str] = Field(default_factory=list)
    xids: list[int] = Field(default_factory=list)
    xid_buckets: list[Bucket] = Field(default_factory=list)
    metrics: list[MetricCondition] = Field(default_factory=list)

    @field_validator("signals")
    @classmethod
    def _known_signals(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - SIGNAL_KINDS)
        if unknown:
            raise ValueError(f"unknown signal kind(s) {', '.join(map(repr, unknown))}; one of: "
                             + ", ".join(sorted(SIGNAL_KINDS)))
        return v

    @model_validator(mode="after")
    def _not_empty(self) -> Signature:
        if not (self.signals or self.xids or self.xid_buckets or self.metrics):
            raise ValueError("a signature needs at least one of signals, xids, xid_buckets, metrics")
        return self

    @property
    def specificity(self) -> int:
        # an exact XID code says more than a bucket of them
        return len(set(self.signals)) + 2 * bool(self.xids) + bool(self.xid_buckets) + len(self.metrics)

    def key(self) -> tuple[Any, ...]:
        return (tuple(sorted(set(self.signals))), tuple(sorted(set(self.xids))),
                tuple(sorted(set(self.xid_buckets))), tuple(sorted(str(m) for m in self.metrics)))

    def implies(self, other: Signature, bucket_of: dict[int, str] | None = None) -> bool:
        """Every incident this signature matches, ``other`` matches too: its signals and metric conditions are
        among (or implied by) ours, and its XID codes / buckets admit every code ours admits. ``bucket_of``
        maps codes to catalog buckets, so that ``xids: [119]`` is known to imply ``xid_buckets: [RESET_GPU]``."""
        if not set(other.signals) <= set(self.signals):
            return False
        if not all(any(m.implies(o) for m in self.metrics) for o in other.metrics):
            return False
        if other.xids and not (self.xids and set(self.xids) <= set(other.xids)):
            return False
        if other.xid_buckets:
            buckets = set(other.xid_buckets)
            by_bucket = bool(self.xid_buckets) and set(self.xid_buckets) <= buckets
            by_code = bool(self.xids) and bucket_of is not None and all(
                bucket_of.get(c) in buckets for c in self.xids)
            if not (by_bucket or by_code):
                return False
        return True


class _FrontMatter(BaseModel):
    """The YAML front-matter exactly as written; unknown keys are refused (typos would be silent)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    title: str = Field(min_length=1)
    # primary: the runbook the remediator should use for its root cause(s); neighbours cite the same labels
    # but describe rarer variants. The retriever ranks primaries first among equals.
    primary: bool = False
    # the contract's labels or the library's own (validated by shape and near-misses; registered at load)
    root_causes: list[RootCauseName] = Field(min_length=1)
    resource_kind: ResourceKind
    severity: Severity
    signals: list[str] = Field(min_length=1)
    actions: list[RunbookStep] = Field(default_factory=list)
    verification: list[str] = Field(default_factory=list)
    escalation: str = ""
    references: list[str] = Field(default_factory=list)
    signature: Signature | None = None  # when it applies; without one it is primary for its causes or cited

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not _ID_RE.match(value):
            raise ValueError(f"id {value!r} must be lower-case words joined by '-' ([a-z0-9-]+)")
        return value

    @field_validator("signals", "verification", "references")
    @classmethod
    def _strings_not_blank(cls, value: list[str]) -> list[str]:
        if any(not str(s).strip() for s in value):
            raise ValueError("entries must be non-empty strings")
        return value

    @field_validator("actions")
    @classmethod
    def _has_actions(cls, value: list[RunbookStep], info: ValidationInfo) -> list[RunbookStep]:
        # A runbook that prescribes nothing only makes sense for "this is healthy, leave it alone".
        # (root_causes is declared before actions, so it is validated and in info.data when valid.)
        if not value and set(info.data.get("root_causes") or ()) != {"healthy"}:
            raise ValueError("must list at least one step (only a `healthy` runbook may have none)")
        return value


class Runbook(_FrontMatter):
    """A validated runbook: its front-matter plus the Markdown body and where it came from."""

    body: str
    path: str
    content_hash: str  # sha256 of the whole file; the index is rebuilt when any hash changes


class RunbookProblem(BaseModel):
    """One problem found in a runbook file; ``line`` is 1-based (0 when the problem is not in one line)."""

    model_config = ConfigDict(frozen=True)

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class RunbookLoad(BaseModel):
    """The outcome of loading a folder: every valid runbook, and the problems of the files skipped."""

    runbooks: list[Runbook] = Field(default_factory=list)
    problems: list[RunbookProblem] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def by_id(self) -> dict[str, Runbook]:
        return {r.id: r for r in self.runbooks}


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------


class _Problem(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _split_front_matter(text: str) -> tuple[str, str, int]:
    """Return (front-matter YAML, body, line of the closing '---'). Lines are 1-based."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != _FRONT:
        raise _Problem(1, "a runbook must start with a '---' line opening its YAML front-matter")
    for i in range(1, len(lines)):
        if lines[i].strip() == _FRONT:
            return "".join(lines[1:i]), "".join(lines[i + 1 :]), i + 1
    raise _Problem(1, "the front-matter opened on line 1 is never closed by a '---' line")


def _check_duplicate_keys(node: yaml.Node, offset: int) -> None:
    """PyYAML keeps the last of two equal keys silently; a runbook with `actions:` twice is a mistake."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            if name in seen:
                raise _Problem(key.start_mark.line + offset, f"duplicate key {name!r}")
            seen.add(name)
            _check_duplicate_keys(value, offset)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicate_keys(item, offset)


def _line_of(root: yaml.Node | None, loc: tuple[int | str, ...], offset: int) -> int:
    """The file line of the YAML node at pydantic's error location ``loc`` (deepest node found)."""
    node = root
    line = offset - 1  # a missing key is reported at the '---' line that opens the front-matter
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if str(key.value) == str(part):
                    line = key.start_mark.line + offset
                    node = value
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + offset
        else:
            return line
    return line


def _format_error(err: Any) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "front-matter"
    msg = str(err["msg"])
    msg = msg.removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"{loc}: unknown key"
    if err["type"] == "literal_error":
        return f"{loc}: unknown value {err.get('input')!r}; {msg[0].lower()}{msg[1:]}"
    return f"{loc}: {msg}"


def parse_runbook(text: str, source: str) -> Runbook:
    """Parse and validate one runbook's text; raise ``RunbookError`` (where = 'file:line') on any problem."""
    try:
        return _parse(text, source)
    except _Problem as p:
        raise RunbookError(p.message, where=f"{source}:{p.line}") from None


def _parse(text: str, source: str) -> Runbook:
    front, body, closing_line = _split_front_matter(text)
    offset = 2  # the YAML's line 0 is the file's line 2 (line 1 is '---')
    try:
        root, data = compose_and_load(front)  # refuses alias bombs and deep nesting before anything walks them
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + offset if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise _Problem(line, f"invalid YAML: {problem}") from None
    if not isinstance(data, dict) or root is None:
        raise _Problem(1, "the front-matter must be a YAML mapping (key: value lines)")
    _check_duplicate_keys(root, offset)
    try:
        fm = _FrontMatter.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _Problem(_line_of(root, tuple(first["loc"]), offset), _format_error(first)) from None
    if not body.strip():
        raise _Problem(closing_line, "the Markdown body after the front-matter is empty")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    # a valid runbook's labels become known, so a diagnosis may carry them (core.domain.RootCauseLabel)
    register_root_causes(fm.root_causes)
    return Runbook(**fm.model_dump(), body=body.strip() + "\n", path=source, content_hash=digest)


def load_runbook(path: str | Path) -> Runbook:
    """Load one runbook file; raise ``RunbookError`` naming the file and line when it is invalid."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RunbookError(f"cannot read runbook: {exc}", where=str(p)) from None
    return parse_runbook(text, str(p))


def bundled_folder() -> Traversable:
    """The runbooks shipped inside the package (``runbooks/*.md``), wherever it is installed."""
    return resources.files("runbooks")


def _entries(folder: str | Path | Traversable | None) -> tuple[str, list[tuple[str, str | None, str]]]:
    """(folder name, [(file name for messages, text or None, read error)]) for every ``*.md``, sorted."""
    base: Traversable | Path = (
        bundled_folder() if folder is None else (Path(folder) if isinstance(folder, str) else folder)
    )
    if isinstance(base, Path) and not base.is_dir():
        raise RunbookError("runbook folder not found or not a folder", where=str(base))
    out: list[tuple[str, str | None, str]] = []
    for entry in sorted(base.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".md") or not entry.is_file():
            continue
        name = str(entry) if isinstance(entry, Path) else f"runbooks/{entry.name}"
        try:
            out.append((name, entry.read_text(encoding="utf-8"), ""))
        except (OSError, UnicodeDecodeError) as exc:
            out.append((name, None, f"cannot read runbook: {exc}"))
    return str(base), out


def load_runbooks(folder: str | Path | Traversable | None = None) -> RunbookLoad:
    """Load every ``*.md`` runbook of ``folder`` (None: the bundled runbooks).

    Every invalid file is reported and skipped; a duplicate id is reported on the later file (in name
    order), which is skipped too, so the result never holds two runbooks with one id.
    """
    _, entries = _entries(folder)
    result = RunbookLoad()
    first_file: dict[str, str] = {}
    for name, text, read_error in entries:
        if text is None:
            result.problems.append(RunbookProblem(file=name, line=0, message=read_error))
            continue
        try:
            rb = _parse(text, name)
        except _Problem as p:
            result.problems.append(RunbookProblem(file=name, line=p.line, message=p.message))
            continue
        if rb.id in first_file:
            line = _id_line(text)
            msg = f"duplicate runbook id {rb.id!r} (already defined in {first_file[rb.id]})"
            result.problems.append(RunbookProblem(file=name, line=line, message=msg))
            continue
        first_file[rb.id] = name
        result.runbooks.append(rb)
    return result


def _id_line(text: str) -> int:
    for i, line in enumerate(text.splitlines(), start=1):
        if line.startswith("id:"):
            return i
    return 1


def coverage_problems(runbooks: Iterable[Runbook], folder: str = "runbooks") -> list[RunbookProblem]:
    """Every root-cause label except ``healthy`` must have a primary runbook (the remediator needs one)."""
    covered = {rc for rb in runbooks if rb.primary for rc in rb.root_causes}
    return [
        RunbookProblem(file=folder, line=0, message=f"no primary runbook for root cause {rc!r}")
        for rc in ROOT_CAUSES
        if rc != "healthy" and rc not in covered
    ]


def signature_problems(runbooks: Iterable[Runbook], folder: str = "runbooks") -> list[RunbookProblem]:
    """Two runbooks whose signatures tie whenever the narrower one matches: the same signature, or one whose
    conditions imply the other's at equal specificity. The diagnostician reports such a tie and decides
    nothing, so the library should not hold one (which applies would otherwise depend on file order)."""
    from core import xids as xid_catalog

    bucket_of: dict[int, str] = {
        c: e.immediate_action for c in xid_catalog.codes() if (e := xid_catalog.entry(c)) is not None}
    signed = sorted((rb for rb in runbooks if rb.signature is not None), key=lambda r: r.id)
    out = []
    for i, rb in enumerate(signed):
        sig = rb.signature
        assert sig is not None
        for other in signed[:i]:
            osig = other.signature
            assert osig is not None
            if sig.key() == osig.key():
                out.append(RunbookProblem(file=rb.path or folder, line=0,
                                          message=f"{rb.id}: its signature overlaps {other.id}'s exactly"))
            elif sig.specificity == osig.specificity and (
                sig.implies(osig, bucket_of) or osig.implies(sig, bucket_of)
            ):
                narrow, broad = (rb, other) if sig.implies(osig, bucket_of) else (other, rb)
                out.append(RunbookProblem(
                    file=rb.path or folder, line=0,
                    message=(f"{rb.id}: its signature overlaps {other.id}'s: whenever {narrow.id} matches, "
                             f"{broad.id} matches with the same specificity ({sig.specificity}), a tie")))
    return out


def _drives_a_plan(rb: Runbook, runbooks: list[Runbook]) -> bool:
    """The remediator's choice (agents.runbook_source.RunbookCatalog.for_cause): a runbook drives a plan when
    a signature or a rule names it, or when it is the first primary (by id) for one of its causes."""
    if rb.signature is not None or rb.id in HINTED:
        return True
    for rc in rb.root_causes:
        first = min((r for r in runbooks if rc in r.root_causes), key=lambda r: (not r.primary, r.id))
        if first.id == rb.id and rb.primary:
            return True
    return False


def unreachable(runbooks: Iterable[Runbook]) -> list[str]:
    """Runbooks that can never drive a plan: no signature, named by no rule, and not the primary the
    remediator picks for any of their causes. They are still cited by retrieval (``opsmedic runbooks lint``
    lists them as a note)."""
    rbs = list(runbooks)
    return sorted(rb.id for rb in rbs if not _drives_a_plan(rb, rbs))


# Variant runbooks the diagnostician's rules name directly (its `runbook_hint`s): reachable without a signature.
HINTED: frozenset[str] = frozenset({"gpu-row-remap-failure", "image-pull-backoff"})


def label_problems(runbooks: Iterable[Runbook], folder: str = "runbooks") -> list[RunbookProblem]:
    """A label of the library's own (not the contract's) is only ever diagnosed through a signature: one that
    no signed runbook declares can never be a diagnosis, which is a mistake in the library."""
    rbs = list(runbooks)
    signed = {rc for rb in rbs if rb.signature is not None for rc in rb.root_causes[:1]}
    out = []
    for rb in sorted(rbs, key=lambda r: r.id):
        for rc in rb.root_causes:
            if rc not in ROOT_CAUSES and rc not in signed:
                out.append(RunbookProblem(
                    file=rb.path or folder, line=0,
                    message=(f"{rb.id}: root cause {rc!r} is the library's own label, but no runbook's signature "
                             "diagnoses it (a signed runbook must list it first)")))
    return out


def lint(
    folder: str | Path | Traversable | None = None, *, require_coverage: bool | None = None
) -> list[RunbookProblem]:
    """Every problem in a runbook folder (None: the bundled runbooks), as ``opsmedic runbooks lint`` shows.

    ``require_coverage`` (default: only for the bundled folder) also checks that each root-cause label has a
    primary runbook.
    """
    name, _ = _entries(folder)
    loaded = load_runbooks(folder)
    problems = list(loaded.problems)
    problems.extend(signature_problems(loaded.runbooks, name))
    problems.extend(label_problems(loaded.runbooks, name))
    if require_coverage if require_coverage is not None else folder is None:
        problems.extend(coverage_problems(loaded.runbooks, name))
    return problems

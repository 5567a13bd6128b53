"""The policy schema: what a policy YAML file may say, validated by pydantic, and how it is loaded.

Where this sits: the engines layer (`policies`), above `core.domain` / `core.errors` and
`core.actions`, below `agents` and the CLI. It performs file I/O only in `load_policy`; everything else is
pure. Every model forbids unknown keys, because a typo in a safety policy (`aproval: true`) silently
ignored would be worse than a refusal to start.

A bad file raises `PolicyError(what, where)`: `where` is ``<file>: <key.path>`` and `what` says what was
expected (and, when it can be found, on which line).
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from core.actions import ACTION_TOOLS
from core.domain import ACTION_NAMES, ActionName, Risk
from core.errors import PolicyError
from core.safe_yaml import compose_and_load

DEFAULT_POLICY_LABEL = "policies/default.yaml"
GROUP_PREFIX = "group:"

# --------------------------------------------------------------------------------------------------
# Durations
# --------------------------------------------------------------------------------------------------

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_HINT = "a duration like 30s, 5m, 1h or 1d (or a number of seconds)"


def parse_duration(value: Any) -> float:
    """Turn `30s` / `5m` / `1h` / `1d` (or a plain non-negative number of seconds) into seconds.

    Raises pydantic's PydanticCustomError (a ValueError), which pydantic reports at the key's location.
    """
    # bool is an int subclass; `cooldown: true` is a mistake, not one second
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    m = _DURATION_RE.match(value) if isinstance(value, str) else None
    if m is None:
        raise PydanticCustomError("duration", "expected {hint}, got {got}",
                                  {"hint": DURATION_HINT, "got": repr(value)})
    return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration, for explanations (`300.0` -> `5m`)."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


Duration = Annotated[float, BeforeValidator(parse_duration)]

# --------------------------------------------------------------------------------------------------
# Cron expressions (freeze windows)
# --------------------------------------------------------------------------------------------------

_CRON_BOUNDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
                ("day of week", 0, 7))


@dataclass(frozen=True)
class CronSpec:
    """A parsed 5-field cron expression. Day-of-week 0 and 7 are both Sunday."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday .. 6 = Saturday
    dom_any: bool
    dow_any: bool

    def day_matches(self, d: date) -> bool:
        if d.month not in self.months:
            return False
        dom_ok = d.day in self.days
        dow_ok = (d.isoweekday() % 7) in self.weekdays
        # classic cron: when both day fields are restricted, either one matching is enough
        if self.dom_any:
            return dow_ok
        if self.dow_any:
            return dom_ok
        return dom_ok or dow_ok

    def latest_start(self, now: datetime, lookback_days: int) -> datetime | None:
        """The latest matching minute at or before `now` (naive, same zone), looking back that many days."""
        for back in range(lookback_days + 1):
            d = now.date() - timedelta(days=back)
            if not self.day_matches(d):
                continue
            for h in sorted(self.hours, reverse=True):
                for mi in sorted(self.minutes, reverse=True):
                    t = datetime(d.year, d.month, d.day, h, mi)
                    if t <= now:
                        return t
        return None


def _cron_field(text: str, name: str, lo: int, hi: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            if not step_text.isdigit() or int(step_text) < 1:
                raise ValueError(f"bad step {step_text!r} in the {name} field")
            step = int(step_text)
        if part == "*":
            start, end = lo, hi
        elif "-" in part:
            a, b = part.split("-", 1)
            if not (a.isdigit() and b.isdigit()):
                raise ValueError(f"bad range {part!r} in the {name} field")
            start, end = int(a), int(b)
        elif part.isdigit():
            start = int(part)
            end = hi if step > 1 else start
        else:
            raise ValueError(f"bad value {part!r} in the {name} field")
        if not (lo <= start <= end <= hi):
            raise ValueError(f"{part!r} is out of range {lo}-{hi} in the {name} field")
        values.update(range(start, end + 1, step))
    return frozenset(values)


@functools.lru_cache(maxsize=256)
def parse_cron(expr: str) -> CronSpec:
    """Parse `m h dom mon dow` (numbers, `*`, ranges, lists and steps; no names). ValueError if bad."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 cron fields 'minute hour day-of-month month day-of-week', got {expr!r}")
    parsed = [_cron_field(f, *bounds) for f, bounds in zip(fields, _CRON_BOUNDS, strict=True)]
    weekdays = frozenset(d % 7 for d in parsed[4])
    return CronSpec(minutes=parsed[0], hours=parsed[1], days=parsed[2], months=parsed[3],
                    weekdays=weekdays, dom_any=fields[2] == "*", dow_any=fields[4] == "*")


# --------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class Defaults(_Strict):
    approval_expiry: Duration = 1800.0
    # who approves an action that needs approval but names no approvers itself (e.g. during a freeze)
    approvers: list[str] = Field(default_factory=list)


class Approvers(_Strict):
    groups: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("groups")
    @classmethod
    def _group_names(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, members in v.items():
            if not re.match(_NAME_RE, name):
                raise ValueError(f"group name {name!r} must be letters, digits, '_', '.' or '-'")
            if not members:
                raise ValueError(f"group {name!r} is empty; list at least one user id")
        return v


RateScope = Literal["global", "target", "resource", "incident"]


class RateLimit(_Strict):
    """At most `count` executions of the action within `window`, counted `per`:

    - `global`: cluster-wide (every target, every incident);
    - `target` / `resource`: on the same target (for notify/escalate the target is the incident's
      resource, hence the second name): one noisy resource cannot spend a cluster-wide budget;
    - `incident`: within the same incident: repeated pages for one incident are coalesced.
    """

    count: int = Field(ge=1)
    window: Duration
    per: RateScope = "global"

    @field_validator("window")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("the window must be longer than zero")
        return v


class Condition(_Strict):
    """Context-dependent tightening: when every selector given matches, approval is needed (or the
    action is denied). Conditions can only make an action harder, never easier."""

    namespace: str | None = None
    node_label: dict[str, str] | None = None
    model_stage: str | None = None
    require_approval: bool = True
    deny: bool = False

    @model_validator(mode="after")
    def _meaningful(self) -> Condition:
        if self.namespace is None and not self.node_label and self.model_stage is None:
            raise ValueError("a condition needs at least one of namespace, node_label, model_stage")
        if not self.require_approval and not self.deny:
            raise ValueError("a condition must set require_approval: true or deny: true (or do nothing)")
        return self


class ActionPolicy(_Strict):
    risk: Risk | None = None  # None: the tool registry's default risk
    approval: bool | None = None  # None: required iff the risk is high or critical
    approvers: list[str] = Field(default_factory=list)  # empty: defaults.approvers
    approvals_required: Literal[1, 2] = 1
    approval_expiry: Duration | None = None  # None: defaults.approval_expiry
    # one limit, or several counted in different scopes (e.g. per incident, per resource and a global
    # ceiling); every one must pass
    rate_limit: RateLimit | list[RateLimit] | None = None
    cooldown: Duration | None = None  # per target
    conditions: list[Condition] = Field(default_factory=list)
    enabled: bool = True
    # the pager's severity for this action (PagerDuty Events API v2); only `escalate` pages today
    severity: Literal["critical", "error", "warning", "info"] | None = None
    # scale_deployment only: the most replicas opsmedic may set on its own; past it the step is denied and a
    # person is paged (the free GPUs bound it too, in the backend)
    max_replicas: int | None = Field(default=None, ge=1, le=100_000)

    @field_validator("rate_limit")
    @classmethod
    def _distinct_scopes(cls, v: RateLimit | list[RateLimit] | None) -> RateLimit | list[RateLimit] | None:
        if isinstance(v, list):
            if not v:
                raise ValueError("an empty list of rate limits: leave rate_limit out instead")
            scopes = [_scope(r.per) for r in v]
            dup = next((s for s in scopes if scopes.count(s) > 1), None)
            if dup is not None:
                raise ValueError(f"two rate limits count per {dup}; give each scope one limit")
        return v

    def rate_limits(self) -> list[RateLimit]:
        """The rate limits, however they were written (none, one, or a list)."""
        if self.rate_limit is None:
            return []
        return self.rate_limit if isinstance(self.rate_limit, list) else [self.rate_limit]


def _scope(per: str) -> str:
    return "target" if per == "resource" else per  # the same count under two names


class CircuitBreaker(_Strict):
    max_nodes_out_fraction: float = Field(default=0.25, ge=0.0, le=1.0)
    min_nodes_allowed: int = Field(default=1, ge=0)
    max_gpus_out_fraction: float = Field(default=0.25, ge=0.0, le=1.0)
    min_gpus_allowed: int = Field(default=1, ge=0)


def _default_exempt() -> list[ActionName]:
    return ["notify", "escalate"]


class Limits(_Strict):
    max_actions_per_incident: int = Field(default=8, ge=1)
    circuit_breaker: CircuitBreaker = Field(default_factory=CircuitBreaker)
    # actions that neither count towards nor are stopped by max_actions_per_incident and freeze windows:
    # telling a human must stay possible when everything else is refused
    exempt_actions: list[ActionName] = Field(default_factory=_default_exempt)


class SignalPolicy(_Strict):
    """How often an event the XID catalog says to IGNORE must repeat on one GPU before it opens an incident
    (below the rate it is only recorded in the audit log)."""

    xid_ignore: RateLimit = Field(default_factory=lambda: RateLimit(count=3, window=3600.0))


class FreezeWindow(_Strict):
    """A period in which actions are denied: either fixed (`start`/`end`) or recurring (`cron`/`duration`)."""

    name: str = Field(pattern=_NAME_RE)
    start: datetime | None = None
    end: datetime | None = None
    cron: str | None = None
    duration: Duration | None = None
    timezone: str = "UTC"  # the zone in which `cron` and naive start/end are read

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}; expected an IANA name like Europe/Berlin") from None
        return v

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is not None:
            parse_cron(v)  # ValueError names the bad field
        return v

    @model_validator(mode="after")
    def _one_form(self) -> FreezeWindow:
        fixed = self.start is not None or self.end is not None
        recurring = self.cron is not None or self.duration is not None
        if fixed and recurring:
            raise ValueError("use either start/end or cron/duration, not both")
        if fixed:
            if self.start is None or self.end is None:
                raise ValueError("a fixed freeze window needs both start and end")
            if self._aware(self.end) <= self._aware(self.start):
                raise ValueError("end must be after start")
        elif recurring:
            if self.cron is None or self.duration is None:
                raise ValueError("a recurring freeze window needs both cron and duration")
            if not 0 < self.duration <= 31 * 86400:
                raise ValueError("duration must be longer than zero and at most 31d")
        else:
            raise ValueError("a freeze window needs start/end or cron/duration")
        return self

    def _aware(self, t: datetime) -> datetime:
        return t if t.tzinfo is not None else t.replace(tzinfo=ZoneInfo(self.timezone))

    def active_at(self, now: datetime) -> bool:
        """Whether `now` (naive = UTC) falls inside this window; start inclusive, end exclusive."""
        now = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
        if self.start is not None and self.end is not None:
            return self._aware(self.start) <= now < self._aware(self.end)
        assert self.cron is not None and self.duration is not None  # guaranteed by _one_form
        local = now.astimezone(ZoneInfo(self.timezone)).replace(tzinfo=None)
        spec = parse_cron(self.cron)
        # only the latest start before now matters: if any earlier start still covers now, so does it
        start = spec.latest_start(local, lookback_days=int(self.duration // 86400) + 1)
        return start is not None and local < start + timedelta(seconds=self.duration)


class EmergencyOverride(_Strict):
    """What `emergency_override=True` in a decision context does during a freeze window."""

    enabled: bool = True  # False: a freeze cannot be overridden at all
    approval: bool = True  # True: the overridden action needs approval; False: it is allowed


class Policy(_Strict):
    version: Literal[1] = 1
    mode: Literal["enforce", "dry_run"] = "enforce"
    defaults: Defaults = Field(default_factory=Defaults)
    approvers: Approvers = Field(default_factory=Approvers)
    actions: dict[str, ActionPolicy] = Field(default_factory=dict)
    limits: Limits = Field(default_factory=Limits)
    freeze_windows: list[FreezeWindow] = Field(default_factory=list)
    emergency_override: EmergencyOverride = Field(default_factory=EmergencyOverride)
    signals: SignalPolicy = Field(default_factory=SignalPolicy)

    # ---- resolution helpers used by the engine (the registry fills in what the file leaves out) ----

    def action_policy(self, name: str) -> ActionPolicy:
        return self.actions.get(name) or ActionPolicy()

    def risk_of(self, name: str) -> Risk:
        ap = self.actions.get(name)
        if ap is not None and ap.risk is not None:
            return ap.risk
        return ACTION_TOOLS[name].risk

    def approval_needed(self, name: str) -> bool:
        ap = self.actions.get(name)
        if ap is not None and ap.approval is not None:
            return ap.approval
        return self.risk_of(name) in (Risk.high, Risk.critical)

    def expand(self, refs: list[str]) -> list[str]:
        """User ids and `group:<name>` references -> user ids, order kept, duplicates dropped."""
        out: list[str] = []
        for ref in refs:
            members = (self.approvers.groups.get(ref[len(GROUP_PREFIX):], [])
                       if ref.startswith(GROUP_PREFIX) else [ref])
            out.extend(m for m in members if m not in out)
        return out

    def approvers_for(self, name: str) -> list[str]:
        ap = self.actions.get(name)
        refs = ap.approvers if ap is not None and ap.approvers else self.defaults.approvers
        return self.expand(refs)

    def approvals_required_for(self, name: str) -> int:
        return self.action_policy(name).approvals_required

    def approval_expiry_for(self, name: str) -> float:
        ap = self.actions.get(name)
        if ap is not None and ap.approval_expiry is not None:
            return ap.approval_expiry
        return self.defaults.approval_expiry


# --------------------------------------------------------------------------------------------------
# Loading and error reporting
# --------------------------------------------------------------------------------------------------


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":  # pydantic's marker for a bad dict key: the key itself is the location
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _line_of(root: yaml.Node | None, loc: tuple[str | int, ...]) -> int | None:
    """1-based line of the YAML node at `loc` (or of its nearest ancestor that exists)."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for i, part in enumerate(loc):
        nxt: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                    # the key's own line for the last step: that is where a reader looks
                    nxt = v if i < len(loc) - 1 else k
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            nxt = node.value[part]
        if nxt is None:
            break
        node = nxt
        line = node.start_mark.line + 1
    return line


def _message(err: Any) -> str:
    kind = err.get("type", "")
    msg = str(err.get("msg", ""))
    if kind == "extra_forbidden":
        return "unknown key (not part of the policy schema; check its spelling)"
    if kind == "missing":
        return "required key is missing"
    return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")


_BRANCHES = ("RateLimit", "list[RateLimit]")  # the union members of `rate_limit`, as pydantic names them
_SHAPE_ERRORS = ("model_type", "model_attributes_type", "dict_type", "list_type")


def _one_branch(errors: list[Any]) -> list[Any]:
    """`rate_limit` is one mapping or a list of them: report only the errors of the shape that was
    written (not "should be a mapping" for a list), with the union member's name left out of the path."""
    kept = [e for e in errors
            if not (any(b in e["loc"] for b in _BRANCHES) and e["type"] in _SHAPE_ERRORS
                    and e["loc"][-1] in _BRANCHES)]
    out = kept or errors
    for e in out:
        e["loc"] = tuple(p for p in e["loc"] if p not in _BRANCHES)
    return out


def _cross_check(policy: Policy) -> list[tuple[tuple[str | int, ...], str]]:
    """Checks that span several keys (pydantic validates each key alone); (location, problem) pairs."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    groups = policy.approvers.groups

    def refs_ok(refs: list[str], loc: tuple[str | int, ...]) -> None:
        for i, ref in enumerate(refs):
            if ref.startswith(GROUP_PREFIX) and ref[len(GROUP_PREFIX):] not in groups:
                known = ", ".join(sorted(groups)) or "none defined"
                problems.append(((*loc, i), f"unknown approver group {ref!r}; approvers.groups has: {known}"))
            if not ref.strip():
                problems.append(((*loc, i), "an approver must be a non-empty user id or group:<name>"))

    refs_ok(policy.defaults.approvers, ("defaults", "approvers"))
    for name, ap in policy.actions.items():
        if name not in ACTION_NAMES:
            problems.append((("actions", name),
                             f"unknown action {name!r}; expected one of: {', '.join(ACTION_NAMES)}"))
            continue
        refs_ok(ap.approvers, ("actions", name, "approvers"))
        if ap.max_replicas is not None and name != "scale_deployment":
            problems.append((("actions", name, "max_replicas"),
                             "max_replicas bounds scale_deployment only; remove it here"))
        if policy.approval_needed(name):
            approvers = policy.approvers_for(name)
            if not approvers:
                problems.append((("actions", name, "approvers"),
                                 ("approval is required but nobody can approve: list approvers here or in "
                                  "defaults.approvers")))
            elif len(approvers) < ap.approvals_required:
                problems.append((("actions", name, "approvals_required"),
                                 (f"{ap.approvals_required} different approvers are required but only "
                                  f"{len(approvers)} is listed")))
    seen: set[str] = set()
    for i, w in enumerate(policy.freeze_windows):
        if w.name in seen:
            problems.append((("freeze_windows", i, "name"), f"duplicate freeze window name {w.name!r}"))
        seen.add(w.name)
    return problems


def parse_policy(data: Any, source: str = "<policy>", *, root: yaml.Node | None = None) -> Policy:
    """Validate already-parsed policy data; raise PolicyError naming `source` and the key path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"expected a mapping of policy keys at the top level, got {type(data).__name__}",
                          f"{source}: (top level)")
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        errors = _one_branch(exc.errors())
        first = errors[0]
        loc = tuple(first["loc"])
        what = _message(first)
        line = _line_of(root, loc) if root is not None else None
        if line is not None:
            what += f" (line {line})"
        if len(errors) > 1:
            what += "; also: " + "; ".join(f"{_dotted(tuple(e['loc']))}: {_message(e)}" for e in errors[1:5])
        raise PolicyError(what, f"{source}: {_dotted(loc)}") from None
    problems = _cross_check(policy)
    if problems:
        loc, what = problems[0]
        line = _line_of(root, loc) if root is not None else None
        if line is not None:
            what += f" (line {line})"
        if len(problems) > 1:
            what += "; also: " + "; ".join(f"{_dotted(p)}: {m}" for p, m in problems[1:5])
        raise PolicyError(what, f"{source}: {_dotted(loc)}")
    return policy


def parse_policy_text(text: str, source: str = "<policy>") -> Policy:
    """Parse YAML text into a Policy; syntax errors name the line."""
    try:
        root, data = compose_and_load(text)  # refuses alias bombs and deep nesting before anything walks them
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        col = f", column {mark.column + 1}" if mark is not None else ""
        raise PolicyError(f"invalid YAML: {problem}{col}", where) from None
    dup = _duplicate_key(root, ())
    if dup is not None:
        loc, line = dup
        # PyYAML keeps the last of two equal keys silently; in a safety policy that hides a rule
        raise PolicyError(f"duplicate key (line {line}); each key may appear only once",
                          f"{source}: {_dotted(loc)}")
    return parse_policy(data, source, root=root)


def _duplicate_key(node: yaml.Node | None,
                   loc: tuple[str | int, ...]) -> tuple[tuple[str | int, ...], int] | None:
    """The first key that appears twice in one mapping, with its line, or None."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            key = str(k.value) if isinstance(k, yaml.ScalarNode) else repr(k)
            if key in seen:
                return (*loc, key), k.start_mark.line + 1
            seen.add(key)
            found = _duplicate_key(v, (*loc, key))
            if found is not None:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found = _duplicate_key(item, (*loc, i))
            if found is not None:
                return found
    return None


def load_policy(path: str | Path | None = None) -> Policy:
    """Load a policy file; None loads the bundled `policies/default.yaml`."""
    if path is None:
        text = importlib.resources.files("policies").joinpath("default.yaml").read_text(encoding="utf-8")
        return parse_policy_text(text, DEFAULT_POLICY_LABEL)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError("policy file not found", str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read the policy file: {exc}", str(path)) from None
    return parse_policy_text(text, str(path))

"""Alertmanager webhook (payload version 4) ingestion: alerts in, de-duplicated `Signal`s out.

Layer: tools (read adapter). Imports `core.domain`, `core.errors` and pydantic; FastAPI only inside
`webhook_app` (the daemon mounts its own route and calls `AlertIngestor.ingest_bytes`).

- `parse_webhook(body)` validates the JSON body against the v4 schema (prometheus.io/docs/alerting/latest/
  configuration/#webhook_config) and raises `PayloadError` naming the offending field (`alerts[2].status`).
- `AlertIngestor` maps each alert to a `Signal` on the resource it is about (`node-N/gpu-M` from DCGM's
  `Hostname` + `gpu` labels, a pod, a model, a node), keys it by the alert's fingerprint so that repeated
  notifications of one firing alert are one signal, and closes the signal when the alert resolves.
  `groups()` is what the monitor grouping sees: one entry per resource, however many alerts mention it.
  All state sits behind one lock (the webhook server calls it from many threads) and is bounded:
  `max_active` firing alerts (oldest evicted and counted), `max_events` queued events for `poll()`.
- `alert_storm()` is the benchmark (`bench_alert_storm()` for `opsmedic bench`): thousands of alerts per
  second, mostly duplicates of a few faults.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from core.domain import ResourceKind, Signal
from core.errors import PayloadError

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

MAX_BODY_BYTES = 4 * 1024 * 1024  # Alertmanager batches, but a 4 MiB notification is not one


# ---------------------------------------------------------------------------------------- payload


class Alert(BaseModel):
    """One alert of a webhook notification. Unknown fields are ignored (Alertmanager adds some over time)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime  # noqa: N815 - the wire name
    endsAt: datetime | None = None  # noqa: N815 - "0001-01-01T00:00:00Z" while firing
    generatorURL: str = ""  # noqa: N815
    fingerprint: str = ""

    @field_validator("labels")
    @classmethod
    def _alertname(cls, v: dict[str, str]) -> dict[str, str]:
        if not v.get("alertname"):
            raise ValueError("an alert needs an `alertname` label")
        return v

    def key(self) -> str:
        """The fingerprint, or (from Alertmanager < 0.20, which sent none) a hash of the sorted labels."""
        if self.fingerprint:
            return self.fingerprint
        raw = json.dumps(sorted(self.labels.items()), separators=(",", ":"))
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


class WebhookPayload(BaseModel):
    """Alertmanager's webhook body, version 4."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    version: Literal["4"]
    groupKey: str  # noqa: N815
    truncatedAlerts: int = 0  # noqa: N815
    status: Literal["firing", "resolved"]
    receiver: str
    groupLabels: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    commonLabels: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    commonAnnotations: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    externalURL: str = ""  # noqa: N815
    alerts: list[Alert]


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


MAX_JSON_DEPTH = 32  # a v4 body is 4 levels deep; anything near this is not Alertmanager's
_KEEP_CONTROLS = frozenset("\t\n\r")


class _NotJson(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not JSON")


def _bad(ch: str) -> bool:
    o = ord(ch)
    return 0xD800 <= o <= 0xDFFF or (o < 0x20 and ch not in _KEEP_CONTROLS) or o == 0x7F


# In valid UTF-8 JSON a lone surrogate or a control character can only arrive as a \\u escape (raw control
# characters are not JSON, raw surrogates not UTF-8) or as a raw DEL: when neither is in the text, the
# per-character check is skipped (the common case, and most of the cost of a large body).
_BAD_ESCAPE = re.compile(r"\\u(?:[dD][89a-fA-F][0-9a-fA-F]{2}|00[01][0-9a-fA-F]|007[fF])")


def _clean(value: Any, max_depth: int, check_text: bool = True) -> tuple[Any, int]:
    """(value with lone surrogates and control characters replaced by U+FFFD, how many strings changed);
    raises PayloadError for a document deeper than `max_depth` or a non-finite number. Iterative: a deep
    document must not exhaust our own stack."""
    changed = 0

    def text(v: str) -> str:
        nonlocal changed
        if not check_text or not any(_bad(c) for c in v):
            return v
        changed += 1
        return "".join("\ufffd" if _bad(c) else c for c in v)

    root: list[Any] = [None]
    stack: list[tuple[Any, list[Any] | dict[str, Any], Any, int]] = [(value, root, 0, 1)]
    while stack:
        v, parent, key, depth = stack.pop()
        if isinstance(v, dict):
            if depth > max_depth:
                raise PayloadError(f"nested deeper than {max_depth} levels", "body")
            out_d: dict[str, Any] = {}
            parent[key] = out_d
            for k, item in v.items():
                ck = text(k)
                out_d[ck] = None
                stack.append((item, out_d, ck, depth + 1))
        elif isinstance(v, list):
            if depth > max_depth:
                raise PayloadError(f"nested deeper than {max_depth} levels", "body")
            out_l: list[Any] = [None] * len(v)
            parent[key] = out_l
            for i, item in enumerate(v):
                stack.append((item, out_l, i, depth + 1))
        elif isinstance(v, str):
            parent[key] = text(v)
        elif isinstance(v, float) and not math.isfinite(v):
            raise PayloadError("a number out of range (not finite)", "body")
        else:
            parent[key] = v
    return root[0], changed


def parse_webhook_checked(body: bytes | str) -> tuple[WebhookPayload, int]:
    """`parse_webhook`, also saying how many strings had lone surrogates or control characters replaced
    by U+FFFD (the intake answers it, so that the sender learns its text was changed)."""
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogatepass")
    if len(body) > MAX_BODY_BYTES:
        raise PayloadError(f"body is {len(body)} bytes; the limit is {MAX_BODY_BYTES}", "body")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"not UTF-8: invalid byte at offset {exc.start}", "body") from None
    try:
        raw = json.loads(text.removeprefix("\ufeff"), parse_constant=_refuse_constant)
    except RecursionError:
        raise PayloadError(f"nested deeper than {MAX_JSON_DEPTH} levels", "body") from None
    except (ValueError, _NotJson) as exc:  # JSONDecodeError is a ValueError; NaN and Infinity are not JSON
        raise PayloadError(f"not JSON: {exc}", "body") from None
    if not isinstance(raw, dict):
        raise PayloadError(f"expected a JSON object, got {type(raw).__name__}", "body")
    raw, changed = _clean(raw, MAX_JSON_DEPTH, check_text=bool(_BAD_ESCAPE.search(text)) or "\x7f" in text)
    if raw.get("version") not in (None, "4"):
        raise PayloadError(
            f'unsupported webhook version {str(raw.get("version"))[:40]!r}; opsmedic reads version "4"', "version"
        )
    try:
        return WebhookPayload.model_validate(raw), changed
    except ValidationError as exc:
        err = exc.errors()[0]
        where = _where(tuple(err["loc"]))
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise PayloadError(msg, where) from None


def parse_webhook(body: bytes | str) -> WebhookPayload:
    """Validate an Alertmanager webhook body; `PayloadError.where` names the first bad field.

    Strict where it must be: UTF-8 only, no NaN/Infinity literals, at most `MAX_JSON_DEPTH` deep. Forgiving
    where a real alert would otherwise be lost: lone surrogates and control characters (tab, newline and
    CR excepted) in any string are replaced by U+FFFD, so that nothing unstorable reaches the incident, the
    audit log or a view (`parse_webhook_checked` says how many strings were changed)."""
    return parse_webhook_checked(body)[0]


# ----------------------------------------------------------------------------- alert -> signal

# alertname -> signal kind, for the names of dcgm-exporter / kube-prometheus rule sets and opsmedic's own
# rules (scripts/start-prometheus.sh). A label `opsmedic_signal` overrides; other names become
# `alert_<snake_case>` so that nothing is dropped for want of a mapping.
ALERT_KINDS: dict[str, str] = {
    "GpuXid": "gpu_xid",
    "GPUXidError": "gpu_xid",
    "DCGMXidError": "gpu_xid",
    "GpuXidErrors": "gpu_xid",
    "GpuTempHigh": "gpu_temp_high",
    "GPUHighTemperature": "gpu_temp_high",
    "DCGMGpuTempHigh": "gpu_temp_high",
    "GpuEccDbe": "ecc_dbe",
    "GPUDoubleBitEccErrors": "ecc_dbe",
    "DCGMEccDbe": "ecc_dbe",
    "GpuLost": "gpu_lost",
    "GpuFellOffBus": "gpu_lost",
    "GpuRowRemapFailure": "remap_failure",
    "GpuNvlinkErrors": "nvlink_errors",
    "GpuMemoryGrowth": "fb_memory_growth",
    "KubeNodeNotReady": "node_not_ready",
    "NodeNotReady": "node_not_ready",
    "KubePodCrashLooping": "pod_crashloop",
    "KubePodNotReady": "pod_not_ready",
    "ModelAccuracyLow": "slo_accuracy",
    "ModelLatencyHigh": "slo_latency",
    "ModelDriftPsi": "drift_psi",
    "ModelDriftKl": "drift_kl",
    "TrainingStalled": "training_stalled",
}
_HOST_LABELS = ("Hostname", "hostname", "node", "kubernetes_node")


def _snake(name: str) -> str:
    # GpuXid -> gpu_xid, HBMTemperatureHigh -> hbm_temperature_high (acronyms stay one word)
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def signal_kind(labels: Mapping[str, str]) -> str:
    if labels.get("opsmedic_signal"):
        return labels["opsmedic_signal"]
    name = labels["alertname"]
    return ALERT_KINDS.get(name) or "alert_" + _snake(name)


def resource_of(
    labels: Mapping[str, str], uuid_to_gpu: Mapping[str, str] | None = None
) -> tuple[str, ResourceKind]:
    """The resource an alert is about, most specific first: GPU, model, pod, node, else the cluster.

    A DCGM alert also carries the `pod` using the GPU; the GPU is what failed, so it wins.
    """
    host = next((labels[k] for k in _HOST_LABELS if labels.get(k)), "")
    gpu = labels.get("gpu", "")
    if "/gpu-" in gpu:
        return gpu, ResourceKind.gpu
    if host and gpu.isdigit():
        return f"{host}/gpu-{gpu}", ResourceKind.gpu
    if uuid_to_gpu and labels.get("UUID") in uuid_to_gpu:
        return uuid_to_gpu[labels["UUID"]], ResourceKind.gpu
    if labels.get("model"):
        return labels["model"], ResourceKind.model
    if labels.get("pod"):
        return labels["pod"], ResourceKind.pod
    if host:
        return host, ResourceKind.node
    return "cluster", ResourceKind.cluster


def _value(alert: Alert, kind: str) -> float | None:
    raw = alert.labels.get("xid") if kind == "gpu_xid" else None
    raw = raw or alert.annotations.get("value")
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    # "NaN" and "inf" parse as floats, but must never reach a signal, the audit log or a view
    return value if value is None or math.isfinite(value) else None


def alert_to_signal(alert: Alert, at_s: float, uuid_to_gpu: Mapping[str, str] | None = None) -> Signal:
    kind = signal_kind(alert.labels)
    resource, rkind = resource_of(alert.labels, uuid_to_gpu)
    detail = (
        alert.annotations.get("summary")
        or alert.annotations.get("description")
        or f"{alert.labels['alertname']} on {resource}"
    )
    labels = {
        k: v
        for k, v in alert.labels.items()
        if k in ("alertname", "severity", "xid", "feature", "node", "Hostname", "pod", "namespace")
    }
    labels["fingerprint"] = alert.key()
    labels["starts_at"] = alert.startsAt.isoformat()
    if rkind == ResourceKind.gpu:
        labels.setdefault("node", resource.partition("/gpu-")[0])
    return Signal(
        kind=kind,
        resource=resource,
        resource_kind=rkind,
        at_s=at_s,
        value=_value(alert, kind),
        detail=detail[:500],
        labels=labels,
        source="alertmanager",
    )


# ------------------------------------------------------------------------------------------ ingestor


@dataclass(frozen=True)
class AlertEvent:
    """What changed: a firing alert opened a signal, or its resolution closed it."""

    kind: Literal["opened", "resolved"]
    signal: Signal


@dataclass
class IngestCounts:
    received: int = 0  # alerts in accepted payloads
    accepted: int = 0  # new firing alerts -> new signals
    duplicate: int = 0  # re-notifications of an alert already firing
    resolved: int = 0  # resolutions that closed a signal
    resolved_unknown: int = 0  # resolutions of alerts never seen firing (e.g. after a restart)
    rejected: int = 0  # malformed payloads
    evicted: int = 0  # firing alerts dropped to respect max_active
    events_dropped: int = 0  # events not queued because poll() fell behind


@dataclass
class _Active:
    signal: Signal
    last_seen: float
    notifications: int = 1


@dataclass
class AlertIngestor:
    """Thread-safe, bounded Alertmanager ingestion. `clock` gives signals their `at_s` (simulated time in
    the sandbox, wall time by default)."""

    max_active: int = 100_000
    max_events: int = 100_000
    clock: Callable[[], float] = time.time
    uuid_to_gpu: dict[str, str] = field(default_factory=dict)
    counts: IngestCounts = field(default_factory=IngestCounts)
    _active: OrderedDict[str, _Active] = field(default_factory=OrderedDict)
    _events: deque[AlertEvent] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def ingest_bytes(self, body: bytes | str) -> WebhookPayload:
        """Parse and ingest one webhook body. A malformed body is counted and re-raised as PayloadError."""
        try:
            payload = parse_webhook(body)
        except PayloadError:
            with self._lock:
                self.counts.rejected += 1
            raise
        self.ingest(payload)
        return payload

    def ingest(self, payload: WebhookPayload) -> list[AlertEvent]:
        now = self.clock()
        prepared = [(a.key(), a) for a in payload.alerts]
        events: list[AlertEvent] = []
        with self._lock:
            self.counts.received += len(prepared)
            for fp, alert in prepared:
                cur = self._active.get(fp)
                if alert.status == "firing":
                    if cur is not None:
                        cur.last_seen, cur.notifications = now, cur.notifications + 1
                        self.counts.duplicate += 1
                        continue
                    sig = alert_to_signal(alert, now, self.uuid_to_gpu)
                    self._active[fp] = _Active(sig, now)
                    self.counts.accepted += 1
                    events.append(AlertEvent("opened", sig))
                    while len(self._active) > self.max_active:
                        self._active.popitem(last=False)
                        self.counts.evicted += 1
                else:
                    if cur is None:
                        self.counts.resolved_unknown += 1
                        continue
                    del self._active[fp]
                    self.counts.resolved += 1
                    events.append(AlertEvent("resolved", cur.signal.model_copy(update={"at_s": now})))
            for ev in events:
                if len(self._events) >= self.max_events:
                    self.counts.events_dropped += 1
                else:
                    self._events.append(ev)
        return events

    def poll(self, limit: int | None = None) -> list[AlertEvent]:
        """Events since the last poll, oldest first (the monitor drains these every tick)."""
        with self._lock:
            n = len(self._events) if limit is None else min(limit, len(self._events))
            return [self._events.popleft() for _ in range(n)]

    def active_signals(self) -> list[Signal]:
        """One signal per firing alert."""
        with self._lock:
            return [a.signal for a in self._active.values()]

    def groups(self) -> dict[str, list[Signal]]:
        """Firing signals by the resource that explains them: one key per GPU / pod / model / node."""
        out: dict[str, list[Signal]] = {}
        for sig in self.active_signals():
            out.setdefault(sig.resource, []).append(sig)
        return out

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self.counts.__dict__, "active": len(self._active), "queued_events": len(self._events)}


def webhook_app(ingestor: AlertIngestor, path: str = "/alerts/alertmanager", *,
                tokens: list[str] | None = None) -> FastAPI:
    """A minimal FastAPI app with the webhook route (for tests and `opsmedic sandbox`; the daemon serves its
    own, authenticated route through `opsmedic.daemon.edge`). 400 with the PayloadError's message for a
    malformed body. With `tokens`, a request needs `Authorization: Bearer <one of them>` (401 otherwise)."""
    from fastapi import FastAPI
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    app = FastAPI(title="opsmedic alert webhook")

    # Plain Starlette routes: the handlers take the raw Request (the body must be validated by
    # parse_webhook, which names the bad field, not by FastAPI's own 422 answers).
    async def receive(request: Request) -> JSONResponse:
        if tokens is not None:
            import hmac

            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            ok = False
            for t in tokens:  # every token compared, each in constant time
                ok |= hmac.compare_digest(hashlib.sha256(given.strip().encode()).digest(),
                                          hashlib.sha256(t.encode()).digest())
            if scheme.lower() != "bearer" or not ok:
                return JSONResponse({"error": "a bearer token is required"}, status_code=401)
        body = await request.body()
        try:
            payload = ingestor.ingest_bytes(body)
        except PayloadError as exc:
            return JSONResponse({"error": str(exc), "field": exc.where}, status_code=400)
        return JSONResponse({"received": len(payload.alerts)})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, **ingestor.stats()})

    app.add_route(path, receive, methods=["POST"])
    app.add_route("/healthz", healthz, methods=["GET"])
    return app


# ------------------------------------------------------------------------------------------- bench


def _storm_payload(alerts: list[dict[str, Any]], status: str) -> bytes:
    return json.dumps(
        {
            "version": "4",
            "groupKey": '{}:{alertname="storm"}',
            "truncatedAlerts": 0,
            "status": status,
            "receiver": "opsmedic",
            "groupLabels": {},
            "commonLabels": {},
            "commonAnnotations": {},
            "externalURL": "http://127.0.0.1:9093",
            "alerts": alerts,
        }
    ).encode()


def alert_storm(
    ingestor: AlertIngestor,
    rate: int = 1000,
    seconds: float = 30.0,
    *,
    faults: int = 5,
    noise_per_fault: int = 3,
    batch: int = 50,
    realtime: bool = False,
    resolve: bool = True,
    post: Callable[[bytes], object] | None = None,
) -> dict[str, float]:
    """Feed `rate * seconds` alerts, as JSON webhook bodies of `batch` alerts, through `ingest_bytes`.

    The alerts are re-notifications of `faults` real faults, each seen by `1 + noise_per_fault` alert rules
    on the same GPU (XID, temperature, ECC ... like a failing GPU triggers), so the storm holds many
    duplicates and several distinct alerts per fault; then every alert resolves. `realtime=True` paces the
    feed at `rate`; otherwise it runs as fast as the ingestor allows and `alert_ingest_per_s` is that rate.
    `post` sends each body elsewhere instead (an HTTP client posting to `webhook_app`), to include the web
    server in the measurement; the ingestor passed is still the one behind it, whose counters are read.

    Returns `alert_ingest_per_s`, `alerts_sent`, `alerts_lost` (sent alerts that no counter accounts for),
    `incidents` (resources with firing signals at the peak: one per real fault) and `open_after_resolve`.
    """
    kinds = ["GpuXid", "GpuTempHigh", "GpuEccDbe", "GpuLost", "GpuRowRemapFailure", "GpuNvlinkErrors"]
    distinct: list[dict[str, Any]] = []
    for f in range(faults):
        for k in range(1 + noise_per_fault):
            labels = {
                "alertname": kinds[k % len(kinds)],
                "Hostname": f"node-{f * 7 % 1250}",
                "gpu": str(f % 8),
                "severity": "critical",
            }
            if k == 0:
                labels["xid"] = "79"
            distinct.append(
                {
                    "status": "firing",
                    "labels": labels,
                    "annotations": {"summary": "storm"},
                    "startsAt": "2025-01-01T00:00:00Z",
                    "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://127.0.0.1:9090/graph",
                    "fingerprint": hashlib.sha256(json.dumps(labels, sort_keys=True).encode()).hexdigest()[
                        :16
                    ],
                }
            )
    total = int(rate * seconds)
    bodies = []
    for start in range(0, total, batch):
        n = min(batch, total - start)
        bodies.append(
            (n, _storm_payload([distinct[(start + i) % len(distinct)] for i in range(n)], "firing"))
        )
    send = post or ingestor.ingest_bytes
    before = IngestCounts(**ingestor.counts.__dict__)
    sent = 0
    t0 = time.perf_counter()
    for n, body in bodies:
        if realtime:
            lag = sent / rate - (time.perf_counter() - t0)
            if lag > 0:
                time.sleep(lag)
        send(body)
        sent += n
    elapsed = time.perf_counter() - t0
    incidents = len(ingestor.groups())
    if resolve:
        resolved = [{**a, "status": "resolved", "endsAt": "2025-01-01T00:05:00Z"} for a in distinct]
        send(_storm_payload(resolved, "resolved"))
        sent += len(resolved)
    c = ingestor.counts
    accounted = sum(
        getattr(c, k) - getattr(before, k) for k in ("accepted", "duplicate", "resolved", "resolved_unknown")
    )
    return {
        "alert_ingest_per_s": round(total / elapsed, 1) if elapsed > 0 else float("inf"),
        "alerts_sent": float(sent),
        # an evicted alert or a dropped event was counted on arrival but is gone: it is lost all the same
        "alerts_lost": float(
            sent - accounted + (c.evicted - before.evicted) + (c.events_dropped - before.events_dropped)
        ),
        "incidents": float(incidents),
        "faults": float(faults),
        "open_after_resolve": float(len(ingestor.groups())),
        "seconds": round(elapsed, 3),
    }


def bench_alert_storm(rate: int = 1000, seconds: float = 30.0, faults: int = 5) -> dict[str, float]:
    """`opsmedic bench --only alerts`: `alert_storm` into a fresh ingestor, as flat figures."""
    r = alert_storm(AlertIngestor(), rate=rate, seconds=seconds, faults=faults)
    return {
        "alert_ingest_per_s": r["alert_ingest_per_s"],
        "alerts_lost": r["alerts_lost"],
        "alert_storm_alerts": r["alerts_sent"],
        "alert_storm_incidents": r["incidents"],
        "alert_storm_faults": r["faults"],
    }

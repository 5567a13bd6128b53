"""Server-side printing for the sandbox's Kubernetes API: `meta.k8s.io/v1` Table output.

Layer: sandbox (no imports of ours). `kubectl get` asks for `Accept: application/json;as=Table;v=v1;
g=meta.k8s.io` and prints the columns the server sends; without them `kubectl get nodes -o wide` showed only
NAME and AGE. Nodes and pods get the columns kube-apiserver's printers give them (the `priority: 1` ones are
what `-o wide` adds); any other kind gets Name and Age, as kube-apiserver's default table does. Each row
carries the object as `PartialObjectMetadata` (`includeObject=Metadata`, the default), the whole object
(`Object`) or nothing (`None`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

JSON = dict[str, Any]


def wants_table(accept: str) -> bool:
    """Whether the client asked for a Table first (kubectl lists JSON after it as a fallback)."""
    first = accept.split(",")[0].replace(" ", "")
    return "as=Table" in first and "g=meta.k8s.io" in first


def _col(name: str, kind: str = "string", *, fmt: str = "", priority: int = 0, desc: str = "") -> JSON:
    return {"name": name, "type": kind, "format": fmt, "description": desc or name, "priority": priority}


NODE_COLUMNS = [
    _col("Name", fmt="name"), _col("Status"), _col("Roles"), _col("Age"), _col("Version"),
    _col("Internal-IP", priority=1), _col("External-IP", priority=1), _col("OS-Image", priority=1),
    _col("Kernel-Version", priority=1), _col("Container-Runtime", priority=1),
]
POD_COLUMNS = [
    _col("Name", fmt="name"), _col("Ready"), _col("Status"), _col("Restarts", "string"), _col("Age"),
    _col("IP", priority=1), _col("Node", priority=1), _col("Nominated Node", priority=1),
    _col("Readiness Gates", priority=1),
]
EVENT_COLUMNS = [
    _col("Last Seen"), _col("Type"), _col("Reason"), _col("Object"), _col("Message"),
    _col("Source", priority=1), _col("First Seen", priority=1), _col("Count", "integer", priority=1),
    _col("Name", fmt="name", priority=1),
]
DEFAULT_COLUMNS = [_col("Name", fmt="name"), _col("Age")]


def _parse(ts: str | None) -> dt.datetime | None:
    if not ts:
        return None
    try:
        return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None


def human_age(since: str | None, now: dt.datetime) -> str:
    """kubectl's short ages: 42s, 5m12s, 3h, 2d5h, 400d."""
    t = _parse(since)
    if t is None:
        return "<unknown>"
    s = max(0, int((now - t).total_seconds()))
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 48:
        return f"{h}h"
    d = h // 24
    if d < 8 and h % 24:
        return f"{d}d{h % 24}h"
    return f"{d}d"


def _node_row(o: JSON, now: dt.datetime) -> list[Any]:
    meta, spec, st = o.get("metadata") or {}, o.get("spec") or {}, o.get("status") or {}
    ready = next((c for c in st.get("conditions") or [] if c.get("type") == "Ready"), None)
    status = "Ready" if ready is not None and ready.get("status") == "True" else "NotReady"
    if ready is None:
        status = "Unknown"
    if spec.get("unschedulable"):
        status += ",SchedulingDisabled"
    roles = sorted(k.split("/", 1)[1] for k in meta.get("labels") or {} if k.startswith("node-role.kubernetes.io/"))
    addresses = {a.get("type"): a.get("address") for a in st.get("addresses") or []}
    info = st.get("nodeInfo") or {}
    return [meta.get("name"), status, ",".join(roles) or "<none>", human_age(meta.get("creationTimestamp"), now),
            info.get("kubeletVersion", ""), addresses.get("InternalIP", "<none>"),
            addresses.get("ExternalIP", "<none>"), info.get("osImage", "<unknown>"),
            info.get("kernelVersion", "<unknown>"), info.get("containerRuntimeVersion", "<unknown>")]


def _pod_row(o: JSON, now: dt.datetime) -> list[Any]:
    meta, spec, st = o.get("metadata") or {}, o.get("spec") or {}, o.get("status") or {}
    statuses = st.get("containerStatuses") or []
    total = len(spec.get("containers") or [])
    ready = sum(1 for c in statuses if c.get("ready"))
    restarts = sum(int(c.get("restartCount") or 0) for c in statuses)
    reason = st.get("reason") or st.get("phase") or "Unknown"
    for c in statuses:  # what kubectl shows: the waiting or terminated reason of a container
        state = c.get("state") or {}
        if (state.get("waiting") or {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif (state.get("terminated") or {}).get("reason"):
            reason = state["terminated"]["reason"]
    if meta.get("deletionTimestamp"):
        reason = "Unknown" if st.get("reason") == "NodeLost" else "Terminating"
    last = next((c.get("lastState", {}).get("terminated") for c in statuses
                 if (c.get("lastState") or {}).get("terminated")), None)
    shown = str(restarts)
    if restarts and last and last.get("finishedAt"):
        shown += f" ({human_age(last['finishedAt'], now)} ago)"
    return [meta.get("name"), f"{ready}/{total}", reason, shown, human_age(meta.get("creationTimestamp"), now),
            st.get("podIP", "<none>"), spec.get("nodeName", "<none>"), st.get("nominatedNodeName", "<none>"),
            "<none>"]


def _event_row(o: JSON, now: dt.datetime) -> list[Any]:
    inv = o.get("involvedObject") or {}
    src = o.get("source") or {}
    last = o.get("lastTimestamp") or o.get("eventTime") or (o.get("metadata") or {}).get("creationTimestamp")
    return [human_age(last, now), o.get("type", ""), o.get("reason", ""),
            f"{str(inv.get('kind', '')).lower()}/{inv.get('name', '')}", o.get("message", ""),
            src.get("component") or o.get("reportingComponent", ""), human_age(o.get("firstTimestamp") or last, now),
            int(o.get("count") or 1), (o.get("metadata") or {}).get("name")]


def to_table(obj: JSON, *, now: dt.datetime, include: str = "Metadata") -> JSON:
    """A list (`...List`) or one object as a Table."""
    is_list = str(obj.get("kind", "")).endswith("List") and "items" in obj
    items: list[JSON] = list(obj.get("items") or []) if is_list else [obj]
    kind = str(obj.get("kind", ""))[:-4] if is_list else str(obj.get("kind", ""))
    api_version = str(obj.get("apiVersion", "v1"))
    if kind == "Node":
        columns, row = NODE_COLUMNS, _node_row
    elif kind == "Pod":
        columns, row = POD_COLUMNS, _pod_row
    elif kind == "Event" and api_version == "v1":
        columns, row = EVENT_COLUMNS, _event_row
    else:
        columns = DEFAULT_COLUMNS

        def row(o: JSON, now: dt.datetime) -> list[Any]:
            meta = o.get("metadata") or {}
            return [meta.get("name"), human_age(meta.get("creationTimestamp"), now)]

    rows = []
    for o in items:
        r: JSON = {"cells": row(o, now)}
        if include == "Object":
            r["object"] = {"kind": kind, "apiVersion": api_version, **o}
        elif include != "None":
            r["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                           "metadata": o.get("metadata") or {}}
        rows.append(r)
    meta = {"resourceVersion": (obj.get("metadata") or {}).get("resourceVersion", "")} if is_list else {}
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": columns,
            "rows": rows}

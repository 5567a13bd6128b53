"""Kubernetes API mechanics for the sandbox API: Status errors, patch formats, selectors, timestamps.

Layer: sandbox (imports only the standard library). These
are the parts of the API server's behaviour that do not depend on the simulated cluster, kept apart from
`sandbox.k8s_api` so that they can be read (and tested) against the Kubernetes documentation:

* `ApiError` carries a `meta/v1 Status` object with the code, reason and details the real API server
  sends, because the official client (and opsmedic's error translation) reads `reason` and `code`.
* `apply_patch` implements the three patch types the client sends: JSON Patch (RFC 6902), JSON Merge
  Patch (RFC 7386) and strategic merge patch for the lists that matter here (merge keys below).
* `match_labels` / `match_fields` evaluate label and field selectors in their equality-based forms.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from typing import Any

JSON = dict[str, Any]

# --------------------------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error answered as a `Status` object, exactly as kube-apiserver shapes it."""

    def __init__(self, code: int, reason: str, message: str, details: JSON | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> JSON:
        body: JSON = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _qualified(resource: str, group: str) -> str:
    return f"{resource}.{group}" if group else resource


def not_found(resource: str, name: str, group: str = "") -> ApiError:
    details: JSON = {"name": name, "kind": resource}
    if group:
        details["group"] = group
    return ApiError(404, "NotFound", f'{_qualified(resource, group)} "{name}" not found', details)


def already_exists(resource: str, name: str, group: str = "") -> ApiError:
    details: JSON = {"name": name, "kind": resource}
    if group:
        details["group"] = group
    return ApiError(409, "AlreadyExists", f'{_qualified(resource, group)} "{name}" already exists', details)


def conflict(resource: str, name: str, group: str = "", why: str | None = None) -> ApiError:
    details: JSON = {"name": name, "kind": resource}
    if group:
        details["group"] = group
    why = why or "the object has been modified; please apply your changes to the latest version and try again"
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_qualified(resource, group)} "{name}": {why}',
        details,
    )


def invalid(kind: str, group: str, name: str, causes: list[tuple[str, str]]) -> ApiError:
    """422 Invalid; `causes` are (field, message) pairs, e.g. ("spec.replicas", "Invalid value: -1: ...")."""
    gk = f"{kind}.{group}" if group else kind
    text = ", ".join(f"{f}: {m}" for f, m in causes)
    details: JSON = {
        "name": name,
        "kind": kind,
        "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes],
    }
    if group:
        details["group"] = group
    return ApiError(422, "Invalid", f'{gk} "{name}" is invalid: {text}', details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def route_not_found() -> ApiError:
    # What kube-apiserver answers for a path it does not serve (note: no details).
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


# ------------------------------------------------------------------------------------------ patches

# Strategic merge patch: lists merged by key rather than replaced (from the Kubernetes API types'
# `patchMergeKey` tags). Lists not named here (taints, tolerations, finalizers ...) are replaced whole,
# as the real server does for lists without a merge strategy.
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "conditions": "type",
    "ownerReferences": "uid",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
}

PATCH_TYPES = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
}


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out


def _strategic(target: Any, patch: Any, key: str | None = None) -> Any:
    if isinstance(patch, dict):
        if patch.get("$patch") == "delete":
            return None
        if patch.get("$patch") == "replace":
            return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
        out = dict(target) if isinstance(target, dict) else {}
        for k, v in patch.items():
            if k.startswith("$") or k.startswith("$setElementOrder/"):
                continue
            if v is None:
                out.pop(k, None)
            else:
                merged = _strategic(out.get(k), v, k)
                if merged is None:
                    out.pop(k, None)
                else:
                    out[k] = merged
        return out
    if isinstance(patch, list) and key in MERGE_KEYS and isinstance(target, list):
        mk = MERGE_KEYS[key]
        out_list = [copy.deepcopy(x) for x in target]
        for item in patch:
            if not isinstance(item, dict) or mk not in item:
                out_list.append(copy.deepcopy(item))
                continue
            idx = next(
                (i for i, x in enumerate(out_list) if isinstance(x, dict) and x.get(mk) == item[mk]), None
            )
            if item.get("$patch") == "delete":
                if idx is not None:
                    out_list.pop(idx)
            elif idx is None:
                out_list.append({k: v for k, v in item.items() if not k.startswith("$")})
            else:
                out_list[idx] = _strategic(out_list[idx], item)
        return out_list
    return copy.deepcopy(patch)


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _json_patch(doc: Any, ops: list[Any]) -> Any:
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise bad_request("the JSON patch must be a list of operations with `op` and `path`")
        parts = _pointer(str(op["path"]))
        if not parts:
            raise bad_request("replacing the whole object with a JSON patch is not supported")
        parent: Any = doc
        for p in parts[:-1]:
            try:
                parent = parent[int(p)] if isinstance(parent, list) else parent[p]
            except (KeyError, IndexError, ValueError):
                raise ApiError(422, "Invalid", f"doc is missing path: {op['path']}") from None
        last = parts[-1]
        kind = op["op"]
        if kind in ("add", "replace"):
            if isinstance(parent, list):
                if last == "-":
                    parent.append(op.get("value"))
                elif kind == "add":
                    parent.insert(int(last), op.get("value"))
                else:
                    parent[int(last)] = op.get("value")
            elif isinstance(parent, dict):
                if kind == "replace" and last not in parent:
                    raise ApiError(
                        422, "Invalid", f"replace operation does not apply: doc is missing key: {op['path']}"
                    )
                parent[last] = op.get("value")
        elif kind == "remove":
            try:
                if isinstance(parent, list):
                    parent.pop(int(last))
                else:
                    del parent[last]
            except (KeyError, IndexError, ValueError):
                raise ApiError(
                    422, "Invalid", f"remove operation does not apply: doc is missing path: {op['path']}"
                ) from None
        elif kind == "test":
            value = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if value != op.get("value"):
                raise ApiError(422, "Invalid", f"testing value {op['path']} failed")
        else:
            raise bad_request(f"unsupported JSON patch operation {kind!r}")
    return doc


def apply_patch(content_type: str, obj: JSON, patch: Any) -> JSON:
    """Apply a patch of the given Content-Type to a JSON object and return the new object."""
    kind = PATCH_TYPES.get(content_type.split(";")[0].strip().lower())
    if kind is None:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted "
            f"media types include: {', '.join(PATCH_TYPES)}",
        )
    if kind == "json":
        if not isinstance(patch, list):
            raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
        out = _json_patch(obj, patch)
    else:
        if not isinstance(patch, dict):
            raise bad_request("json: cannot unmarshal array into Go value of type map[string]interface {}")
        out = _merge(obj, patch) if kind == "merge" else _strategic(obj, patch)
    if not isinstance(out, dict):
        raise bad_request("the patch did not produce an object")
    return out


# ---------------------------------------------------------------------------------------- selectors

_SEL = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|!=|=)\s*([A-Za-z0-9_./:-]*)\s*$")
_EXISTS = re.compile(r"^\s*(!?)([A-Za-z0-9_./-]+)\s*$")
_SET = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(selector: str) -> list[str]:
    # Commas inside `in (a,b)` do not separate requirements.
    parts, depth, cur = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p for p in parts if p.strip()]


def match_labels(selector: str | None, labels: dict[str, str]) -> bool:
    """Equality-, set- and existence-based label selectors (`a=b,c!=d,e in (f,g),!h`)."""
    if not selector:
        return True
    for req in _split_selector(selector):
        if m := _SET.match(req):
            values = {v.strip() for v in m.group(3).split(",")}
            has = m.group(1) in labels and labels[m.group(1)] in values
            if has != (m.group(2) == "in"):
                return False
        elif m := _SEL.match(req):
            equal = labels.get(m.group(1)) == m.group(3)
            if equal != (m.group(2) != "!="):
                return False
        elif m := _EXISTS.match(req):
            if (m.group(2) in labels) == (m.group(1) == "!"):
                return False
        else:
            raise bad_request(f"unable to parse requirement: {req!r}")
    return True


def selector_from_match_labels(match: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(match.items()))


def match_fields(selector: str | None, fields: dict[str, str], kind: str) -> bool:
    """Field selectors: only `=`, `==` and `!=` on the fields a resource supports (else 400)."""
    if not selector:
        return True
    for req in _split_selector(selector):
        m = _SEL.match(req)
        if not m:
            raise bad_request(f"invalid selector: {req!r}; can't understand {req!r}")
        if m.group(1) not in fields:
            raise bad_request(f"field label not supported: {m.group(1)}")
        equal = fields[m.group(1)] == m.group(3)
        if equal != (m.group(2) != "!="):
            return False
    return True


# ------------------------------------------------------------------------------------------ time


def rfc3339(t: dt.datetime) -> str:
    """metav1.Time: seconds precision, UTC, `Z`."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(t: dt.datetime) -> str:
    """metav1.MicroTime: microsecond precision (leases, events)."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")


def parse_time(value: Any, field: str) -> dt.datetime:
    if not isinstance(value, str) or not _TIME.match(value):
        raise bad_request(f'parsing time "{value}" for {field}: not RFC 3339')
    text = value.replace("Z", "+00:00")
    if "." in text:
        head, rest = text.split(".", 1)
        digits = re.match(r"\d+", rest)
        assert digits is not None
        frac = digits.group(0)[:6].ljust(6, "0")
        text = f"{head}.{frac}{rest[len(digits.group(0)) :]}"
    return dt.datetime.fromisoformat(text)

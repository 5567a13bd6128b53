"""JSON hygiene for every body opsmedic accepts and every row it serves: strict parsing (UTF-8, no NaN or
Infinity, a depth limit, no lone surrogates or control characters) and a response that always renders.

Layer: infrastructure (above `core`; Starlette only). The daemon's edge (`opsmedic.daemon.edge`) refuses
bodies with `check_json`/`load_json`; the daemon's and the console's views answer with `SafeJSONResponse`,
which `sanitize`s a row stored before the edge refused such values instead of failing the whole view.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.responses import JSONResponse

MAX_JSON_DEPTH = 32
_ALLOWED_CONTROLS = frozenset("\t\n\r")


# ------------------------------------------------------------------------------------------ JSON


class JsonRefused(ValueError):
    """A JSON body refused at the edge; `where` names the place (`$.alerts[0].labels.node`)."""

    def __init__(self, what: str, where: str = "$") -> None:
        super().__init__(f"{what} at {where}")
        self.what = what
        self.where = where


def _no_constants(name: str) -> Any:
    raise JsonRefused(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


def bad_char(text: str) -> str | None:
    """Why `text` cannot be stored as it is (a lone surrogate, a control character), or None."""
    for ch in text:
        o = ord(ch)
        if 0xD800 <= o <= 0xDFFF:
            return f"lone surrogate U+{o:04X}"
        if (o < 0x20 and ch not in _ALLOWED_CONTROLS) or o == 0x7F:
            return f"control character U+{o:04X}"
    return None


def clean_text(text: str) -> tuple[str, bool]:
    """`text` with lone surrogates and control characters (but tab, newline, CR) replaced by U+FFFD."""
    if bad_char(text) is None:
        return text, False
    out = []
    for ch in text:
        o = ord(ch)
        if 0xD800 <= o <= 0xDFFF or (o < 0x20 and ch not in _ALLOWED_CONTROLS) or o == 0x7F:
            out.append("\ufffd")
        else:
            out.append(ch)
    return "".join(out), True


def load_json(body: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse a JSON body strictly: UTF-8, no NaN/Infinity, at most `max_depth` deep. Raises JsonRefused."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonRefused(f"not UTF-8 (byte {exc.start})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        value = json.loads(text, parse_constant=_no_constants)
    except JsonRefused:
        raise
    except RecursionError:
        raise JsonRefused(f"nested deeper than {max_depth} levels") from None
    except ValueError as exc:  # JSONDecodeError, and parse_constant's refusal wrapped by nothing else
        raise JsonRefused(f"not JSON: {exc}") from None
    _walk(value, max_depth)
    return value


def _walk(value: Any, max_depth: int) -> None:
    """Depth and value checks without recursion (a deep document must not exhaust our own stack)."""
    stack: list[tuple[Any, str, int]] = [(value, "$", 1)]
    while stack:
        v, where, depth = stack.pop()
        if isinstance(v, dict):
            if depth > max_depth:
                raise JsonRefused(f"nested deeper than {max_depth} levels", where)
            for k, item in v.items():
                why = bad_char(k)
                if why is not None:
                    raise JsonRefused(why + " in a key", where)
                stack.append((item, f"{where}.{k}" if len(where) < 200 else where, depth + 1))
        elif isinstance(v, list):
            if depth > max_depth:
                raise JsonRefused(f"nested deeper than {max_depth} levels", where)
            for i, item in enumerate(v):
                stack.append((item, f"{where}[{i}]" if len(where) < 200 else where, depth + 1))
        elif isinstance(v, str):
            why = bad_char(v)
            if why is not None:
                raise JsonRefused(why, where)
        elif isinstance(v, float) and not math.isfinite(v):  # 1e999 parses as inf
            raise JsonRefused("a number out of range (not finite)", where)


def check_json(body: bytes, *, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise JsonRefused unless `body` is empty or clean JSON (see `load_json`)."""
    if body.strip():
        load_json(body, max_depth=max_depth)


def slack_body_problem(body: bytes, content_type: str, *, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why a (signed) Slack body is not one Bolt should be handed, or None: Slack sends UTF-8 JSON (the
    Events API) or a form whose `payload` field is JSON (interactivity); anything else, however well
    signed, is refused with a 400 instead of surfacing as an exception inside Bolt."""
    from urllib.parse import parse_qs

    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8"
    try:
        if "json" in content_type.lower():
            load_json(body, max_depth=max_depth)
            return None
        form = parse_qs(text, keep_blank_values=True, max_num_fields=200)
        for raw in form.get("payload", []):
            load_json(raw.encode("utf-8", "surrogatepass"), max_depth=max_depth)
    except JsonRefused as exc:
        return f"payload: {exc}"
    except ValueError as exc:  # too many form fields
        return f"form: {exc}"
    return None


def sanitize(value: Any) -> tuple[Any, int]:
    """A copy of a parsed JSON value fit to store and serve: non-finite numbers -> None, bad characters ->
    U+FFFD. Returns (value, how many places changed). Used where a stored row is shown (views)."""
    changed = 0

    def go(v: Any) -> Any:
        nonlocal changed
        if isinstance(v, str):
            out, did = clean_text(v)
            changed += did
            return out
        if isinstance(v, float) and not math.isfinite(v):
            changed += 1
            return None
        if isinstance(v, dict):
            return {go(k) if isinstance(k, str) else k: go(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [go(x) for x in v]
        return v

    return go(value), changed


class SafeJSONResponse(JSONResponse):
    """JSON that always renders: a value that cannot be encoded (NaN, infinity, a lone surrogate in a row
    stored before the edge refused them) is replaced (null, U+FFFD) instead of failing the whole view."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except (ValueError, UnicodeEncodeError):
            clean, _ = sanitize(json.loads(json.dumps(content, default=str)))
            return super().render(clean)

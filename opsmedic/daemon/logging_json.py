"""Structured JSON logs for the daemon: one JSON object per line on stderr.

Layer: interfaces (`opsmedic.daemon`); standard library only. A daemon's logs are read by machines first
(Loki, Cloud Logging, `jq`), so every record is one line with a fixed set of keys — `ts`, `level`,
`logger`, `msg` — plus whatever the call passed in `extra=` (incident ids, request ids, durations), and
the traceback as a string. uvicorn's own loggers are routed through the same handler so that access logs
and errors are JSON too.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

# Attributes every LogRecord has; anything else on a record came from `extra=` and is worth emitting.
# (uvicorn adds `color_message`, an ANSI-coloured copy of the message: noise in JSON)
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {
    "message", "asctime", "taskName", "color_message"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line; values that JSON cannot hold are written with `str()`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


_HANDLER_NAME = "opsmedic-json"


def configure_logging(level: str | int = "INFO", stream: IO[str] | None = None) -> logging.Handler:
    """Install the JSON handler on the root logger (once; calling again only changes the level) and make
    uvicorn's loggers propagate to it instead of printing their own text lines."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if h.get_name() == _HANDLER_NAME), None)
    if handler is None:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(JsonFormatter())
        # other handlers (pytest's capture, a previous basicConfig) stay: we only add ours
        root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    # Libraries that log every HTTP call at INFO would drown the daemon's own lines.
    for name in ("httpx", "httpcore", "urllib3", "slack_sdk.web.base_client", "slack_bolt.App", "kubernetes"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler

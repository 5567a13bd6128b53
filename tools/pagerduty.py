"""Page a human through PagerDuty's Events API v2: trigger an alert when opsmedic escalates, resolve it when
the incident is over.

Layer: tools (action adapter). Imports `core.errors` and httpx/tenacity/pydantic only; the daemon's
notification backend (`opsmedic.daemon.world.NotifyBackend`) calls it for `escalate`.

The event is the documented Events API v2 alert event, validated here before it leaves (a request PagerDuty
would refuse with 400 is refused locally, with the same reason):

- `routing_key`: the integration key of an "Events API v2" integration, 32 characters;
- `event_action`: `trigger` | `acknowledge` | `resolve`;
- `dedup_key`: opsmedic's incident id (at most 255 characters), so that a retried trigger is one alert and
  the resolve closes the alert the trigger opened;
- `payload` (trigger only): `summary` (at most 1024 characters; longer text is cut, never refused),
  `source`, `severity` (`critical` | `error` | `warning` | `info`), `timestamp` (ISO 8601), `component`,
  `group`, `class` and `custom_details` (the incident's evidence).

Delivery: one POST per event with TLS verification on; 429 (rate limited), 5xx, timeouts and refused
connections are retried a bounded number of times with exponential backoff (tenacity), then raise
`TransientToolError`; 400 (invalid event) and any other 4xx raise `PermanentToolError` (retrying cannot help).
The routing key is a secret: it is never put in an error message or a log line.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from core.errors import ConfigError, PermanentToolError, ToolError, TransientToolError

DEFAULT_URL = "https://events.pagerduty.com/v2/enqueue"
ROUTING_KEY_CHARS = 32
SUMMARY_MAX = 1024
DEDUP_KEY_MAX = 255
Severity = Literal["critical", "error", "warning", "info"]
EventAction = Literal["trigger", "acknowledge", "resolve"]
SEVERITIES: tuple[str, ...] = ("critical", "error", "warning", "info")

# environment variables the daemon reads (secrets from the environment only)
ENV_ROUTING_KEY = "OPSMEDIC_PAGERDUTY_ROUTING_KEY"
ENV_URL = "OPSMEDIC_PAGERDUTY_URL"
ENV_SOURCE = "OPSMEDIC_PAGERDUTY_SOURCE"


class AlertPayload(BaseModel):
    """The `payload` of a trigger event."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    summary: str = Field(min_length=1, max_length=SUMMARY_MAX)
    source: str = Field(min_length=1, max_length=255)
    severity: Severity
    timestamp: str | None = None
    component: str | None = None
    group: str | None = None
    class_: str | None = Field(default=None, alias="class")
    custom_details: dict[str, Any] | None = None

    @field_validator("timestamp")
    @classmethod
    def _iso(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError("must be an ISO 8601 timestamp") from None
        return v


class AlertEvent(BaseModel):
    """One Events API v2 alert event (`POST /v2/enqueue`)."""

    model_config = ConfigDict(extra="forbid")

    routing_key: str = Field(min_length=ROUTING_KEY_CHARS, max_length=ROUTING_KEY_CHARS)
    event_action: EventAction
    dedup_key: str | None = Field(default=None, min_length=1, max_length=DEDUP_KEY_MAX)
    payload: AlertPayload | None = None
    client: str | None = None

    def check(self) -> AlertEvent:
        if self.event_action == "trigger" and self.payload is None:
            raise ValueError("a trigger event needs a payload")
        if self.event_action != "trigger" and not self.dedup_key:
            raise ValueError(f"an {self.event_action} event needs the dedup_key of the alert it refers to")
        return self


def cut(text: str, limit: int = SUMMARY_MAX) -> str:
    """`text` within `limit` characters (an ellipsis marks a cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class PagerDutyEvents:
    """A client for the Events API v2 (one `httpx.Client`, reused; `close()` releases it)."""

    def __init__(self, routing_key: str | SecretStr, *, url: str = DEFAULT_URL, source: str = "opsmedic",
                 timeout_s: float = 10.0, attempts: int = 4, backoff_s: float = 0.5, max_backoff_s: float = 8.0,
                 verify: bool | str | ssl.SSLContext = True) -> None:
        import httpx

        key = routing_key.get_secret_value() if isinstance(routing_key, SecretStr) else routing_key
        key = key.strip()
        if len(key) != ROUTING_KEY_CHARS:
            raise ConfigError(f"a PagerDuty routing (integration) key has {ROUTING_KEY_CHARS} characters, "
                              f"this one has {len(key)}", f"setting pagerduty routing key ({ENV_ROUTING_KEY})")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"must be an http(s) URL such as {DEFAULT_URL} (got {url!r})",
                              f"setting pagerduty url ({ENV_URL})")
        self._key = SecretStr(key)
        self.url = url
        self.source = source
        self.attempts = max(1, int(attempts))
        self.backoff_s = max(0.0, float(backoff_s))
        self.max_backoff_s = max_backoff_s
        self.sent = 0
        self.failures = 0
        # verify=True: the system's CA bundle (a path names another); never off for a real pager
        self._http = httpx.Client(timeout=timeout_s, verify=verify,
                                  headers={"Content-Type": "application/json", "User-Agent": "opsmedic"})

    # ------------------------------------------------------------------------------------------ events

    def trigger(self, *, dedup_key: str, summary: str, severity: str = "critical", source: str | None = None,
                custom_details: Mapping[str, Any] | None = None, component: str | None = None,
                group: str | None = None, class_: str | None = None, timestamp: datetime | None = None) -> str:
        """Open (or update) the alert `dedup_key`; returns the dedup key PagerDuty answered with."""
        if severity not in SEVERITIES:
            raise PermanentToolError(f"pagerduty: severity {severity!r} is not one of {', '.join(SEVERITIES)}")
        ts = (timestamp or datetime.now(UTC)).isoformat()
        payload = {"summary": cut(summary.strip() or dedup_key), "source": source or self.source,
                   "severity": severity, "timestamp": ts, "component": component, "group": group,
                   "class": class_, "custom_details": dict(custom_details) if custom_details else None}
        return self._event("trigger", dedup_key, {k: v for k, v in payload.items() if v is not None})

    def acknowledge(self, dedup_key: str) -> str:
        return self._event("acknowledge", dedup_key, None)

    def resolve(self, dedup_key: str) -> str:
        """Resolve the alert `dedup_key` (resolving one that is already resolved is a no-op for PagerDuty)."""
        return self._event("resolve", dedup_key, None)

    def close(self) -> None:
        self._http.close()

    # ---------------------------------------------------------------------------------------- delivery

    def _event(self, action: str, dedup_key: str, payload: dict[str, Any] | None) -> str:
        body: dict[str, Any] = {"routing_key": self._key.get_secret_value(), "event_action": action,
                                "dedup_key": dedup_key, "client": "opsmedic"}
        if payload is not None:
            body["payload"] = payload
        try:
            event = AlertEvent.model_validate(body).check()
        except (ValidationError, ValueError) as exc:
            raise PermanentToolError(f"pagerduty: refusing to send an invalid {action} event: "
                                     f"{_first_error(exc)}") from None
        answer = self._post(event.model_dump(mode="json", by_alias=True, exclude_none=True))
        return str(answer.get("dedup_key") or dedup_key)

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

        retrying = Retrying(stop=stop_after_attempt(self.attempts),
                            wait=wait_exponential(multiplier=self.backoff_s, max=self.max_backoff_s),
                            retry=retry_if_exception_type(TransientToolError), reraise=True)
        try:
            for attempt in retrying:
                with attempt:
                    return self._post_once(body)
        except ToolError:
            self.failures += 1
            raise
        raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover

    def _post_once(self, body: dict[str, Any]) -> dict[str, Any]:
        import httpx

        try:
            resp = self._http.post(self.url, json=body)
        except httpx.TimeoutException as exc:
            raise TransientToolError(f"pagerduty: {self.url} timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:  # refused, reset, DNS, TLS
            raise TransientToolError(f"pagerduty: cannot reach {self.url}: {type(exc).__name__}: {exc}") from None
        code = resp.status_code
        if code == 429:
            raise TransientToolError("pagerduty: rate limited (429); the event will be retried")
        if code >= 500:
            raise TransientToolError(f"pagerduty: server error {code}")
        if code not in (200, 201, 202):
            raise PermanentToolError(f"pagerduty: {body.get('event_action')} refused with {code}: "
                                     f"{_describe(resp)}")
        try:
            data = resp.json()
        except ValueError:
            data = {}
        self.sent += 1
        return data if isinstance(data, dict) else {}


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        e = exc.errors()[0]
        return f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
    return str(exc)


def _describe(resp: Any) -> str:
    """PagerDuty's own reason (`{"status": "invalid event", "errors": [...]}`), shortened."""
    try:
        data = resp.json()
    except ValueError:
        return str(resp.text)[:300]
    if isinstance(data, dict):
        errors = data.get("errors")
        head = str(data.get("message") or data.get("status") or "")
        if isinstance(errors, list) and errors:
            return f"{head}: {'; '.join(str(e) for e in errors)}"[:500]
        return head[:300]
    return str(data)[:300]


def pager_from_env(env: Mapping[str, str]) -> PagerDutyEvents | None:
    """The pager the environment configures: `OPSMEDIC_PAGERDUTY_ROUTING_KEY` (required to page at all),
    `OPSMEDIC_PAGERDUTY_URL` (default the public endpoint) and `OPSMEDIC_PAGERDUTY_SOURCE` (the alert's
    `source`, default `opsmedic`). None when no routing key is set."""
    key = env.get(ENV_ROUTING_KEY, "").strip()
    if not key:
        return None
    # bounded so that a pager that is down holds a graph step for seconds, not minutes (at most about
    # 3 x 5 s plus 1.5 s of backoff); the step is then retried from its checkpoint
    ca_bundle = env.get("OPSMEDIC_CA_BUNDLE", "").strip()
    verify: bool | ssl.SSLContext = True
    if ca_bundle:  # a private CA replaces the system's store; verification is never switched off
        try:
            verify = ssl.create_default_context(cafile=ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot read the CA bundle {ca_bundle}: {exc}",
                              "setting ca_bundle (OPSMEDIC_CA_BUNDLE)") from None
    return PagerDutyEvents(key, url=env.get(ENV_URL, "").strip() or DEFAULT_URL,
                           source=env.get(ENV_SOURCE, "").strip() or "opsmedic",
                           timeout_s=5.0, attempts=3, backoff_s=0.5, max_backoff_s=2.0, verify=verify)

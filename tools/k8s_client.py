"""The boundary between opsmedic and the official `kubernetes` client: configuration, retries, errors.

Layer: tools (imports `core.errors`; no sandbox). Every call that `tools.k8s_backend` makes goes
through `KubeCaller.call`, which

* retries transient failures only (HTTP 5xx and 429, connection errors, timeouts) with tenacity:
  bounded attempts, exponential backoff with jitter;
* translates `kubernetes.client.ApiException` and urllib3/socket errors into opsmedic's
  `TransientToolError` / `PermanentToolError` (subclasses here keep the HTTP status and `reason`
  so callers can branch on 404 or 409 without touching the third-party exception).

The client's own urllib3 retries are switched off (`retries=0` for status, connect and read) so that
there is exactly one retry policy, this one, and its attempts are countable in tests.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import tenacity
import urllib3
from kubernetes import client, config

from core.errors import PermanentToolError, TransientToolError

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT_STATUSES = {429, 500, 502, 503, 504}


class KubeTransientError(TransientToolError):
    """A Kubernetes call failed in a way worth retrying later (after our own retries ran out)."""

    def __init__(self, message: str, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class KubePermanentError(PermanentToolError):
    """A Kubernetes call failed for good: not found, forbidden, invalid, conflict."""

    def __init__(self, message: str, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter for transient errors."""

    attempts: int = 4
    initial_s: float = 0.2
    max_s: float = 5.0
    jitter_s: float = 0.2


def build_api_client(
    kubeconfig: str | Path | None = None, *, context: str | None = None, in_cluster: bool = False
) -> Any:
    """An `ApiClient` from a kubeconfig file (default: $KUBECONFIG / ~/.kube/config) or the in-cluster
    service account. Bad configuration is an opsmedic `PermanentToolError`."""
    cfg = client.Configuration()
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        else:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig) if kubeconfig else None, context=context, client_configuration=cfg
            )
    except (config.ConfigException, OSError, TypeError, ValueError) as exc:
        where = "in-cluster service account" if in_cluster else f"kubeconfig {kubeconfig or '(default)'}"
        raise PermanentToolError(f"cannot load the Kubernetes configuration from {where}: {exc}") from exc
    # One retry policy (ours): urllib3 must not retry behind tenacity's back.
    cfg.retries = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=3)
    return client.ApiClient(cfg)


def status_reason(exc: Any) -> tuple[str, str]:
    """(reason, message) from an ApiException's Status body, when it has one."""
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str) and body.startswith("{"):
        try:
            doc = json.loads(body)
            return str(doc.get("reason") or ""), str(doc.get("message") or "")
        except json.JSONDecodeError:
            pass
    return str(getattr(exc, "reason", "") or ""), str(body or getattr(exc, "reason", "") or "")


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, client.ApiException):
        return int(exc.status or 0) in TRANSIENT_STATUSES
    return isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def translate(exc: BaseException, what: str) -> TransientToolError | PermanentToolError:
    """Map a client-side exception to opsmedic's errors, keeping the HTTP status and reason."""
    if isinstance(exc, client.ApiException):
        status = int(exc.status or 0)
        reason, message = status_reason(exc)
        text = f"{what}: {status} {reason}: {message}".rstrip(": ")
        if status in TRANSIENT_STATUSES:
            return KubeTransientError(text, status, reason)
        return KubePermanentError(text, status, reason)
    if isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)):
        return KubeTransientError(f"{what}: cannot reach the Kubernetes API: {exc}")
    return KubePermanentError(f"{what}: {type(exc).__name__}: {exc}")


class KubeCaller:
    """Runs client calls under the retry policy and translates their failures."""

    def __init__(
        self, policy: RetryPolicy | None = None, *, sleep: Callable[[float], None] | None = None
    ) -> None:
        self.policy = policy or RetryPolicy()
        self._sleep = sleep
        self.attempts = 0  # calls made to the server, retries included (for tests and metrics)

    def call(self, what: str, fn: Callable[..., T], *args: Any, retry_429: bool = True, **kwargs: Any) -> T:
        """Call `fn(*args, **kwargs)`; `what` names the call in errors. With retry_429=False a 429 is
        returned at once (evictions: a PDB's 429 is handled by the caller's own deadline)."""
        p = self.policy

        def worth_retrying(exc: BaseException) -> bool:
            if not retry_429 and isinstance(exc, client.ApiException) and exc.status == 429:
                return False
            return _is_transient(exc)

        def attempt() -> T:
            self.attempts += 1
            return fn(*args, **kwargs)

        kw: dict[str, Any] = {}
        if self._sleep is not None:
            kw["sleep"] = self._sleep
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max(1, p.attempts)),
            # initial_s, 2x initial_s, 4x ... capped at max_s, plus up to jitter_s of random delay so that
            # many clients failing together do not retry in lockstep
            wait=tenacity.wait_exponential(multiplier=p.initial_s, max=p.max_s)
            + tenacity.wait_random(0, p.jitter_s),
            retry=tenacity.retry_if_exception(worth_retrying),
            reraise=True,
            before_sleep=lambda rs: log.debug(
                "retrying %s after %s", what, rs.outcome.exception() if rs.outcome else None
            ),
            **kw,
        )
        try:
            return retrying(attempt)
        except (client.ApiException, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
            raise translate(exc, what) from exc

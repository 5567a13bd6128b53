"""The ops console: the fleet, the incidents and the approvals at a glance, in a browser.

Layer: interfaces. Served by the daemon under `/console` (no build step: vanilla ES modules, CSS and the
vendored uPlot chart library under `static/`), with live updates over Server-Sent Events, token sign-in
for approvers (an `Authenticator` seam ready for OIDC) and double-submit CSRF protection on every action.

One seam with the daemon::

    from opsmedic.console import mount_console
    mount_console(app, service)   # app: the daemon's FastAPI app; service: its DaemonService

`service` may also be any `ConsoleSource` (see `opsmedic.console.source`) or a bare `IncidentDriver`.
Modules: `app` (routes, recorder, event stream), `views` (read models), `history` (metric ring buffer),
`auth` (sign-in, sessions, CSRF), `source` (the seam and its adapters); `opsmedic demo --console` is
`opsmedic.daemon.demo` (it builds the daemon, which mounts the console).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from opsmedic.console.app import Console
    from opsmedic.console.auth import Authenticator

__all__ = ["mount_console"]


def mount_console(app: FastAPI, service: Any, *, authenticator: Authenticator | None = None,
                  public_read: bool = True) -> Console:
    """Serve the console on `app` under `/console`, reading from `service` (the daemon's DaemonService, a
    `ConsoleSource`, or an IncidentDriver). Sign-in uses `OPSMEDIC_API_TOKENS` unless `authenticator` says
    otherwise; `public_read=False` makes every page and read need a signed-in user."""
    from opsmedic.console.app import mount

    return mount(app, service, authenticator=authenticator, public_read=public_read)

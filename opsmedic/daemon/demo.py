"""`opsmedic demo --console`: the daemon on a running sandbox scenario, with the console, until Ctrl-C.

Layer: interfaces (`opsmedic.daemon`; it lives here because the daemon imports the console, never the
reverse). Builds the daemon's `DaemonService` on a fresh sandbox world of the scenario (in real time x
`speed`), its FastAPI app with the console mounted, binds the socket (port 0 picks a free one) and prints
the console's URL. On a loopback address reads are public (only this machine can reach them); on any other
address the daemon's rule holds and the viewer signs in first. When `OPSMEDIC_API_TOKENS` is not set it
also prints a one-time sign-in token for the policy's on-call approver, so that the person watching can
approve the risky step in the browser. uvicorn handles Ctrl-C / SIGTERM and stops the service gracefully.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

DEMO_SPEED = 10.0


def demo_approver(settings: Any) -> str:
    """The first person (not the scenario approver) in the policy's approver groups: who signs in."""
    from policies.model import load_policy

    policy = load_policy(settings.policy_file)
    for members in policy.approvers.groups.values():
        for m in members:
            if m != "eval-approver":
                return str(m)
    return "demo-approver"


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def build_demo(scenario_path: str | Path | None, *, host: str = "127.0.0.1", port: int = 0,
               speed: float = DEMO_SPEED, settings: Any = None,
               tokens: dict[str, str] | None = None) -> tuple[Any, Any, dict[str, str]]:
    """(service, app, generated) for a fresh sandbox world of the scenario with the console mounted;
    `generated` holds the sign-in token made up for the on-call approver when no token was configured."""
    from core.settings import DaemonVariables, load_settings
    from opsmedic.console import mount_console
    from opsmedic.daemon.app import create_app
    from opsmedic.daemon.config import load_daemon_config
    from opsmedic.daemon.service import DaemonService

    settings = settings or load_settings()
    cli: dict[str, Any] = {"host": host, "port": port, "speed": speed, "fresh": True, "source": "sandbox",
                           "leader_election": False}
    # A demo on loopback reads without a token (only this machine can reach it); anywhere else the
    # daemon's rule holds: sign in (with the printed token) to see anything. OPSMEDIC_PUBLIC_READ overrides.
    variables: DaemonVariables = settings.daemon
    if variables.public_read is None:
        cli["public_read"] = is_loopback(host)
    if scenario_path is not None:
        cli["scenario"] = Path(scenario_path)
    config = load_daemon_config(cli, variables=variables)
    generated: dict[str, str] = {}
    if tokens is None and not config.api_tokens and variables.api_tokens is None:
        tokens = generated = {f"demo-{secrets.token_urlsafe(18)}": demo_approver(settings)}
    if tokens:
        config = config.model_copy(update={"api_tokens": dict(tokens)})
    service = DaemonService(config, settings)
    app = create_app(service)
    if getattr(app.state, "console", None) is None:  # the daemon may mount it itself
        mount_console(app, service)
    return service, app, generated


def run_demo_console(scenario_path: str | Path | None, host: str = "127.0.0.1", port: int = 0,
                     speed: float = DEMO_SPEED) -> None:
    """Serve the console on a running sandbox scenario until interrupted; prints the URL first."""
    import uvicorn

    from opsmedic.daemon.logging_json import configure_logging
    from opsmedic.daemon.server import bind

    configure_logging("WARNING")
    service, app, generated = build_demo(scenario_path, host=host, port=port, speed=speed)
    sock = bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in str(bound_host) else bound_host
    url = f"http://{shown}:{bound_port}/console"
    world = service.world.describe()
    print(f"opsmedic console: {url}", flush=True)
    print(f"  sandbox scenario {world.get('scenario')} at x{speed:g} speed (fresh world; Ctrl-C stops)", flush=True)
    if generated:
        for token, user in generated.items():
            print(f"  sign in as {user} (an approver in the policy) with the token: {token}", flush=True)
    else:
        print("  sign in with a token from OPSMEDIC_API_TOKENS to approve", flush=True)
    if service.config.public_read:
        print("  reads are open on this loopback address (OPSMEDIC_PUBLIC_READ=false to require sign-in)",
              flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=5, timeout_keep_alive=5))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once it has shut down
        pass
    finally:
        service.stop()  # idempotent: the app's lifespan normally stopped it already
    print("opsmedic console: stopped", flush=True)

"""Serving the daemon: JSON logging, the service, the app, and uvicorn with graceful SIGTERM handling.

Layer: interfaces (`opsmedic.daemon`). uvicorn owns the signals: on SIGTERM or SIGINT it stops accepting
connections, lets requests in flight finish (up to the shutdown timeout) and runs the app's lifespan
shutdown, which stops the service gracefully (see `opsmedic.daemon.service`). The sockets are bound here,
before uvicorn starts, so that `--port 0` can log the port it got. With `--alerts-port` one server serves
two sockets; the edge middleware routes by the local port (the alert route on the alert port only).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from core.errors import ConfigError
from opsmedic.daemon.config import DaemonConfig

log = logging.getLogger("opsmedic.daemon")


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", "setting port (--port)") from None
    sock.listen(2048)
    return sock


def serve(config: DaemonConfig) -> int:
    import uvicorn

    from opsmedic.daemon.app import create_app
    from opsmedic.daemon.logging_json import configure_logging
    from opsmedic.daemon.service import DaemonService

    configure_logging(config.log_level)
    service = DaemonService(config)  # a bad policy, scenario or database fails here, before serving
    app = create_app(service)
    sock = bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    sockets = [sock]
    alerts_port = None
    if config.alerts_port is not None:
        asock = bind(config.host, config.alerts_port)
        alerts_port = int(asock.getsockname()[1])
        app.state.alerts_port = alerts_port
        sockets.append(asock)
    log.info("listening", extra={"host": host, "port": port, "url": f"http://{host}:{port}",
                                 "docs": f"http://{host}:{port}/docs", "alerts_port": alerts_port,
                                 "alert_intake": "on" if config.alert_tokens else "off (no OPSMEDIC_ALERT_TOKENS)",
                                 "public_read": config.public_read})
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                                           timeout_graceful_shutdown=int(config.shutdown_timeout_s) or None,
                                           timeout_keep_alive=5))
    server.run(sockets=sockets)
    return 0 if server.started else 1


class ThreadedServer:
    """uvicorn serving `app` on 127.0.0.1 in a background thread (benchmarks and tests; no signal handlers,
    which only the main thread may install). `stop()` runs the app's lifespan shutdown."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, alerts_port: int | None = None) -> None:
        import uvicorn

        self._sock = bind(host, port)
        bound_host, bound_port = self._sock.getsockname()[:2]
        self.url = f"http://{bound_host}:{bound_port}"
        self._sockets = [self._sock]
        self.alerts_url: str | None = None
        if alerts_port is None:
            alerts_port = getattr(getattr(app, "state", None), "alerts_port", None)
        if alerts_port is not None:
            asock = bind(host, alerts_port)
            app.state.alerts_port = int(asock.getsockname()[1])
            self.alerts_url = f"http://{bound_host}:{app.state.alerts_port}"
            self._sockets.append(asock)
        self._server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on",
                                                     timeout_graceful_shutdown=5, timeout_keep_alive=5))
        self._thread: threading.Thread | None = None

    def start(self, timeout_s: float = 30.0) -> ThreadedServer:
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": self._sockets},
                                        name="opsmedic-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the daemon's HTTP server did not start (see the log)")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

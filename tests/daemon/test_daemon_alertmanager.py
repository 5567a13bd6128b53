"""A real Alertmanager (Debian's `prometheus-alertmanager`) configured from deploy/alertmanager/alertmanager.yml
sends an alert to the daemon's alert port with the bearer token read from a file, as the deploy example
says: the wiring documented for operators is the wiring that works."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from daemon_testkit import ALERT_TOKEN, wait_until

REPO = Path(__file__).resolve().parents[2]
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(ALERTMANAGER is None, reason="apt-get install prometheus-alertmanager")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(config: dict[str, Any]) -> str:
        n = len(procs)
        path = tmp_path / f"alertmanager-{n}.yml"
        path.write_text(yaml.safe_dump(config))
        port = _free_port()
        log_path = tmp_path / f"alertmanager-{n}.log"
        log = log_path.open("wb")
        assert ALERTMANAGER is not None
        procs.append(subprocess.Popen([ALERTMANAGER, f"--config.file={path}", f"--storage.path={tmp_path / f'am-{n}'}",
                                       f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                                      stdout=log, stderr=subprocess.STDOUT))
        log.close()
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            if procs[-1].poll() is not None:
                raise AssertionError(log_path.read_text()[-2000:])
            try:
                return httpx.get(url + "/-/ready", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 20.0, 0.1, what="Alertmanager to be ready")
        return url

    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def test_alertmanager_from_the_deploy_example_delivers_with_its_token(make_daemon: Any, alertmanager: Any,
                                                                      tmp_path: Path) -> None:
    d = make_daemon(alerts_port=0, speed=20.0)
    conf = yaml.safe_load((REPO / "deploy" / "alertmanager" / "alertmanager.yml").read_text())
    hook = next(r for r in conf["receivers"] if r["name"] == "opsmedic")["webhook_configs"][0]
    # the example as deployed, pointed at this daemon's alert port and a token file in this test's folder
    hook["url"] = f"{d._server.alerts_url}/alerts/alertmanager"
    token_file = tmp_path / "token"
    token_file.write_text(ALERT_TOKEN)
    hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
    conf["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    url = alertmanager(conf)
    alert = {"labels": {"alertname": "GpuXid", "Hostname": "node-3", "gpu": "5", "xid": "79", "severity": "critical"},
             "annotations": {"summary": "XID 79 on node-3 GPU 5"}}
    assert httpx.post(url + "/api/v2/alerts", json=[alert], timeout=5.0).status_code == 200
    wait_until(lambda: d.service.intake.counts()["stored"] >= 1, 30.0, what="the alert delivered with the token")
    wait_until(lambda: d.service.ingestor.stats()["accepted"] == 1, 10.0, what="the alert ingested")
    sig = d.service.ingestor.active_signals()[0]
    assert sig.resource == "node-3/gpu-5" and sig.kind == "gpu_xid"
    assert b'opsmedic_edge_refused_total{status="401"}' not in d.service.metrics.render()

    # the same configuration with a token the daemon does not know: refused, nothing stored
    token_file.write_text("not-the-alert-token-0123456789")
    conf["receivers"][-1]["webhook_configs"][0]["http_config"]["authorization"]["credentials_file"] = str(token_file)
    other = alertmanager(conf)
    alert["labels"]["gpu"] = "6"
    assert httpx.post(other + "/api/v2/alerts", json=[alert], timeout=5.0).status_code == 200
    wait_until(lambda: b'opsmedic_edge_refused_total{status="401"}' in d.service.metrics.render(), 30.0,
               what="the wrong token refused")
    assert d.service.intake.counts()["stored"] == 1

"""A real Prometheus server scrapes the running daemon and can query its metrics."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from .conftest import make_model, write_config

PROMETHEUS = shutil.which("prometheus")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())["data"]["result"]


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (.ci/install-system.sh installs it)")
def test_prometheus_scrapes_the_daemon(tmp_path: Path, line_factory) -> None:
    model = make_model(tmp_path / "m")
    cams = (f'[[cameras]]\nid = "cam1"\nmodel = "{model}"\n'
            'source = { type = "synthetic", fps = 20, width = 64, height = 64, defect_rate = 0.3 }\n')
    cfg = write_config(tmp_path / "c.toml", cams, publisher={"endpoint": f"ipc://{tmp_path}/pub.ipc",
                       "wait_for_subscribers": 1}, metrics={"port": 0})
    line = line_factory(cfg).start()
    target = f"127.0.0.1:{line.service.metrics_port}"
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n"
        f"scrape_configs:\n  - job_name: inspector\n    static_configs:\n      - targets: ['{target}']\n")
    port = free_port()
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        result: list[dict] = []
        end = time.monotonic() + 45
        while time.monotonic() < end:
            try:
                result = query(port, 'sum by (camera) (inspector_verdicts_total{camera="cam1"})')
            except OSError:
                result = []
            if result and float(result[0]["value"][1]) > 0:
                break
            time.sleep(0.5)
        assert result and float(result[0]["value"][1]) > 0, "Prometheus never saw a verdict"
        up = query(port, 'up{job="inspector"}')
        assert up and up[0]["value"][1] == "1"
        camera_up = query(port, 'inspector_camera_up{camera="cam1"}')
        assert camera_up and camera_up[0]["value"][1] == "1"
    finally:
        proc.terminate()
        proc.wait(10)
        line.stop()

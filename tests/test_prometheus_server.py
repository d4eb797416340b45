"""A real Prometheus (Debian's `prometheus`) scrapes a running demo-like daemon with the shipped scrape config and
alert rules; every dashboard query and every alert expression is evaluated through its HTTP API, and promtool lints
a real scrape of /metrics."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .conftest import REPO, Line, camera, sections, write_config
from .test_prometheus_rules import (
    CONFIG,
    REQUIRED_ALERTS,
    RULES,
    dashboard_queries,
    exported,
    fill_variables,
    metric_names,
)

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMETHEUS is None or PROMTOOL is None,
                                reason="prometheus is not installed (.ci/install-system.sh installs it)")

# Alert expressions that are false while the demo runs healthy, so they legitimately return nothing; for these
# the test checks that every metric selector inside them returns data instead (the expression is false, not
# broken). The demo's synthetic cameras include known defects and the demo model misses some of them, so
# KnownDefectAccepted really fires in the demo: it must return data.
QUIET_IN_DEMO = REQUIRED_ALERTS - {"KnownDefectAccepted"}
# Of those, the ones that may turn true on a machine too loaded to keep up with 2 x 10 fps: not asserted empty.
LOAD_DEPENDENT = {"LatencyNearDeadline", "FramesDropped", "FailSafeVerdicts", "VerdictsNotPublished"}
# Dashboard queries that return nothing in the demo: the reject archive is off, so its counters have no series
# yet (their families are checked in the scrape instead).
DASHBOARD_EMPTY_IN_DEMO = {"inspector_archive_saved_total", "inspector_archive_dropped_total"}

SCRAPE_S = 1  # scrape and rule evaluation interval of the test's Prometheus
# What Grafana sends at a 1 s scrape interval: $__rate_interval = max($__interval + scrape, 4 x scrape).
VARIABLES = {"__interval": "2s", "__rate_interval": "5s", "__range": "1m"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Prom:
    """A Prometheus server's HTTP API."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}/api/v1/"

    def get(self, path: str, **params: str) -> Any:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # a bad query: 400 with the parser's error
            body = json.loads(exc.read())
        assert body["status"] == "success", f"{path} {params}: {body.get('error')}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (a scalar query gives one sample)."""
        data = self.get("query", query=expr)
        return data["result"] if data["resultType"] == "vector" else [{"value": data["result"]}]


def poll(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Call check until it returns something truthy (or raises nothing, for an OSError while starting)."""
    end = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except OSError:
            result = None
        if result or time.monotonic() > end:
            assert result, f"timed out waiting for {what}"
            return result
        time.sleep(0.25)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prom, Line]]:
    """The demo model on two synthetic cameras (10 fps, some known defects), scraped by a real Prometheus that
    loads the shipped prometheus.yml (target and intervals adapted) and the shipped alert rules."""
    tmp = tmp_path_factory.mktemp("prom")
    model = REPO / "models" / "demo"
    cams = "".join(camera(f"cam{i}", model, f'{{ type = "synthetic", fps = 10, defect_rate = 0.2, seed = {i} }}')
                   for i in (1, 2))
    line = Line(write_config(tmp / "inspector.toml", cams, **sections(tmp))).start()
    text = CONFIG.read_text(encoding="utf-8")
    for old, new in (("scrape_interval: 5s", f"scrape_interval: {SCRAPE_S}s"),
                     ("evaluation_interval: 15s", f"evaluation_interval: {SCRAPE_S}s"),
                     ('"127.0.0.1:9108"', f'"127.0.0.1:{line.service.metrics_port}"'),
                     ('"127.0.0.1:9093"', f'"127.0.0.1:{free_port()}"')):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    (tmp / "prometheus.yml").write_text(text, encoding="utf-8")
    shutil.copy(RULES, tmp / RULES.name)
    port = free_port()
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prom = Prom(port)
    try:
        # Enough scrapes for the 5 s rate windows: six samples of a series that exists from start-up.
        poll("six scrapes", lambda: prom.query("count_over_time(inspector_uptime_seconds[1m]) >= 6"), timeout=30)
        yield prom, line
    finally:
        proc.terminate()
        proc.wait(10)
        line.stop()


def selectors(expr: str) -> list[str]:
    """The vector selectors of an expression (metric name and label matchers), without ranges or offsets."""
    return [m.group(0) for m in re.finditer(r"(?<![\w:\"])(?:inspector_\w+|up)(?![\w(])(?:\{[^}]*\})?", expr)]


def test_promtool_check_metrics_passes_on_a_real_scrape(demo: tuple[Prom, Line]) -> None:
    """`promtool check metrics` finds no problem in what the daemon serves on /metrics."""
    _, line = demo
    text = urllib.request.urlopen(f"http://127.0.0.1:{line.service.metrics_port}/metrics", timeout=5).read()
    assert b"inspector_score_threshold_ratio_bucket" in text
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, timeout=30, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_prometheus_loads_the_rules_and_evaluates_each_without_error(demo: tuple[Prom, Line]) -> None:
    """The shipped rules file, loaded by the real server through the shipped config, evaluates cleanly."""
    prom, _ = demo

    def evaluated() -> list[dict[str, Any]]:
        rules = [r for g in prom.get("rules")["groups"] for r in g["rules"]]
        return rules if rules and all(r["health"] != "unknown" for r in rules) else []

    rules = poll("every rule evaluated", evaluated)
    assert {r["name"] for r in rules} == REQUIRED_ALERTS
    for rule in rules:
        assert rule["health"] == "ok" and not rule.get("lastError"), (rule["name"], rule.get("lastError"))
    firing = {a["labels"]["alertname"] for a in prom.get("alerts")["alerts"]}
    assert firing <= {"KnownDefectAccepted"} | LOAD_DEPENDENT, firing


def test_every_alert_expression_evaluates(demo: tuple[Prom, Line]) -> None:
    """Each alert expression is valid PromQL on the real server; KnownDefectAccepted returns data (the demo
    model accepts some defects), the quiet ones return nothing while every selector in them returns data."""
    prom, _ = demo
    rules = {r["name"]: r["query"] for g in prom.get("rules")["groups"] for r in g["rules"]}
    assert set(rules) == REQUIRED_ALERTS
    for name, expr in rules.items():
        if name in QUIET_IN_DEMO:
            result = prom.query(expr)
        else:
            result = poll(f"{name} returning data", lambda e=expr: prom.query(e))
        if name in QUIET_IN_DEMO - LOAD_DEPENDENT:
            assert result == [], f"{name} is true in a healthy demo: {result}"
        if name in QUIET_IN_DEMO:
            for selector in selectors(expr):
                assert prom.query(selector), f"{name}: {selector} returns nothing"
        else:
            assert {s["metric"]["camera"] for s in result} <= {"cam1", "cam2"}


def test_every_dashboard_query_returns_data(demo: tuple[Prom, Line]) -> None:
    """Every dashboard query (panels and annotations, with $camera set from the camera variable's own query)
    is valid on the real server and returns data, except the archive's, whose metric families are exported."""
    prom, line = demo
    cameras = poll("camera label values",
                   lambda: prom.get("label/camera/values", **{"match[]": "inspector_frames_captured_total"}))
    assert sorted(cameras) == ["cam1", "cam2"]
    values = {**VARIABLES, "camera": "(" + "|".join(cameras) + ")"}  # how Grafana formats a multi-value variable
    queries = dashboard_queries()
    assert len(queries) > 30
    empty = []
    for where, expr in queries:
        filled = fill_variables(expr, values)
        if metric_names(filled) & DASHBOARD_EMPTY_IN_DEMO:
            assert prom.query(filled) == [], where
            empty.append(where)
            continue
        if "changes(inspector_model_loaded_timestamp_seconds" in filled:  # the annotation: no reload in the demo
            assert prom.query(filled) == [], where
            assert prom.query(filled.replace("> 0", ">= 0")), where
            continue
        poll(f"{where}: {filled}", lambda q=filled: prom.query(q), timeout=10)
    assert len(empty) == 2
    served = urllib.request.urlopen(f"http://127.0.0.1:{line.service.metrics_port}/metrics", timeout=5).read().decode()
    for name in DASHBOARD_EMPTY_IN_DEMO:
        assert f"# TYPE {name} counter" in served


def test_dashboard_queries_only_metrics_the_daemon_exports(demo: tuple[Prom, Line]) -> None:
    """Every metric a dashboard query names is one the real server scraped from the daemon (or `up`), apart from
    the archive counters, which the daemon registers but only fills once the archive is on."""
    prom, _ = demo
    scraped = set(prom.get("label/__name__/values"))
    used = set().union(*(metric_names(expr) for _, expr in dashboard_queries()))
    assert used - DASHBOARD_EMPTY_IN_DEMO <= scraped, sorted(used - DASHBOARD_EMPTY_IN_DEMO - scraped)
    assert used <= exported() | {"up"}

"""Monitoring files: the alert rules and Prometheus config pass the real promtool, the rules' unit
tests pass, and the Grafana dashboard only queries metrics the daemon exports.

promtool tests are skipped when promtool is not installed (`.ci/install-system.sh` installs it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from inspector.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "docs" / "prometheus"
RULES = PROM / "inspector-rules.yml"
RULES_TEST = PROM / "inspector-rules.test.yml"
CONFIG = PROM / "prometheus.yml"
DASHBOARD = ROOT / "docs" / "grafana" / "inspector-dashboard.json"
MONITORING = ROOT / "docs" / "monitoring.md"

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",), "info": ("_info",)}


def exported() -> set[str]:
    """Every series name the daemon's metrics object registers (the contract with dashboards and alerts)."""
    registry = CollectorRegistry()
    Metrics(registry)
    return {family.name + suffix for family in registry.collect() for suffix in SUFFIXES[family.type]}


def families() -> set[str]:
    """The metric families the daemon registers, without sample suffixes."""
    registry = CollectorRegistry()
    Metrics(registry)
    return {family.name for family in registry.collect()}


REQUIRED_ALERTS = {
    "InspectorDown",
    "CameraDown",
    "NoFramesCaptured",
    "LatencyNearDeadline",
    "FramesDropped",
    "FailSafeVerdicts",
    "VerdictsNotPublished",
    "RejectRateAboveUsual",
    "ScoreDriftTowardsThreshold",
    "ReloadFailed",
    "KnownDefectAccepted",
}

PROMQL_KEYWORDS = {
    "and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "inf", "nan",
}

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (run .ci/install-system.sh)")


def _promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd, timeout=60, check=False)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, keywords,
    label names, label values, durations or Grafana variables."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # string literals
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges and subqueries
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)  # label lists
    s = re.sub(r"\boffset\s+-?[\w$]+", " ", s)
    names = set()
    for match in re.finditer(r"(?<![\w$.:])([A-Za-z_:][\w:]*)(\s*\()?", s):
        name, is_call = match.group(1), match.group(2)
        if not is_call and name.lower() not in PROMQL_KEYWORDS:
            names.add(name)
    return names


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every query in the dashboard: panel targets, the camera variable, annotations."""
    dashboard = _dashboard()
    out = [(f"panel {p['title']!r} {t['refId']}", t["expr"])
           for p in _panels(dashboard["panels"]) for t in p.get("targets", []) if t.get("expr")]
    out += [(f"annotation {a['name']!r}", a["expr"]) for a in dashboard["annotations"]["list"] if a.get("expr")]
    return out


def fill_variables(expr: str, values: dict[str, str]) -> str:
    """Substitute Grafana's variables ($name and ${name}) the way Grafana does before sending a query."""
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    assert "$" not in expr, f"unhandled variable in {expr!r}"
    return expr


def alert_blocks() -> dict[str, str]:
    """Each alert's block of text in the rules file, by name."""
    parts = RULES.read_text(encoding="utf-8").split("      - alert: ")[1:]
    return {part.split("\n", 1)[0].strip(): part for part in parts}


def _rule_block(text: str, alert: str) -> tuple[int, int]:
    """Start and end offsets of one alert's `expr` in the rules file."""
    start = text.index(f"- alert: {alert}")
    expr = text.index("expr:", start)
    end = text.index("\n        labels:", expr)
    return expr, end


# --- promtool --------------------------------------------------------------------------------


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    """`promtool check rules` finds every required alert and no error."""
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(REQUIRED_ALERTS)} rules found" in result.stdout
    assert set(re.findall(r"- alert: (\w+)", RULES.read_text(encoding="utf-8"))) == REQUIRED_ALERTS


@needs_promtool
def test_promtool_accepts_the_example_config_and_its_rule_file() -> None:
    """`promtool check config` loads prometheus.yml and, through it, the rules file."""
    result = _promtool("check", "config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    assert "127.0.0.1:9108" in CONFIG.read_text(encoding="utf-8")


def test_every_alert_has_for_severity_camera_and_runbook() -> None:
    """Each alert says how long it must hold, how bad it is, what happened where, and what to do."""
    blocks = alert_blocks()
    assert set(blocks) == REQUIRED_ALERTS
    anchors = set(re.findall(r"^### (\w+)", MONITORING.read_text(encoding="utf-8"), re.M))
    for name, block in blocks.items():
        assert re.search(r"^        for: \d+[smh]$", block, re.M), f"{name}: no for:"
        assert re.search(r"^          severity: (critical|warning)$", block, re.M), f"{name}: no severity"
        for key in ("summary", "description", "runbook"):
            assert re.search(rf'^          {key}: ".+"$', block, re.M), f"{name}: no {key}"
        if "camera" in block.split("annotations:")[0]:
            assert "{{ $labels.camera }}" in block.split("summary:")[1].split("\n")[0], f"{name}: camera not in summary"
        assert f"docs/monitoring.md#{name.lower()})" in block, f"{name}: runbook does not point at docs/monitoring.md"
        assert name in anchors, f"{name} has no section in docs/monitoring.md"


@needs_promtool
def test_rule_unit_tests_pass() -> None:
    """`promtool test rules`: every alert is shown both firing and not firing, and all cases pass."""
    text = RULES_TEST.read_text(encoding="utf-8")
    for alert in REQUIRED_ALERTS:
        assert f"alertname: {alert}\n        exp_alerts:\n          - exp_labels:" in text, f"{alert} never fires"
        assert f"alertname: {alert}\n        exp_alerts: []" in text, f"{alert} is never shown quiet"
    result = _promtool("test", "rules", RULES_TEST.name, cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_known_defect_alert_catches_the_first_accepted_defect(tmp_path: Path) -> None:
    """A plain increase() misses the series' first sample; the unit tests notice when the rule
    is reduced to it, so they do test the `unless ... offset` clause."""
    text = RULES.read_text(encoding="utf-8")
    start, end = _rule_block(text, "KnownDefectAccepted")
    plain = 'expr: increase(inspector_known_parts_total{label="defect", verdict="accept"}[10m]) > 0'
    (tmp_path / RULES.name).write_text(text[:start] + plain + text[end:], encoding="utf-8")
    shutil.copy(RULES_TEST, tmp_path / RULES_TEST.name)
    result = _promtool("test", "rules", RULES_TEST.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "alertname: KnownDefectAccepted" in result.stdout + result.stderr
    assert 'camera="cam2"' in result.stdout + result.stderr


# --- metric names ----------------------------------------------------------------------------


def test_metric_name_parser_ignores_functions_labels_and_variables() -> None:
    """The parser the dashboard checks rely on finds exactly the selected metrics."""
    expr = (
        'histogram_quantile(0.99, sum by (camera, le) (rate(inspector_latency_seconds_bucket'
        '{camera=~"$camera", reason="up"}[$__rate_interval]))) / on (camera) group_left '
        "sum without (instance) (inspector_camera_up offset 5m) > 1e-3 and bool up"
    )
    assert metric_names(expr) == {"inspector_latency_seconds_bucket", "inspector_camera_up", "up"}


def test_rules_use_only_exported_metrics() -> None:
    """Every inspector_* name in the rules and their unit tests is one the daemon exports."""
    names = exported()
    for path in (RULES, RULES_TEST):
        used = set(re.findall(r"\binspector_[a-z_]+\b", path.read_text(encoding="utf-8")))
        assert used, path
        assert used <= names, f"{path.name}: {sorted(used - names)}"


def test_the_new_monitoring_metrics_are_exported() -> None:
    """The drift, threshold, deadline, model and reload metrics the dashboard and alerts rely on exist."""
    assert {"inspector_threshold", "inspector_reloads_total", "inspector_model_loaded_timestamp_seconds",
            "inspector_score_threshold_ratio_bucket", "inspector_calibration_score", "inspector_deadline_seconds",
            "inspector_model_info"} <= exported()


def test_camera_model_publishes_and_removes_calibration_quantiles() -> None:
    """Metrics.camera_model sets the threshold and the calibration quantiles, and removes quantiles that no
    longer apply (a reload to a model without calibration, or another reduction)."""
    registry = CollectorRegistry()
    m = Metrics(registry)
    m.camera_model("cam1", 0.02, {"0.5": 0.01, "0.99": 0.019, "0.9": 0.015})
    assert registry.get_sample_value("inspector_threshold", {"camera": "cam1"}) == 0.02
    assert registry.get_sample_value("inspector_calibration_score", {"camera": "cam1", "level": "0.5"}) == 0.01
    assert registry.get_sample_value("inspector_calibration_score", {"camera": "cam1", "level": "0.9"}) is None
    m.camera_model("cam1", 0.03, None)
    assert registry.get_sample_value("inspector_threshold", {"camera": "cam1"}) == 0.03
    assert registry.get_sample_value("inspector_calibration_score", {"camera": "cam1", "level": "0.5"}) is None
    m.model_loaded("demo", {"version": "abc"})
    assert registry.get_sample_value("inspector_model_info", {"model": "demo", "version": "abc"}) == 1
    assert registry.get_sample_value("inspector_model_loaded_timestamp_seconds", {"model": "demo"}) > 1.7e9
    assert registry.get_sample_value("inspector_reloads_total", {"result": "failed"}) == 0


# --- Grafana dashboard -----------------------------------------------------------------------


def test_dashboard_panels_have_titles_and_query_only_exported_metrics() -> None:
    """Each panel has a title, each non-row panel a query, every query selects exported metrics, and every
    metric family the daemon registers is on the dashboard somewhere."""
    queryable = exported() | {"up"}
    used: set[str] = set()
    for panel in _panels(_dashboard()["panels"]):
        assert str(panel.get("title", "")).strip(), f"panel {panel.get('id')} has no title"
        if panel["type"] != "row":
            assert any(t.get("expr") for t in panel.get("targets", [])), f"panel {panel['title']!r} has no query"
    for where, expr in dashboard_queries():
        names = metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        assert names <= queryable, f"{where}: unknown {sorted(names - queryable)} in {expr!r}"
        used |= names
    on_dashboard = {re.sub(r"_(total|bucket|sum|count|info)$", "", name) for name in used}
    assert families() <= on_dashboard, sorted(families() - on_dashboard)


def test_dashboard_has_the_panels_the_issue_asks_for() -> None:
    """Throughput, reject rate, fail-safes, drops, latency p50/p99, batch size and time, score distribution
    against the threshold and its ratio, cameras up, reconnects, buffer fill, model version and reloads."""
    exprs = "\n".join(expr for _, expr in dashboard_queries())
    for needle in ("rate(inspector_frames_captured_total", 'verdict="reject"',
                   'reason=~"not_inspected|deadline|error"', "inspector_frames_dropped_total",
                   "histogram_quantile(0.5, sum by (camera, le) (rate(inspector_latency",
                   "histogram_quantile(0.99, sum by (camera, le) (rate(inspector_latency",
                   "inspector_inference_batch_size_sum", "inspector_inference_seconds_bucket",
                   "histogram_quantile(0.5, sum by (camera, le) (rate(inspector_anomaly_score_bucket",
                   "histogram_quantile(0.99, sum by (camera, le) (rate(inspector_anomaly_score_bucket",
                   "inspector_threshold{", "inspector_score_threshold_ratio_bucket", "inspector_camera_up",
                   "inspector_camera_reconnects_total", "inspector_buffer_frames",
                   "max by (model, version) (inspector_model_info)",
                   "inspector_model_loaded_timestamp_seconds", "inspector_reloads_total", "inspector_deadline_seconds"):
        assert needle in exprs, needle


GRAFANA_VARIABLES = {"__rate_interval": "1m", "__range": "1h", "__interval": "15s", "camera": ".*"}


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every dashboard query, Grafana variables filled in, parses with Prometheus' own parser
    (checked as recording rules by `promtool check rules`)."""
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    queries = dashboard_queries()
    for i, (_, expr) in enumerate(queries):
        filled = fill_variables(expr, GRAFANA_VARIABLES)
        lines += [f"      - record: dashboard:query_{i}", f"        expr: {json.dumps(filled)}"]
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = _promtool("check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_dashboard_uses_the_prometheus_input_and_a_camera_variable() -> None:
    """Importable anywhere: one ${DS_PROMETHEUS} input used by every query, and a camera filter."""
    dashboard = _dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    camera = variables["camera"]
    assert camera["query"]["query"] == "label_values(inspector_frames_captured_total, camera)"
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
    for annotation in dashboard["annotations"]["list"]:
        if annotation.get("expr"):
            assert annotation["datasource"]["uid"] == "${DS_PROMETHEUS}", annotation["name"]
    ids = [panel["id"] for panel in _panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_dashboard_panels_do_not_overlap() -> None:
    """No two panels share a grid cell (Grafana would shove them around on load)."""
    taken: dict[tuple[int, int], str] = {}
    for panel in _panels(_dashboard()["panels"]):
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]

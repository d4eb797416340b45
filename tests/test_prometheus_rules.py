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

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "docs" / "prometheus"
RULES = PROM / "inspector-rules.yml"
RULES_TEST = PROM / "inspector-rules.test.yml"
CONFIG = PROM / "prometheus.yml"
DASHBOARD = ROOT / "docs" / "grafana" / "inspector-dashboard.json"

COUNTERS = {
    "inspector_frames_captured",
    "inspector_frames_dropped",
    "inspector_verdicts",
    "inspector_camera_reconnects",
    "inspector_known_parts",
    "inspector_publish_overflow",
}
HISTOGRAMS = {
    "inspector_inference_batch_size",
    "inspector_inference_seconds",
    "inspector_latency_seconds",
    "inspector_anomaly_score",
}
GAUGES = {"inspector_buffer_frames", "inspector_camera_up", "inspector_uptime_seconds"}
INFOS = {"inspector_model"}

# Every series name the daemon exposes (the contract with dashboards and alerts).
EXPORTED = (
    {f"{name}_total" for name in COUNTERS}
    | {f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
    | GAUGES
    | {f"{name}_info" for name in INFOS}
)
QUERYABLE = EXPORTED | {"up"}

REQUIRED_ALERTS = {
    "CameraDown",
    "NoFramesCaptured",
    "FailSafeVerdicts",
    "HighRejectRate",
    "LatencyP99High",
    "InspectorDown",
    "KnownDefectAccepted",
    "VerdictsNotPublished",
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


@needs_promtool
def test_rule_unit_tests_pass() -> None:
    """`promtool test rules`: CameraDown and KnownDefectAccepted (and others) fire when they should."""
    text = RULES_TEST.read_text(encoding="utf-8")
    for alert in ("CameraDown", "KnownDefectAccepted"):
        assert f"alertname: {alert}\n        exp_alerts:\n          - exp_labels:" in text
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
    for path in (RULES, RULES_TEST):
        used = set(re.findall(r"\binspector_[a-z_]+\b", path.read_text(encoding="utf-8")))
        assert used, path
        assert used <= EXPORTED, f"{path.name}: {sorted(used - EXPORTED)}"


def test_exported_names_match_the_metrics_module() -> None:
    """The names dashboards and alerts rely on are the ones inspector.metrics registers."""
    prometheus_client = pytest.importorskip("prometheus_client")
    metrics = pytest.importorskip("inspector.metrics")
    registry = prometheus_client.CollectorRegistry()
    metrics.Metrics(registry)
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "gauge": ("",),
        "info": ("_info",),
    }
    names = {family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]}
    assert names == EXPORTED


# --- Grafana dashboard -----------------------------------------------------------------------


def test_dashboard_panels_have_titles_and_query_only_exported_metrics() -> None:
    """Each panel has a title, each non-row panel a query, and every query selects known metrics."""
    dashboard = _dashboard()
    used: set[str] = set()
    for panel in _panels(dashboard["panels"]):
        assert str(panel.get("title", "")).strip(), f"panel {panel.get('id')} has no title"
        if panel["type"] == "row":
            continue
        exprs = [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
        assert exprs, f"panel {panel['title']!r} has no PromQL query"
        for expr in exprs:
            names = metric_names(expr)
            assert names, f"{panel['title']!r}: no metric found in {expr!r}"
            assert names <= QUERYABLE, f"{panel['title']!r}: unknown {sorted(names - QUERYABLE)} in {expr!r}"
            used |= names
    # Every metric family is on the dashboard somewhere.
    families = {re.sub(r"_(total|bucket|sum|count|info)$", "", name) for name in used}
    assert COUNTERS | HISTOGRAMS | GAUGES | INFOS <= families


GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s", "$camera": ".*"}


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every dashboard query, Grafana variables filled in, parses with Prometheus' own parser
    (checked as recording rules by `promtool check rules`)."""
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    count = 0
    for panel in _panels(_dashboard()["panels"]):
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if not expr:
                continue
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"{panel['title']!r}: unhandled variable in {expr!r}"
            count += 1
            lines += [f"      - record: dashboard:query_{count}", f"        expr: {json.dumps(expr)}"]
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = _promtool("check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_dashboard_uses_the_prometheus_input_and_a_camera_variable() -> None:
    """Importable anywhere: one ${DS_PROMETHEUS} input used by every query, and a camera filter."""
    dashboard = _dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    camera = variables["camera"]
    assert camera["query"]["query"] == "label_values(inspector_frames_captured_total, camera)"
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
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

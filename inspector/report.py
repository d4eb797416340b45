"""The evaluation report: OUT/report.json and a self-contained OUT/report.html (inline SVG charts and
base64 PNG pictures; no external files, scripts or fonts)."""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from . import evaluate
from .heatmap import heatmap, overlay  # noqa: F401  (overlay: used by `inspector score`)

_GOOD = "#2b7bb9"
_DEFECT = "#d7301f"


@dataclass
class Case:
    """One image shown in the grid: the model input, its reconstruction and error map."""

    title: str  # why it is shown, e.g. "highest-scoring good"
    name: str
    label: str
    score: float
    image: np.ndarray  # uint8 (H, W) or (H, W, 3)
    recon: np.ndarray  # uint8 like image
    error: np.ndarray  # float32 (H, W)


def write_report(out: Path, report: dict[str, Any], good: np.ndarray, defect: np.ndarray, threshold: float,
                 cases: Sequence[Case], vmax: float) -> tuple[Path, Path]:
    """Write report.json and report.html into `out` (created if needed); returns both paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out / "report.json", out / "report.html"
    json_path.write_text(json.dumps(_jsonable(report), indent=2) + "\n", encoding="utf-8")
    html_path.write_text(_html(report, good, defect, threshold, cases, vmax), encoding="utf-8")
    return json_path, html_path


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return "n/a" if not math.isfinite(x) else f"{x:.4g}"
    return html.escape(str(x))


def _png(image: np.ndarray, size: int = 160) -> str:
    h, w = image.shape[:2]
    scale = size / max(h, w)
    interp = cv2.INTER_NEAREST if scale >= 1 else cv2.INTER_AREA
    image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=interp)
    ok, buf = cv2.imencode(".png", image)
    if not ok:  # pragma: no cover - PNG encoding of uint8 images does not fail
        return ""
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _roc_svg(good: np.ndarray, defect: np.ndarray, auroc: float, size: int = 320) -> str:
    fpr, tpr, _ = evaluate.roc_curve(good, defect)
    m, p = 40, size - 60
    pts = " ".join(f"{m + x * p:.1f},{m + (1 - y) * p:.1f}" for x, y in zip(fpr, tpr, strict=True))
    ticks = "".join(
        f'<text x="{m + t * p:.0f}" y="{m + p + 16}" text-anchor="middle">{t:g}</text>'
        f'<text x="{m - 6}" y="{m + (1 - t) * p + 4:.0f}" text-anchor="end">{t:g}</text>'
        for t in (0, 0.5, 1)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" font-size="11" '
        f'font-family="sans-serif">'
        f'<rect x="{m}" y="{m}" width="{p}" height="{p}" fill="none" stroke="#999"/>'
        f'<line x1="{m}" y1="{m + p}" x2="{m + p}" y2="{m}" stroke="#bbb" stroke-dasharray="4 3"/>'
        f'<polyline points="{pts}" fill="none" stroke="{_DEFECT}" stroke-width="2"/>{ticks}'
        f'<text x="{m + p / 2}" y="{size - 8}" text-anchor="middle">false-reject rate (good rejected)</text>'
        f'<text x="12" y="{m + p / 2}" text-anchor="middle" transform="rotate(-90 12 {m + p / 2})">'
        f'detection rate (defects rejected)</text>'
        f'<text x="{m + p / 2}" y="{m - 12}" text-anchor="middle" font-weight="bold">ROC, AUROC {auroc:.3f}</text>'
        "</svg>"
    )


def _hist_svg(good: np.ndarray, defect: np.ndarray, threshold: float, width: int = 560, height: int = 320) -> str:
    scores = np.concatenate([good, defect, [threshold]])
    log = bool(scores.min() > 0 and scores.max() / scores.min() > 20)
    f = np.log10 if log else (lambda v: np.asarray(v, dtype=np.float64))
    lo, hi = float(f(scores.min())), float(f(scores.max()))
    hi = hi if hi > lo else lo + 1.0
    edges = np.linspace(lo, hi, 41)
    m, pw, ph = 48, width - 68, height - 80
    hg = np.histogram(f(good), edges)[0] / max(len(good), 1)
    hd = np.histogram(f(defect), edges)[0] / max(len(defect), 1)
    top = max(float(hg.max(initial=0)), float(hd.max(initial=0)), 1e-9)
    bw = pw / (len(edges) - 1)
    bars = []
    for counts, colour in ((hg, _GOOD), (hd, _DEFECT)):
        for i, c in enumerate(counts):
            if c > 0:
                bh = c / top * ph
                bars.append(f'<rect x="{m + i * bw:.1f}" y="{m + ph - bh:.1f}" width="{bw:.1f}" height="{bh:.1f}" '
                            f'fill="{colour}" fill-opacity="0.55"/>')
    tx = m + (float(f(threshold)) - lo) / (hi - lo) * pw
    ticks = "".join(
        f'<text x="{m + k * pw / 4:.0f}" y="{m + ph + 16}" text-anchor="middle">'
        f'{(10 ** (lo + k * (hi - lo) / 4)) if log else (lo + k * (hi - lo) / 4):.3g}</text>'
        for k in range(5)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11" '
        f'font-family="sans-serif">'
        f'<rect x="{m}" y="{m}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>{"".join(bars)}'
        f'<line x1="{tx:.1f}" y1="{m - 6}" x2="{tx:.1f}" y2="{m + ph}" stroke="#000" stroke-width="2" '
        f'stroke-dasharray="6 3"/>'
        f'<text x="{tx:.1f}" y="{m - 10}" text-anchor="middle">threshold {threshold:.4g}</text>{ticks}'
        f'<text x="{m + pw / 2}" y="{height - 10}" text-anchor="middle">score{" (log scale)" if log else ""}</text>'
        f'<rect x="{m + 8}" y="{m + 8}" width="10" height="10" fill="{_GOOD}" fill-opacity="0.55"/>'
        f'<text x="{m + 22}" y="{m + 17}">good ({len(good)})</text>'
        f'<rect x="{m + 8}" y="{m + 24}" width="10" height="10" fill="{_DEFECT}" fill-opacity="0.55"/>'
        f'<text x="{m + 22}" y="{m + 33}">defect ({len(defect)})</text>'
        "</svg>"
    )


def _grid(cases: Sequence[Case], threshold: float, vmax: float) -> str:
    rows = []
    for c in cases:
        verdict = "reject" if c.score >= threshold else "accept"
        right = (verdict == "reject") == (c.label == "defect")
        rows.append(
            f'<tr><td class="cap"><b>{html.escape(c.title)}</b><br>{html.escape(c.name)}<br>{c.label}, '
            f'score {c.score:.4g}<br><span class="{"ok" if right else "bad"}">{verdict}</span></td>'
            f'<td><img src="{_png(c.image)}"></td><td><img src="{_png(c.recon)}"></td>'
            f'<td><img src="{_png(heatmap(c.error, vmax))}"></td></tr>'
        )
    return ('<table class="grid"><tr><th></th><th>original (model input)</th><th>reconstruction</th>'
            f'<th>error (red = {vmax:.3g} or more)</th></tr>{"".join(rows)}</table>')


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in rows) + "</table>"


def _html(report: dict[str, Any], good: np.ndarray, defect: np.ndarray, threshold: float,
          cases: Sequence[Case], vmax: float) -> str:
    met = report["metrics"]
    at = met.get("at_threshold", {})
    model = report.get("model", {})
    rows = [
        ("model", model.get("path", "")), ("score reduction", model.get("reduction", "")),
        ("good images", met["n_good"]), ("defect images", met["n_defect"]),
        ("AUROC", met["auroc"]), ("average precision", met["average_precision"]),
        ("best F1", met["best_f1"]), ("best-F1 threshold", met["best_f1_threshold"]),
        *[(f"miss rate at {float(k):.0%} false rejects", v) for k, v in met["miss_rate_at_false_reject"].items()],
        ("model threshold", threshold), ("threshold method", model.get("threshold_method", "")),
        ("false-reject rate at threshold", at.get("false_reject_rate", float("nan"))),
        ("miss rate at threshold", at.get("miss_rate", float("nan"))),
    ]
    cm = (
        "<table><tr><th></th><th>accepted</th><th>rejected</th></tr>"
        f"<tr><th>good</th><td>{at.get('true_accept', '')}</td><td>{at.get('false_reject', '')}</td></tr>"
        f"<tr><th>defect</th><td>{at.get('miss', '')}</td><td>{at.get('true_reject', '')}</td></tr></table>"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>inspector evaluation: {html.escape(str(model.get("name", "")))}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
table.grid td {{ padding: 2px; }} td.cap {{ font-size: 12px; width: 14em; }}
.ok {{ color: #1a7f37; }} .bad {{ color: #c00; font-weight: bold; }}
</style></head><body>
<h1>inspector evaluation</h1>
<p>Created {html.escape(str(report.get("created_at", "")))} by inspector {html.escape(str(report.get("inspector_version", "")))}.
A defect is a positive; a score at or above the threshold is a reject.</p>
{_table(rows)}
<h2>Confusion matrix at the model's threshold</h2>
{cm}
<h2>Curves</h2>
{_roc_svg(good, defect, met["auroc"])}
{_hist_svg(good, defect, threshold)}
<h2>Best and worst cases</h2>
{_grid(cases, threshold, vmax)}
</body></html>
"""

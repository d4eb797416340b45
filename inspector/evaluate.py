"""Image-level detection metrics on good and defect scores. Pure numpy.

Conventions: a defect is a positive; a score at or above the threshold is a reject (as in
`inspector.scoring.is_anomalous`). A false reject is a good part rejected; a miss is a defect accepted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Confusion:
    """Counts at one threshold, and the rates derived from them."""

    threshold: float
    true_reject: int  # defects rejected (true positives)
    miss: int  # defects accepted (false negatives)
    false_reject: int  # good parts rejected (false positives)
    true_accept: int  # good parts accepted (true negatives)

    @property
    def false_reject_rate(self) -> float:
        """Share of good parts rejected (nan without good parts)."""
        n = self.false_reject + self.true_accept
        return self.false_reject / n if n else float("nan")

    @property
    def miss_rate(self) -> float:
        """Share of defects accepted (nan without defects)."""
        n = self.true_reject + self.miss
        return self.miss / n if n else float("nan")

    def as_dict(self) -> dict[str, Any]:
        """Counts and rates as a JSON-ready dict."""
        d: dict[str, Any] = asdict(self)
        d.update(false_reject_rate=self.false_reject_rate, miss_rate=self.miss_rate)
        return d


def _check(good: np.ndarray, defect: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    good = np.asarray(good, dtype=np.float64).ravel()
    defect = np.asarray(defect, dtype=np.float64).ravel()
    if good.size == 0 or defect.size == 0:
        raise ValueError("need at least one good and one defect score")
    if not (np.isfinite(good).all() and np.isfinite(defect).all()):
        raise ValueError("scores must be finite")
    return good, defect


def _counts(good: np.ndarray, defect: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct thresholds (descending) and, at each, defects and goods scoring at or above it."""
    scores = np.concatenate([defect, good])
    labels = np.concatenate([np.ones(defect.size), np.zeros(good.size)])
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]  # last index of each tie group
    tp = np.cumsum(labels)[last]
    fp = (last + 1) - tp
    return scores[last], tp, fp


def roc_curve(good: np.ndarray, defect: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve: false-reject rate, detection rate and thresholds, from (0, 0) at threshold +inf."""
    good, defect = _check(good, defect)
    thresholds, tp, fp = _counts(good, defect)
    fpr = np.r_[0.0, fp / good.size]
    tpr = np.r_[0.0, tp / defect.size]
    return fpr, tpr, np.r_[np.inf, thresholds]


def auroc(good: np.ndarray, defect: np.ndarray) -> float:
    """Area under the ROC curve; tied scores count half (the Mann-Whitney statistic)."""
    fpr, tpr, _ = roc_curve(good, defect)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def precision_recall_curve(good: np.ndarray, defect: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at each distinct threshold, thresholds descending."""
    good, defect = _check(good, defect)
    thresholds, tp, fp = _counts(good, defect)
    return tp / (tp + fp), tp / defect.size, thresholds


def average_precision(good: np.ndarray, defect: np.ndarray) -> float:
    """Average precision as scikit-learn defines it: sum over thresholds of (R_n - R_{n-1}) * P_n."""
    precision, recall, _ = precision_recall_curve(good, defect)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_f1(good: np.ndarray, defect: np.ndarray) -> tuple[float, float]:
    """Highest F1 over all thresholds, and a threshold that gives it.

    The threshold is placed midway between the lowest rejected score and the next lower score (the
    same split, with margin on both sides); on equal F1 the higher threshold wins.
    """
    good, defect = _check(good, defect)
    thresholds, tp, fp = _counts(good, defect)
    f1 = 2 * tp / (2 * tp + fp + (defect.size - tp))
    i = int(np.argmax(f1))
    below = thresholds[i + 1] if i + 1 < thresholds.size else None
    threshold = thresholds[i] if below is None else (thresholds[i] + below) / 2.0
    if below is not None and not threshold > below:  # adjacent floats: keep the split exact
        threshold = thresholds[i]
    return float(f1[i]), float(threshold)


def confusion(good: np.ndarray, defect: np.ndarray, threshold: float) -> Confusion:
    """Confusion counts when scores at or above `threshold` are rejected (either side may be empty)."""
    good = np.asarray(good, dtype=np.float64).ravel()
    defect = np.asarray(defect, dtype=np.float64).ravel()
    tr = int(np.count_nonzero(defect >= threshold))
    fr = int(np.count_nonzero(good >= threshold))
    return Confusion(threshold=float(threshold), true_reject=tr, miss=defect.size - tr, false_reject=fr,
                     true_accept=good.size - fr)


def miss_rate_at_false_reject(good: np.ndarray, defect: np.ndarray, rate: float) -> tuple[float, float]:
    """Lowest miss rate whose false-reject rate is at most `rate` (read off the ROC), and its threshold."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"false-reject rate must be in [0, 1], got {rate}")
    fpr, tpr, thresholds = roc_curve(good, defect)
    ok = np.flatnonzero(fpr <= rate + 1e-12)
    i = ok[np.argmax(tpr[ok])]
    return float(1.0 - tpr[i]), float(thresholds[i])


def summarize(good: np.ndarray, defect: np.ndarray, threshold: float | None,
              false_reject_rates: tuple[float, ...] = (0.01, 0.05)) -> dict[str, Any]:
    """All image-level metrics as a JSON-ready dict (threshold-dependent ones only when one is given)."""
    good, defect = _check(good, defect)
    f1, f1_threshold = best_f1(good, defect)
    out: dict[str, Any] = {
        "n_good": int(good.size),
        "n_defect": int(defect.size),
        "auroc": auroc(good, defect),
        "average_precision": average_precision(good, defect),
        "best_f1": f1,
        "best_f1_threshold": f1_threshold,
        "miss_rate_at_false_reject": {
            f"{r:g}": miss_rate_at_false_reject(good, defect, r)[0] for r in false_reject_rates
        },
    }
    if threshold is not None:
        c = confusion(good, defect, threshold)
        out["at_threshold"] = c.as_dict()
        out["f1_at_threshold"] = 2 * c.true_reject / max(2 * c.true_reject + c.false_reject + c.miss, 1)
    return out

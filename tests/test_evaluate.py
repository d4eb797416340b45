"""Image-level metrics: checked against scikit-learn on fixed inputs and against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score, roc_curve

from inspector import evaluate


def _sk(good: np.ndarray, defect: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.r_[np.zeros(len(good)), np.ones(len(defect))]
    return y, np.r_[good, defect]


CASES = {
    "separated": (np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.6])),
    "overlap": (np.array([0.1, 0.4, 0.35, 0.8]), np.array([0.3, 0.5, 0.9, 0.2])),
    "ties": (np.array([1.0, 2.0, 2.0, 3.0, 3.0]), np.array([2.0, 3.0, 3.0, 4.0])),
    "all_tied": (np.array([5.0, 5.0, 5.0]), np.array([5.0, 5.0])),
    "inverted": (np.array([0.9, 0.8]), np.array([0.1, 0.2, 0.3])),
    "random": (np.random.default_rng(1).normal(0, 1, 200).round(1), np.random.default_rng(2).normal(1, 1, 60).round(1)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_auroc_matches_sklearn(name: str) -> None:
    """AUROC equals scikit-learn's roc_auc_score, ties included."""
    good, defect = CASES[name]
    y, s = _sk(good, defect)
    assert evaluate.auroc(good, defect) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_average_precision_matches_sklearn(name: str) -> None:
    """Average precision equals scikit-learn's average_precision_score, ties included."""
    good, defect = CASES[name]
    y, s = _sk(good, defect)
    assert evaluate.average_precision(good, defect) == pytest.approx(average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_roc_curve_matches_sklearn(name: str) -> None:
    """The ROC points equal scikit-learn's roc_curve without dropping intermediate points."""
    good, defect = CASES[name]
    y, s = _sk(good, defect)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    ours = evaluate.roc_curve(good, defect)
    np.testing.assert_allclose(ours[0], fpr)
    np.testing.assert_allclose(ours[1], tpr)
    np.testing.assert_allclose(ours[2][1:], thr[1:])


@pytest.mark.parametrize("name", list(CASES))
def test_best_f1_is_the_maximum_over_thresholds(name: str) -> None:
    """best_f1 gives the highest F1 that any threshold reaches, and its threshold reproduces it."""
    good, defect = CASES[name]
    y, s = _sk(good, defect)
    brute = max(f1_score(y, s >= t, zero_division=0.0) for t in np.unique(s))
    f1, threshold = evaluate.best_f1(good, defect)
    assert f1 == pytest.approx(brute, abs=1e-12)
    assert f1_score(y, s >= threshold, zero_division=0.0) == pytest.approx(f1, abs=1e-12)


def test_hand_computed_ties() -> None:
    """good [1, 2, 2], defect [2, 3]: AUROC, AP and best F1 counted by hand; ties count half."""
    good, defect = np.array([1.0, 2.0, 2.0]), np.array([2.0, 3.0])
    # 6 pairs: defect 3 beats all 3 goods, defect 2 beats 1 and ties 2 twice -> (4 + 2 / 2) / 6.
    assert evaluate.auroc(good, defect) == pytest.approx(5 / 6)
    # thresholds 3: P=1/1, R=1/2; 2: P=2/4, R=2/2 -> AP = 0.5*1 + 0.5*0.5 = 0.75
    assert evaluate.average_precision(good, defect) == pytest.approx(0.75)
    # F1 at 3: 2*1/(2+0+1)=2/3; at 2: 2*2/(4+2+0)=2/3 -> tie, the higher threshold wins: between 2 and 3.
    f1, threshold = evaluate.best_f1(good, defect)
    assert f1 == pytest.approx(2 / 3)
    assert threshold == pytest.approx(2.5)


def test_perfect_and_inverted_separation() -> None:
    """Fully separated scores give AUROC 1 and AP 1; inverted ones AUROC 0."""
    good, defect = np.array([0.1, 0.2]), np.array([0.3, 0.4])
    assert evaluate.auroc(good, defect) == 1.0
    assert evaluate.average_precision(good, defect) == 1.0
    assert evaluate.auroc(defect, good) == 0.0
    f1, threshold = evaluate.best_f1(good, defect)
    assert f1 == 1.0 and 0.2 < threshold <= 0.3


def test_confusion_at_threshold() -> None:
    """Scores at the threshold are rejects; rates are shares of each class."""
    good = np.array([0.1, 0.2, 0.5, 0.9])
    defect = np.array([0.4, 0.5, 0.8])
    c = evaluate.confusion(good, defect, 0.5)
    assert (c.true_reject, c.miss, c.false_reject, c.true_accept) == (2, 1, 2, 2)
    assert c.false_reject_rate == 0.5
    assert c.miss_rate == pytest.approx(1 / 3)
    d = c.as_dict()
    assert d["miss_rate"] == pytest.approx(1 / 3) and d["threshold"] == 0.5
    assert math.isnan(evaluate.confusion(good, np.array([]), 0.5).miss_rate)


def test_miss_rate_at_false_reject() -> None:
    """The lowest miss rate whose false-reject rate stays within the limit, read off the ROC."""
    good = np.arange(100, dtype=float)  # 0..99
    defect = np.array([50.0, 98.5, 99.5, 120.0])
    # 1% false rejects allows one good (99) rejected: threshold 98.5 catches three defects -> miss 1/4.
    miss, threshold = evaluate.miss_rate_at_false_reject(good, defect, 0.01)
    assert miss == pytest.approx(0.25) and threshold == 98.5
    # 0% false rejects: only scores above 99 rejected -> two defects caught, miss 2/4.
    assert evaluate.miss_rate_at_false_reject(good, defect, 0.0) == (pytest.approx(0.5), 99.5)
    # 50%: threshold 50 rejects goods 50..99 and every defect.
    assert evaluate.miss_rate_at_false_reject(good, defect, 0.5)[0] == 0.0


def test_summarize_and_bad_input() -> None:
    """summarize bundles the metrics; empty classes and non-finite scores are refused with ValueError."""
    good, defect = CASES["overlap"]
    s = evaluate.summarize(good, defect, threshold=0.45)
    assert s["n_good"] == 4 and s["n_defect"] == 4
    assert s["at_threshold"]["false_reject"] == 1 and s["at_threshold"]["miss"] == 2
    assert set(s["miss_rate_at_false_reject"]) == {"0.01", "0.05"}
    with pytest.raises(ValueError):
        evaluate.auroc(np.array([]), np.array([1.0]))
    with pytest.raises(ValueError):
        evaluate.average_precision(np.array([np.nan]), np.array([1.0]))

"""Threshold selection from scores, and the good-score statistics stored with the threshold. Pure numpy.

A score at or above the threshold is a reject. Every method returns an `artifact.ThresholdSpec`: the
value, the method's name and the details needed to judge it later.
"""

from __future__ import annotations

import math

import numpy as np

from . import evaluate
from .artifact import CalibrationStats, ThresholdSpec

QUANTILE_LEVELS = (0.5, 0.9, 0.95, 0.99, 0.999)
MIN_TWO_MODES = 10  # fewest scores two_modes will split
HELD_OUT_CHECK = 0.05  # all_good_quantile raises the pooled threshold until its test's p is at least this


def _scores(scores: np.ndarray, what: str = "scores") -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError(f"no {what} to calibrate on")
    if not np.isfinite(s).all():
        raise ValueError(f"{what} must be finite")
    return s


def _check_rate(rate: float) -> float:
    try:
        value = float(rate)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 < value < 1.0:
        raise ValueError(f"target false-reject rate must be between 0 and 1 (exclusive), got {rate!r}")
    return value


def _above(value: float) -> float:
    """A threshold just above `value` that stays above it in float32 (scores are float32 on the device)."""
    step = max(abs(value) * 1e-6, 1e-12)
    return float(value + step)


def good_quantile(scores: np.ndarray, target_false_reject: float) -> ThresholdSpec:
    """Threshold that rejects at most floor(rate * n) of the n good scores.

    It lies midway between the highest accepted and the lowest rejected good score. When n * rate < 1
    no good score may be rejected and the threshold is set just above the largest one; the rate to
    expect on new parts is then about 1 / (n + 1), which the details record.
    """
    rate = _check_rate(target_false_reject)
    s = np.sort(_scores(scores, "good scores"))
    n = s.size
    allowed = int(math.floor(rate * n + 1e-9))
    values = np.unique(s)
    rejected = n - np.searchsorted(s, values, side="left")  # good scores >= each distinct value
    ok = np.flatnonzero(rejected <= allowed)
    if ok.size == 0:
        value = _above(float(s[-1]))
    else:
        j = int(ok[0])
        value = float(values[0]) if j == 0 else float((values[j - 1] + values[j]) / 2.0)
        if j > 0 and not value > values[j - 1]:
            value = float(values[j])
    fr = int(np.count_nonzero(s >= value))
    details: dict[str, object] = {
        "target_false_reject": rate,
        "n_good": n,
        "allowed_rejects": allowed,
        "false_reject_rate_on_calibration": fr / n,
        "expected_false_reject_rate": (fr + 1) / (n + 1),
    }
    if allowed == 0:
        details["note"] = (
            f"{n} good images cannot show a false-reject rate of {rate:g} (that needs at least "
            f"{math.ceil(1 / rate)}); the threshold is just above the largest good score"
        )
    return ThresholdSpec(value=value, method="good_quantile", details=details)


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): how likely k or more rejects among n good parts at a reject rate p."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def all_good_quantile(held_out: np.ndarray, trained: np.ndarray, target_false_reject: float,
                      check: float = HELD_OUT_CHECK) -> tuple[ThresholdSpec, np.ndarray]:
    """`good_quantile` over every good image of a training run, the held-out and the trained-on ones together,
    raised where the held-out ones say that it is too low for new parts.

    With the usual 10 % held out, a 1 % threshold from the held-out images alone rests on their one or two
    highest scores, so the false-reject rate it gives on new parts varies a lot from one training to the next
    (docs/quality.md, row 99). The trained-on images are ten times as many. They are only fit to join as far as
    the model scores them as it scores new ones, so the held-out images check the joint threshold: if it rejects
    more of them than the target rate makes likely (a one-sided binomial test at level `check`), it is raised just
    far enough for the check to pass, rather than left to the loudest held-out image: one loud good image there
    let most defects through (rows 138 and 140). Returns the threshold and the scores it was set on."""
    rate = _check_rate(target_false_reject)
    held, seen = _scores(held_out, "held-out good scores"), np.asarray(trained, dtype=np.float64).ravel()
    if seen.size == 0:
        spec = good_quantile(held, rate)
        spec.details["calibrated_on"] = f"{held.size} held-out training images"
        return spec, held
    seen = _scores(seen, "trained-on good scores")
    both = np.concatenate([held, seen])
    spec = good_quantile(both, rate)
    pooled = spec.value
    value, rejects = pooled, int(np.count_nonzero(held >= pooled))
    refused = rejects  # the pool's own held-out rejects, for the note
    for score in np.unique(held[held >= pooled]):  # ascending: each step lets one more held-out image pass
        if binomial_tail(rejects, held.size, rate) >= check:
            break
        value = _above(float(score))
        rejects = int(np.count_nonzero(held >= value))
    p = binomial_tail(rejects, held.size, rate)
    calibrated_on = f"{both.size} good training images ({seen.size} trained on, {held.size} held out)"
    check_details = {"held_out_rejects": rejects, "held_out_count": int(held.size), "held_out_check_p": p,
                     "held_out_check_level": check}
    if value == pooled:
        spec.details.update(check_details, calibrated_on=calibrated_on)
        return spec, both
    details: dict[str, object] = {
        "target_false_reject": rate, "n_good": int(both.size),
        "false_reject_rate_on_calibration": int(np.count_nonzero(both >= value)) / both.size,
        **check_details, "pooled_threshold": pooled,
        "calibrated_on": f"{calibrated_on}, raised until the held-out check passed",
        "note": (f"the threshold of all {both.size} good images ({pooled:.6g}) rejected {refused} of the {held.size} "
                 f"held-out ones, more than a false-reject rate of {rate:g} makes likely (their tail is heavier than "
                 f"the pool's), so it was raised to the lowest value that rejects few enough of them ({rejects}, "
                 f"p = {p:.2g})"),
    }
    return ThresholdSpec(value=value, method="good_quantile", details=details), both


def to_median(scores: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, float]:
    """`scores` moved by one constant so that their median is that of `reference`, and the constant added.

    For scores of another kind than the reference's whose spread is alike but whose level is not: a bank model's
    trained-on images, each scored with its own patches left out of the bank, read a little higher than new images
    (the coreset had placed no other vector where its own ones were), so their tail is used at the held-out
    images' level (docs/quality.md, row 135)."""
    s, ref = _scores(scores), _scores(reference, "reference scores")
    shift = float(np.median(ref) - np.median(s))
    return s + shift, shift


def left_out_pool(held_out: np.ndarray, left_out: np.ndarray, target_false_reject: float,
                  check: float = HELD_OUT_CHECK) -> tuple[ThresholdSpec, np.ndarray]:
    """The threshold of the held-out scores pooled with `left_out` scores of another kind (a bank model's trained-on
    images, each scored without its own patches), those moved to the held-out median (`to_median`), checked and,
    where the held-out ones refuse it, raised as `all_good_quantile` does (docs/quality.md, rows 135 and 138).
    Returns the threshold and the scores it was set on."""
    held = _scores(held_out, "held-out good scores")
    seen, shift = to_median(left_out, held)
    spec, calibrated = all_good_quantile(held, seen, target_false_reject, check)
    spec.details["trained_on_scored"] = (f"each without its own patches in the bank, moved by {shift:+.4g} to the "
                                         "held-out images' median")
    return spec, calibrated


def best_f1(good: np.ndarray, defect: np.ndarray) -> ThresholdSpec:
    """Threshold that maximises F1 on labelled good and defect scores."""
    g, d = _scores(good, "good scores"), _scores(defect, "defect scores")
    f1, value = evaluate.best_f1(g, d)
    c = evaluate.confusion(g, d, value)
    return ThresholdSpec(value=value, method="best_f1", details={
        "f1": f1, "n_good": int(g.size), "n_defect": int(d.size),
        "false_reject_rate": c.false_reject_rate, "miss_rate": c.miss_rate,
    })


def target_false_reject(good: np.ndarray, defect: np.ndarray, rate: float) -> ThresholdSpec:
    """Threshold that meets a false-reject rate on the good scores, with the miss rate it gives on the defects."""
    g, d = _scores(good, "good scores"), _scores(defect, "defect scores")
    spec = good_quantile(g, rate)
    c = evaluate.confusion(g, d, spec.value)
    details = dict(spec.details, n_defect=int(d.size), miss_rate=c.miss_rate)
    return ThresholdSpec(value=spec.value, method="target_false_reject", details=details)


def two_modes(scores: np.ndarray) -> ThresholdSpec:
    """Threshold between the two modes of unlabelled scores: mostly good parts and a few defects.

    Fits a two-component Gaussian mixture to the log scores by EM, started from a robust fit of the
    main mode (median, MAD) and the scores far above it, and puts the threshold where the upper
    component becomes the more likely one. The threshold never falls below median + 2 robust standard
    deviations of the main mode, so a weak or missing second mode cannot reject a large share of good
    parts. (Otsu's method, the classic choice, splits the main mode in two when defects are a few
    percent, so it is not used.) `details.separated` is false when the modes overlap (Ashman's D < 2).
    """
    s = _scores(scores)
    if s.size < MIN_TWO_MODES:
        raise ValueError(f"two_modes needs at least {MIN_TWO_MODES} scores, got {s.size}")
    positive = s[s > 0]
    floor = float(positive.min()) / 2 if positive.size else 1e-12
    x = np.log(np.maximum(s, floor))
    med = float(np.median(x))
    sig = 1.4826 * float(np.median(np.abs(x - med)))
    if sig <= 0:
        sig = float(x.std())
    if sig <= 0:
        raise ValueError("all scores are equal: there are no modes to split")
    w, m, v = _em(x, med, sig)
    t_log = _crossing(w, m, v)
    guard = med + 2.0 * sig
    t_log = max(t_log, guard) if math.isfinite(t_log) else float(x.max()) + 1e-6
    value = float(np.exp(t_log))
    value = max(value, _above(float(s.max()))) if t_log > x.max() else value
    d = abs(m[1] - m[0]) * math.sqrt(2.0 / (v[0] + v[1]))
    n_above = int(np.count_nonzero(s >= value))
    return ThresholdSpec(value=value, method="two_modes", details={
        "n": int(s.size), "n_rejected": n_above, "rejected_share": n_above / s.size,
        "space": "log score",
        "main_mode": {"weight": float(w[0]), "mean": float(m[0]), "std": float(math.sqrt(v[0]))},
        "upper_mode": {"weight": float(w[1]), "mean": float(m[1]), "std": float(math.sqrt(v[1]))},
        "ashman_d": d, "separated": bool(d >= 2.0 and n_above > 0),
        "guard": float(np.exp(guard)),
    })


def _em(x: np.ndarray, med: float, sig: float, iters: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-Gaussian EM on 1-D data; component 0 is the main (lower) mode."""
    tail = x > med + 3.0 * sig
    if not tail.any():
        tail = x >= np.quantile(x, 0.95)
    if tail.all():
        tail = x > med
    floor = (0.05 * sig) ** 2
    w = np.array([1.0 - tail.mean(), tail.mean()])
    m = np.array([x[~tail].mean(), x[tail].mean()])
    v = np.maximum(np.array([x[~tail].var(), x[tail].var() if tail.sum() > 1 else sig**2]), floor)
    prev = -np.inf
    for _ in range(iters):
        logp = (np.log(w)[:, None] - 0.5 * np.log(2 * np.pi * v)[:, None]
                - (x[None] - m[:, None]) ** 2 / (2 * v[:, None]))
        top = logp.max(axis=0)
        ll = top + np.log(np.exp(logp - top).sum(axis=0))
        r = np.exp(logp - ll)
        nk = np.maximum(r.sum(axis=1), 1e-9)
        w = nk / x.size
        m = (r * x[None]).sum(axis=1) / nk
        v = np.maximum((r * (x[None] - m[:, None]) ** 2).sum(axis=1) / nk, floor)
        total = float(ll.sum())
        if total - prev < 1e-9 * abs(total) + 1e-12:
            break
        prev = total
    order = np.argsort(m)
    return w[order], m[order], v[order]


def _crossing(w: np.ndarray, m: np.ndarray, v: np.ndarray) -> float:
    """First point above the main mode's mean where the upper component is at least as likely; inf if none."""
    def upper_wins(t: np.ndarray) -> np.ndarray:
        lp = np.log(w)[:, None] - 0.5 * np.log(v)[:, None] - (t[None] - m[:, None]) ** 2 / (2 * v[:, None])
        return lp[1] >= lp[0]

    grid = np.linspace(m[0], m[1] + 4.0 * math.sqrt(v[1]), 4001)
    wins = np.flatnonzero(upper_wins(grid))
    if wins.size == 0:
        return math.inf
    i = int(wins[0])
    if i == 0:
        return float(grid[0])
    lo, hi = float(grid[i - 1]), float(grid[i])
    for _ in range(50):
        mid = (lo + hi) / 2
        if upper_wins(np.array([mid]))[0]:
            hi = mid
        else:
            lo = mid
    return hi


def good_stats(scores: np.ndarray) -> CalibrationStats:
    """Mean, std, min, max and quantiles of the good scores."""
    s = _scores(scores, "good scores")
    return CalibrationStats(
        count=int(s.size), mean=float(s.mean()), std=float(s.std()), min=float(s.min()), max=float(s.max()),
        quantiles={f"{q:g}": float(np.quantile(s, q)) for q in QUANTILE_LEVELS},
    )

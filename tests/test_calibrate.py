"""Threshold selection: good quantile, best F1, target false-reject rate, two modes, and the good-score stats."""

from __future__ import annotations

import math
from fractions import Fraction
from statistics import NormalDist

import numpy as np
import pytest

from inspector import calibrate


def test_good_quantile_rejects_at_most_the_target_share() -> None:
    """200 distinct good scores at 1%: two may be rejected; the threshold lies between the 2nd and 3rd highest."""
    scores = np.arange(1, 201, dtype=float)  # 1..200
    spec = calibrate.good_quantile(scores, 0.01)
    assert spec.method == "good_quantile"
    assert spec.value == pytest.approx(198.5)
    assert np.count_nonzero(scores >= spec.value) == 2
    assert spec.details["allowed_rejects"] == 2
    assert spec.details["false_reject_rate_on_calibration"] == pytest.approx(0.01)


def test_good_quantile_with_ties_never_rejects_more_than_allowed() -> None:
    """Tied scores move the threshold above the tie rather than over-reject."""
    scores = np.array([1.0] * 10 + [5.0] * 5)  # 15 scores, 10% allows 1 reject, but five tie at the top
    spec = calibrate.good_quantile(scores, 0.1)
    assert np.count_nonzero(scores >= spec.value) == 0
    assert spec.value > 5.0


def test_good_quantile_with_too_few_images_sits_above_the_maximum() -> None:
    """Fewer than 1/rate images: nothing may be rejected, the note says so, and float32 scores agree."""
    scores = np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32)
    spec = calibrate.good_quantile(scores, 0.01)
    assert spec.value > 0.4
    assert np.count_nonzero(scores >= np.float32(spec.value)) == 0
    assert "note" in spec.details and spec.details["expected_false_reject_rate"] == pytest.approx(1 / 5)


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, 1.5, float("nan"), "x"])
def test_rate_out_of_range_is_refused(rate: object) -> None:
    """The target false-reject rate must lie strictly between 0 and 1."""
    with pytest.raises(ValueError, match="between 0 and 1"):
        calibrate.good_quantile(np.array([1.0, 2.0]), rate)  # type: ignore[arg-type]


def test_empty_or_non_finite_scores_are_refused() -> None:
    """No scores, or NaN scores, give a ValueError naming the problem."""
    with pytest.raises(ValueError, match="no good scores"):
        calibrate.good_quantile(np.array([]), 0.01)
    with pytest.raises(ValueError, match="finite"):
        calibrate.good_stats(np.array([1.0, np.inf]))


def test_best_f1_separates_labelled_scores() -> None:
    """Separable good and defect scores: F1 1, threshold between the classes, details recorded."""
    good = np.array([0.1, 0.2, 0.25, 0.3])
    defect = np.array([0.6, 0.7])
    spec = calibrate.best_f1(good, defect)
    assert spec.method == "best_f1"
    assert 0.3 < spec.value <= 0.6
    assert spec.details["f1"] == 1.0 and spec.details["miss_rate"] == 0.0 and spec.details["false_reject_rate"] == 0.0


def test_target_false_reject_uses_the_good_scores_and_reports_misses() -> None:
    """The threshold comes from the good scores alone; the details give the miss rate it costs."""
    good = np.arange(1, 101, dtype=float)  # 1..100; 1% allows one reject -> threshold 99.5
    defect = np.array([50.0, 99.7, 150.0, 200.0])
    spec = calibrate.target_false_reject(good, defect, 0.01)
    assert spec.method == "target_false_reject"
    assert spec.value == pytest.approx(99.5)
    assert spec.details["miss_rate"] == pytest.approx(0.25)
    assert spec.value == calibrate.good_quantile(good, 0.01).value


def _mixture(n_good: int, n_defect: int, gap: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.lognormal(-5.0, 0.25, n_good), rng.lognormal(-5.0 + gap, 0.3, n_defect)


@pytest.mark.parametrize("n_defect", [3, 6, 15])
def test_two_modes_splits_a_few_defects_from_many_good(n_defect: int) -> None:
    """Unlabelled scores, mostly good with a few clear defects: the split rejects the defects, few goods."""
    good, defect = _mixture(300, n_defect, 1.5, seed=n_defect)
    spec = calibrate.two_modes(np.r_[good, defect])
    assert spec.method == "two_modes"
    assert np.mean(good >= spec.value) <= 0.02
    assert np.mean(defect >= spec.value) >= 0.8
    assert spec.details["separated"] is True and spec.details["ashman_d"] >= 2


def test_two_modes_without_defects_rejects_only_the_tail() -> None:
    """A single mode: the guard keeps the threshold in the upper tail (no half-split as Otsu would do)."""
    good, _ = _mixture(400, 0, 0.0, seed=7)
    spec = calibrate.two_modes(good)
    assert np.mean(good >= spec.value) <= 0.05


def test_two_modes_refuses_too_few_or_equal_scores() -> None:
    """Fewer than ten scores, or all equal, cannot be split."""
    with pytest.raises(ValueError, match="at least"):
        calibrate.two_modes(np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="equal"):
        calibrate.two_modes(np.full(20, 0.5))


def test_good_stats() -> None:
    """Mean, std, min, max and the documented quantile levels."""
    scores = np.arange(1, 1001, dtype=float)
    stats = calibrate.good_stats(scores)
    assert stats.count == 1000 and stats.mean == pytest.approx(500.5) and stats.min == 1 and stats.max == 1000
    assert stats.std == pytest.approx(np.std(scores))
    assert set(stats.quantiles) == {"0.5", "0.9", "0.95", "0.99", "0.999"}
    assert stats.quantiles["0.5"] == pytest.approx(500.5)


def test_binomial_tail_is_the_sum_of_the_binomial_terms() -> None:
    """P(X >= k) for a few n, p and k, against the sum of exact terms; the edges are 1 and 0."""
    for n, p in ((100, Fraction(1, 100)), (76, Fraction(1, 100)), (30, Fraction(1, 5)), (3000, Fraction(1, 100))):
        for k in (1, 2, 4, 10):
            exact = 1 - sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k))  # exact fractions
            assert calibrate.binomial_tail(k, n, float(p)) == pytest.approx(float(exact), rel=1e-9)
    assert calibrate.binomial_tail(0, 10, 0.01) == 1.0 and calibrate.binomial_tail(11, 10, 0.5) == 0.0
    assert calibrate.binomial_tail(4, 100, 0.01) == pytest.approx(0.01837, abs=1e-5)


def test_all_good_quantile_joins_the_trained_on_scores_when_they_look_like_new_ones() -> None:
    """Held-out and trained-on scores from one distribution: the threshold is the quantile of all of them."""
    rng = np.random.default_rng(0)
    held, seen = rng.normal(0.3, 0.1, 100), rng.normal(0.3, 0.1, 900)
    spec, used = calibrate.all_good_quantile(held, seen, 0.01)
    both = np.concatenate([held, seen])
    assert spec.value == calibrate.good_quantile(both, 0.01).value and used.size == 1000
    assert spec.details["allowed_rejects"] == 10 and spec.details["held_out_check_p"] >= calibrate.HELD_OUT_CHECK
    assert spec.details["calibrated_on"] == "1000 good training images (900 trained on, 100 held out)"
    assert spec.details["held_out_rejects"] == np.count_nonzero(held >= spec.value) and "note" not in spec.details


def test_all_good_quantile_raises_the_pooled_threshold_when_the_model_learnt_its_images() -> None:
    """Trained-on scores well below the held-out ones (a model that learnt its images by heart): the joint
    threshold would reject many new good parts, so it is raised just far enough for the held-out check to pass,
    not to the loudest held-out image, and a note says why (docs/quality.md, row 140)."""
    rng = np.random.default_rng(1)
    held, seen = rng.normal(0.3, 0.1, 100), rng.normal(0.1, 0.05, 900)
    spec, used = calibrate.all_good_quantile(held, seen, 0.01)
    both = np.concatenate([held, seen])
    assert used.size == 1000 and spec.details["pooled_threshold"] == calibrate.good_quantile(both, 0.01).value
    top = np.sort(held)[::-1]
    assert spec.details["held_out_rejects"] == 3 and top[3] < spec.value <= top[2] + 1e-5  # 3 of 100: p = 0.079
    assert spec.details["held_out_check_p"] >= calibrate.HELD_OUT_CHECK > calibrate.binomial_tail(4, 100, 0.01)
    assert spec.value < calibrate.good_quantile(held, 0.01).value
    assert spec.details["calibrated_on"] == ("1000 good training images (900 trained on, 100 held out), raised until "
                                             "the held-out check passed")
    assert "rejected 10 of the 100 held-out ones" in str(spec.details["note"])
    few, _ = calibrate.all_good_quantile(held[:5], seen, 0.01)  # 5 held out: one reject is already unlikely
    assert few.details["held_out_rejects"] == 0 and few.value > held[:5].max()


def test_all_good_quantile_without_trained_on_scores_is_the_held_out_quantile() -> None:
    held = np.linspace(0.0, 1.0, 100)
    spec, used = calibrate.all_good_quantile(held, np.zeros(0), 0.01)
    assert spec.value == calibrate.good_quantile(held, 0.01).value and used.size == 100
    assert spec.details["calibrated_on"] == "100 held-out training images"



def _normal_quantiles(n: int, spread: float) -> np.ndarray:
    """n evenly spaced quantiles of a centred normal distribution: a sample without sampling noise."""
    dist = NormalDist(0.0, spread)
    return np.array([dist.inv_cdf((i + 0.5) / n) for i in range(n)])


def test_left_out_pool_moves_the_left_out_scores_to_the_held_out_median() -> None:
    """Left-out scores of the held-out ones' shape but higher: moved down to the held-out median, they join, and
    the threshold is the pool's quantile."""
    held, left = _normal_quantiles(76, 1.0), _normal_quantiles(686, 1.0) + 0.4
    spec, used = calibrate.left_out_pool(held, left, 0.01)
    moved, shift = calibrate.to_median(left, held)
    assert shift == pytest.approx(-0.4) and used.size == 762
    assert spec.value == calibrate.good_quantile(np.concatenate([held, moved]), 0.01).value
    assert spec.details["trained_on_scored"].endswith("moved by -0.4 to the held-out images' median")
    assert spec.details["calibrated_on"] == "762 good training images (686 trained on, 76 held out)"


def test_left_out_pool_raises_a_refused_threshold_until_the_held_out_check_passes() -> None:
    """Held-out scores spread 1.6 times as wide as the left-out ones: the pool's threshold rejects 4 of the 76
    held-out images, which a 1 % rate makes unlikely (p < 0.05). It is raised just far enough for the check to
    pass (2 rejected, p = 0.18: one image fewer would pass too, one more would not), not to the held-out maximum."""
    held, left = _normal_quantiles(76, 1.6), _normal_quantiles(686, 1.0)
    spec, used = calibrate.left_out_pool(held, left, 0.01)
    top = np.sort(held)[::-1]
    assert used.size == 762 and top[2] < spec.value <= top[1] + 1e-5  # rejects the two loudest held-out images
    assert spec.details["held_out_rejects"] == 2 and spec.details["held_out_check_p"] >= calibrate.HELD_OUT_CHECK
    assert calibrate.binomial_tail(3, 76, 0.01) < calibrate.HELD_OUT_CHECK  # the next lower step is refused
    both = np.concatenate([held, calibrate.to_median(left, held)[0]])
    assert spec.details["pooled_threshold"] == calibrate.good_quantile(both, 0.01).value
    assert np.count_nonzero(held >= spec.details["pooled_threshold"]) == 4  # the pool's own: refused
    assert spec.details["pooled_threshold"] < spec.value < calibrate.good_quantile(held, 0.01).value
    assert spec.details["calibrated_on"].endswith("raised until the held-out check passed")
    assert "rejected 4 of the 76 held-out ones" in spec.details["note"]
    assert spec.details["false_reject_rate_on_calibration"] == np.count_nonzero(used >= spec.value) / 762


def test_left_out_pool_of_a_model_that_learnt_its_images_rises_to_the_held_out_maximum_at_most() -> None:
    """Left-out scores far quieter in their spread than the held-out ones: the raise goes as far as it must, and
    never above the loudest held-out image (where no held-out image is rejected)."""
    held, left = _normal_quantiles(76, 1.0), _normal_quantiles(686, 0.05)
    spec, _ = calibrate.left_out_pool(held, left, 0.01)
    assert spec.details["held_out_rejects"] <= 2 and spec.value <= calibrate.good_quantile(held, 0.01).value
    assert spec.details["held_out_check_p"] >= calibrate.HELD_OUT_CHECK

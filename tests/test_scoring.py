"""Score reductions on hand-computed inputs; thresholding."""

from __future__ import annotations

import math

import pytest
import torch

from inspector.scoring import diff_std, error_map, is_anomalous, make_reduction, mse, smoothed_max, topk_mean


def pair() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.zeros(2, 1, 4, 4)
    r = torch.zeros(2, 1, 4, 4)
    x[1, 0, 0, 0] = 1.0  # one pixel off by 1 in image 1
    return x, r


def test_mse_and_error_map() -> None:
    x, r = pair()
    assert mse(x, r).tolist() == [0.0, 1 / 16]
    assert error_map(x, r).shape == (2, 4, 4)


def test_diff_std_matches_hand_value() -> None:
    x, r = pair()
    values = [1.0] + [0.0] * 15
    mean = 1 / 16
    expected = math.sqrt(sum((v - mean) ** 2 for v in values) / 15)  # unbiased, as torch.std
    assert diff_std(x, r)[1].item() == pytest.approx(expected)


def test_topk_mean_averages_the_worst_pixels() -> None:
    x, r = pair()
    # 4x4 = 16 pixels; 25 % -> the 4 worst: one 1.0 and three 0.0
    assert topk_mean(x, r, top_percent=25)[1].item() == pytest.approx(0.25)
    assert topk_mean(x, r, top_percent=1)[1].item() == pytest.approx(1.0)  # at least one pixel


def test_smoothed_max_spreads_a_spike_but_ranks_it() -> None:
    x, r = pair()
    s = smoothed_max(x, r, sigma=1.0)
    assert s[0].item() == 0.0
    assert 0.0 < s[1].item() < 1.0
    blob = torch.zeros(1, 1, 16, 16)
    blob[0, 0, 6:10, 6:10] = 1.0
    spike = torch.zeros(1, 1, 16, 16)
    spike[0, 0, 8, 8] = 1.0
    zero = torch.zeros(1, 1, 16, 16)
    # same max pixel error, but a blob survives smoothing and an isolated spike does not
    assert smoothed_max(blob, zero).item() > 3 * smoothed_max(spike, zero).item()


def test_make_reduction_binds_params_and_rejects_unknowns() -> None:
    x, r = pair()
    assert make_reduction("topk_mean", {"top_percent": 25})(x, r)[1].item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match="unknown score reduction"):
        make_reduction("median")
    with pytest.raises(ValueError, match="bad parameters"):
        make_reduction("mse", {"sigma": 2})


def test_threshold_is_inclusive() -> None:
    assert is_anomalous(torch.tensor([0.1, 0.2, 0.3]), 0.2).tolist() == [False, True, True]


def test_smoothed_max_equals_a_direct_gaussian_convolution() -> None:
    """The banded-matmul blur is the separable Gaussian convolution with replicated borders."""
    import torch.nn.functional as F

    def reference(x: torch.Tensor, r: torch.Tensor, sigma: float) -> torch.Tensor:
        err = (x - r).square().mean(dim=1, keepdim=True)
        radius = max(1, math.ceil(3 * sigma))
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k = torch.exp(-(t * t) / (2 * sigma * sigma))
        k = k / k.sum()
        err = F.conv2d(F.pad(err, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        err = F.conv2d(F.pad(err, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
        return err.flatten(1).amax(dim=1)

    gen = torch.Generator().manual_seed(0)
    for shape in [(4, 1, 64, 64), (2, 3, 32, 48), (1, 1, 16, 16)]:
        x, r = torch.rand(shape, generator=gen), torch.rand(shape, generator=gen)
        for sigma in (1.0, 2.0, 4.0):
            assert torch.allclose(smoothed_max(x, r, sigma), reference(x, r, sigma), atol=1e-6)

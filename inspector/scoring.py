"""Error map -> score -> verdict. Pure functions on batched tensors; no I/O."""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import torch

Reduction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def error_map(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Per-pixel squared reconstruction error, averaged over channels: (B, C, H, W) -> (B, H, W)."""
    return (x - recon).square().mean(dim=1)


def mse(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image: (B,)."""
    return (x - recon).square().flatten(1).mean(dim=1)


def diff_std(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Standard deviation of the difference image per image: (B,)."""
    return (x - recon).flatten(1).std(dim=1)


def smoothed_max(x: torch.Tensor, recon: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """Maximum of the Gaussian-smoothed error map per image (replicated borders): (B,)."""
    err = error_map(x, recon)  # (B, H, W)
    rows = _blur_matrix(err.shape[1], sigma, err.device, err.dtype)  # (H, H)
    cols = _blur_matrix(err.shape[2], sigma, err.device, err.dtype)  # (W, W)
    return (rows @ err @ cols.T).flatten(1).amax(dim=1)  # separable blur as two banded matmuls


def topk_mean(x: torch.Tensor, recon: torch.Tensor, top_percent: float = 1.0) -> torch.Tensor:
    """Mean of the top `top_percent` % of the error map's pixels per image: (B,)."""
    err = error_map(x, recon).flatten(1)  # (B, H*W)
    k = max(1, math.ceil(err.shape[1] * top_percent / 100.0))
    return err.topk(k, dim=1).values.mean(dim=1)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(t * t) / (2 * sigma * sigma))
    return k / k.sum()


@functools.lru_cache(maxsize=32)
def _blur_matrix(n: int, sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n, n) matrix applying a 1-D Gaussian along one axis, edges replicated (as a banded matrix)."""
    kernel = _gaussian_kernel(sigma)
    radius = kernel.numel() // 2
    index = (torch.arange(n).unsqueeze(1) + torch.arange(-radius, radius + 1)).clamp_(0, n - 1)  # (n, k)
    matrix = torch.zeros(n, n, dtype=torch.float64)
    matrix.scatter_add_(1, index, kernel.expand(n, -1).contiguous())
    return matrix.to(device=device, dtype=dtype)


REDUCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "mse": mse,
    "diff_std": diff_std,
    "smoothed_max": smoothed_max,
    "topk_mean": topk_mean,
}


def make_reduction(name: str, params: dict[str, Any] | None = None) -> Reduction:
    """Bind a named reduction to its parameters; raises ValueError for unknown names or parameters."""
    try:
        fn = REDUCTIONS[name]
    except KeyError:
        raise ValueError(f"unknown score reduction {name!r}; known: {', '.join(sorted(REDUCTIONS))}") from None
    params = dict(params or {})
    try:
        fn(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), **params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for score reduction {name!r}: {exc}") from None
    return lambda x, recon: fn(x, recon, **params)


def is_anomalous(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """A score at or above the threshold is an anomaly: (B,) bool."""
    return scores >= threshold

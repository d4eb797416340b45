"""Error map -> score -> verdict. Pure functions on batched tensors; no I/O."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F

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
    """Maximum of the Gaussian-smoothed error map per image: (B,)."""
    err = error_map(x, recon).unsqueeze(1)  # (B, 1, H, W)
    kernel = _gaussian_kernel(sigma, err.device, err.dtype)  # (k,)
    pad = kernel.numel() // 2
    err = F.conv2d(F.pad(err, (pad, pad, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    err = F.conv2d(F.pad(err, (0, 0, pad, pad), mode="replicate"), kernel.view(1, 1, -1, 1))
    return err.flatten(1).amax(dim=1)


def topk_mean(x: torch.Tensor, recon: torch.Tensor, top_percent: float = 1.0) -> torch.Tensor:
    """Mean of the top `top_percent` % of the error map's pixels per image: (B,)."""
    err = error_map(x, recon).flatten(1)  # (B, H*W)
    k = max(1, math.ceil(err.shape[1] * top_percent / 100.0))
    return err.topk(k, dim=1).values.mean(dim=1)


def _gaussian_kernel(sigma: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    k = torch.exp(-(t * t) / (2 * sigma * sigma))
    return (k / k.sum()).to(dtype)


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

"""Error map -> score -> verdict. Pure functions on batched tensors; no I/O.

A reduction takes the input and the model's output. For reconstruction models the output is the
reconstruction and the map is the squared error; for anomaly-map models (`map_*` reductions) the output is
the map itself and the input is ignored.
"""

from __future__ import annotations

import functools
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
    """Maximum of the Gaussian-smoothed error map per image (replicated borders): (B,)."""
    err = error_map(x, recon)  # (B, H, W)
    rows = _blur_matrix(err.shape[1], sigma, err.device, err.dtype)  # (H, H)
    cols = _blur_matrix(err.shape[2], sigma, err.device, err.dtype)  # (W, W)
    return (rows @ err @ cols.T).flatten(1).amax(dim=1)  # separable blur as two banded matmuls


def top_share_mean(values: torch.Tensor, top_percent: float) -> torch.Tensor:
    """Mean of the top `top_percent` % (at least one) of each row of (B, N): (B,)."""
    k = max(1, math.ceil(values.shape[1] * top_percent / 100.0))
    return values.topk(k, dim=1).values.mean(dim=1)


def topk_mean(x: torch.Tensor, recon: torch.Tensor, top_percent: float = 1.0) -> torch.Tensor:
    """Mean of the top `top_percent` % of the error map's pixels per image: (B,)."""
    return top_share_mean(error_map(x, recon).flatten(1), top_percent)


def anomaly_map(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The model's anomaly map averaged over channels, ignoring the input: (B, 1|C, H, W) -> (B, H, W)."""
    return out.mean(dim=1)


def heat_map(x: torch.Tensor, out: torch.Tensor, output: str) -> torch.Tensor:
    """What a heatmap shows: the map of an "anomaly_map" model, else the squared error: (B, H, W)."""
    return anomaly_map(x, out) if output == "anomaly_map" else error_map(x, out)


def map_max(x: torch.Tensor, out: torch.Tensor, sigma: float = 0.0) -> torch.Tensor:
    """Maximum of the anomaly map (Gaussian-smoothed first when sigma > 0) per image: (B,)."""
    m = anomaly_map(x, out)  # (B, H, W)
    if sigma > 0:
        rows = _blur_matrix(m.shape[1], sigma, m.device, m.dtype)  # (H, H)
        cols = _blur_matrix(m.shape[2], sigma, m.device, m.dtype)  # (W, W)
        m = rows @ m @ cols.T
    return m.flatten(1).amax(dim=1)


def map_topk(x: torch.Tensor, out: torch.Tensor, top_percent: float = 0.1) -> torch.Tensor:
    """Mean of the top `top_percent` % of the anomaly map's pixels per image: (B,)."""
    return top_share_mean(anomaly_map(x, out).flatten(1), top_percent)


def map_topk_or_mean(x: torch.Tensor, out: torch.Tensor, top_percent: float = 0.1, mean_gain: float = 0.0,
                     mean_shift: float = 0.0) -> torch.Tensor:
    """The larger of two readings of the anomaly map per image, (B,): the mean of its top `top_percent` % (one
    defect's footprint) and the mean of the whole map (a large faint region), the latter brought to the former's
    scale as `mean * mean_gain + mean_shift` (`inspector.train.mean_scale` fits both on good images). With the
    defaults, `map_topk`."""
    m = anomaly_map(x, out).flatten(1)  # (B, H*W)
    return torch.maximum(top_share_mean(m, top_percent), m.mean(dim=1) * mean_gain + mean_shift)


def map_peak_mean(x: torch.Tensor, out: torch.Tensor, window: int = 33, pool: int = 4, peaks: int = 3,
                  margin: int = 0) -> torch.Tensor:
    """Mean of the anomaly map's `peaks` loudest local peaks per image, (B,): a peak is the largest value of the
    `window`-pixel square around it, found on the map max-pooled by `pool` (the pooling makes the search cost a
    tenth of the full map's, docs/quality.md, row 130), and only `margin` pixels or more inside the frame (row 132:
    what the frame's edge cuts, text or a part, answers a little at each piece, and such a row of weak peaks is
    no defect's). Without a margin the loudest peak is the map's maximum."""
    return _peak_mean(anomaly_map(x, out), window, pool, peaks, margin)


def _peak_mean(m: torch.Tensor, window: int, pool: int, peaks: int, margin: int = 0) -> torch.Tensor:
    """`map_peak_mean` of an anomaly map (B, H, W) already averaged over channels."""
    pool, window, peaks, margin = int(pool), int(window), int(peaks), int(margin)  # model.json gives floats back
    h, w = m.shape[-2:]
    if margin > 0 and min(h, w) > 2 * margin:  # a frame too small for the margin keeps its border
        m = m[:, margin:h - margin, margin:w - margin]
    m = m.unsqueeze(1)  # (B, 1, H, W)
    if pool > 1:
        m = F.max_pool2d(m, pool, ceil_mode=True)
    k = max(1, window // pool // 2 * 2 + 1)  # odd, so that the square has a centre
    local = F.max_pool2d(m, k, 1, k // 2)
    flat, is_peak = m.flatten(1), (m == local).flatten(1)
    floor = flat.amin(dim=1, keepdim=True)  # what a missing peak counts as (a flat map has one peak)
    return torch.where(is_peak, flat, floor).topk(min(peaks, flat.shape[1]), dim=1).values.mean(dim=1)


def map_peaks(x: torch.Tensor, out: torch.Tensor, window: int = 33, pool: int = 4, peaks: int = 3, margin: int = 0,
              peaks_gain: float = 0.0, peaks_shift: float = 0.0) -> torch.Tensor:
    """The anomaly map's maximum raised by how far its loudest peaks stand above good images', (B,):
    `max + peak_mean * peaks_gain + peaks_shift`, with `map_peak_mean`'s reading and `peaks_scale` fitting the
    gain and shift on good images (there the second term is centred on 0 with the maximum's spread). A defect
    part often holds several weak defects where a good part's loud spot is alone (docs/quality.md, rows 129
    and 130). With the defaults, `map_max`."""
    m = anomaly_map(x, out)  # (B, H, W), read once for both terms
    top = m.flatten(1).amax(dim=1)
    if peaks_gain == 0.0 and peaks_shift == 0.0:
        return top
    return top + _peak_mean(m, window, pool, peaks, margin) * peaks_gain + peaks_shift


def map_mean(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Mean of the whole anomaly map per image, (B,): `map_topk_or_mean`'s second reading, before its scale."""
    return anomaly_map(x, out).flatten(1).mean(dim=1)


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
    "map_max": map_max,
    "map_topk": map_topk,
    "map_topk_or_mean": map_topk_or_mean,
    "map_peaks": map_peaks,
}
# these read an anomaly map; the others a reconstruction
MAP_REDUCTIONS = frozenset({"map_max", "map_topk", "map_topk_or_mean", "map_peaks"})


def reduction_output(name: str) -> str:
    """The model output a reduction reads: "anomaly_map" or "reconstruction"."""
    return "anomaly_map" if name in MAP_REDUCTIONS else "reconstruction"


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

"""Error map -> score -> verdict. Pure functions on batched tensors; no I/O.

A reduction takes the input and the model's output. For reconstruction models the output is the
reconstruction and the map is the squared error; for anomaly-map models (`map_*` reductions) the output is
the map itself and the input is ignored, except by `map_peaks`' uniqueness reading (how unlike the rest of the
frame the input is where the map speaks).
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
    return _peaks(m, window, pool, peaks, margin)[0].mean(dim=1)


def _peaks(m: torch.Tensor, window: int, pool: int, peaks: int,
           margin: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The `peaks` loudest local peaks of maps (B, H, W) as `map_peak_mean` finds them: their values, rows and columns
    in the map (each (B, peaks); a pooled cell's peak at its loudest pixel)."""
    pool, window, peaks, margin = int(pool), int(window), int(peaks), int(margin)  # model.json gives floats back
    h, w = m.shape[-2:]
    off = margin if margin > 0 and min(h, w) > 2 * margin else 0  # a frame too small for the margin keeps its border
    m = m[:, off:h - off, off:w - off].unsqueeze(1)  # (B, 1, H', W')
    width = m.shape[-1]
    if pool > 1:
        m, source = F.max_pool2d(m, pool, ceil_mode=True, return_indices=True)
    else:
        source = torch.arange(m[0].numel(), device=m.device).view(1, *m.shape[1:]).expand_as(m)
    k = max(1, window // pool // 2 * 2 + 1)  # odd, so that the square has a centre
    local = F.max_pool2d(m, k, 1, k // 2)
    flat, is_peak = m.flatten(1), (m == local).flatten(1)
    floor = flat.amin(dim=1, keepdim=True)  # what a missing peak counts as (a flat map has one peak)
    values, cells = torch.where(is_peak, flat, floor).topk(min(peaks, flat.shape[1]), dim=1)
    where = source.flatten(1).gather(1, cells)  # flat index in the cropped map
    return values, torch.div(where, width, rounding_mode="floor") + off, where % width + off


def map_peaks(x: torch.Tensor, out: torch.Tensor, window: int = 33, pool: int = 4, peaks: int = 3, margin: int = 0,
              peaks_gain: float = 0.0, peaks_shift: float = 0.0, unique_radius: int = 0, unique_gain: float = 0.0,
              unique_shift: float = 0.0) -> torch.Tensor:
    """The anomaly map's maximum raised by how far its loudest peaks stand above good images', (B,):
    `max + peak_mean * peaks_gain + peaks_shift`, with `map_peak_mean`'s reading and `peaks_scale` fitting the
    gain and shift on good images (there the second term is centred on 0 with the maximum's spread). A defect
    part often holds several weak defects where a good part's loud spot is alone (docs/quality.md, rows 129
    and 130). With a `unique_gain`, also `+ uniqueness * unique_gain + unique_shift`: how unlike the rest of its
    own frame the input is where the map is loudest and at those peaks (`map_peaks_uniqueness`, squares of
    `unique_radius`), fitted on good images as the peaks are (`uniqueness_scale`): a part's repeated structures
    (vias, pads, a pattern) are normal where one of them answers, a defect is one of a kind (row 140). With the
    defaults, `map_max`."""
    m = anomaly_map(x, out)  # (B, H, W), read once for every term
    top, where = m.flatten(1).max(dim=1)
    score = top
    if peaks_gain == 0.0 and peaks_shift == 0.0 and (unique_gain == 0.0 or int(unique_radius) <= 0):
        return score
    values, rows, cols = _peaks(m, window, pool, peaks, margin)
    if peaks_gain != 0.0 or peaks_shift != 0.0:
        score = score + values.mean(dim=1) * peaks_gain + peaks_shift
    if unique_gain != 0.0 and int(unique_radius) > 0:
        unique = _uniqueness(x, m.shape[-2:], where, rows, cols, int(unique_radius))
        score = score + unique * unique_gain + unique_shift
    return score


def map_peaks_uniqueness(x: torch.Tensor, out: torch.Tensor, window: int = 33, pool: int = 4, peaks: int = 3,
                         margin: int = 0, radius: int = 3) -> torch.Tensor:
    """How unlike the rest of its own frame the input is where the anomaly map speaks, (B,): the mean of
    `self_dissimilarity` (squares of side 2 * radius + 1) at the map's maximum and at its `peaks` loudest peaks
    (found as `map_peak_mean` finds them). `map_peaks`' third reading."""
    m = anomaly_map(x, out)
    _, rows, cols = _peaks(m, window, pool, peaks, margin)
    return _uniqueness(x, m.shape[-2:], m.flatten(1).argmax(dim=1), rows, cols, int(radius))


def _uniqueness(x: torch.Tensor, map_size: torch.Size, top: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                radius: int) -> torch.Tensor:
    """`map_peaks_uniqueness` from the maximum's flat index `top` (B,) and the peaks' rows and columns (B, K) in
    maps of `map_size` (H, W), brought to the input's size."""
    mh, mw = int(map_size[0]), int(map_size[1])
    rows = torch.cat([torch.div(top, mw, rounding_mode="floor")[:, None], rows], dim=1)  # (B, 1 + K)
    cols = torch.cat([(top % mw)[:, None], cols], dim=1)
    h, w = x.shape[-2:]
    return self_dissimilarity(x, rows * h // mh, cols * w // mw, radius).mean(dim=1)


def self_dissimilarity(x: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, radius: int) -> torch.Tensor:
    """Per image of x (B, C, H, W) and point (ys, xs) (each (B, K)), the mean squared difference between the
    image's square of side 2 * radius + 1 centred there (channels averaged, the frame's edge reflected) and the
    most alike square of the same frame centred more than `radius` px from it in rows or columns (so not the same
    square moved by a pixel), (B, K). Near 0 where the frame repeats what is there (one via of many, a stretch of
    track, a texture's period); large where nothing else in the frame looks like it. Depthwise convolutions over
    the frame (each square's products with the frame's squares, and those squares' sums of squares): about 0.6 ms
    a frame for 4 points at 256x256 on 2 CPU cores (batch 8)."""
    b, _, h, w = x.shape
    k = ys.shape[1]
    r, side = int(radius), 2 * int(radius) + 1
    pad = F.pad(x.float().mean(dim=1, keepdim=True), (r, r, r, r), mode="reflect")  # (B, 1, H + 2r, W + 2r)
    offsets = torch.arange(side, device=x.device)
    rows, cols = (ys[..., None] + offsets)[..., :, None], (xs[..., None] + offsets)[..., None, :]  # (B, K, s, 1|s)
    square = pad[:, 0][torch.arange(b, device=x.device)[:, None, None, None], rows, cols]  # (B, K, side, side)
    frames = pad.expand(b, k, h + 2 * r, w + 2 * r).reshape(1, b * k, h + 2 * r, w + 2 * r)  # one channel a point
    products = F.conv2d(frames, square.reshape(b * k, 1, side, side), groups=b * k).view(b, k, h * w)
    energy = F.conv2d(pad.transpose(0, 1) ** 2, torch.ones(b, 1, side, side, device=x.device), groups=b)
    partial = torch.add(energy.view(b, 1, h * w), products, alpha=-2.0)  # the squared difference less |square|^2
    near_y = (ys[..., None] + offsets - r).clamp(0, h - 1)  # (B, K, side): the rows and columns of ...
    near_x = (xs[..., None] + offsets - r).clamp(0, w - 1)
    near = (near_y[..., :, None] * w + near_x[..., None, :]).flatten(2)  # ... the squares that overlap its own
    partial.scatter_(2, near, math.inf)
    best = partial.amin(dim=2) + (square * square).sum(dim=(2, 3))  # inf where the frame holds no other square
    return (best / (side * side)).clamp(0.0, 1.0)  # grey levels in [0, 1] differ by 1 at most


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

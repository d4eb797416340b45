"""Choosing a model family from the good images alone (`--family auto`).

Each candidate, once fitted, is asked the same question: how well do its scores tell the held-out good images
from copies of them with one synthetic defect each (`inspector.defects`, the defects draem trains on), at three
sizes and three seeds (mean AUROC). No test label enters. The preferred candidate (patchcore, pretrained
features) is kept unless another answers better by more than a margin: the question favours draem, which has
learnt to find exactly these defects, and a margin smaller than the spread between training seeds would make
the choice a coin toss (docs/quality.md, row 105).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .defects import defect_batch
from .evaluate import auroc

PROBE_SEEDS = (0, 1, 2)
PROBE_IMAGES = 100  # held-out images asked at most (evenly spread over them): 300 cost patchcore 90 s of the budget
# defect sizes as shares of the input's shorter side: the whole image, half of it, an eighth to a quarter
PROBE_SIZES: tuple[tuple[float, float] | None, ...] = (None, (0.5, 0.5), (0.125, 0.25))


def _size_name(size: tuple[float, float] | None) -> str:
    return "image" if size is None else f"{size[0]:g}-{size[1]:g}"


def defective_copies(images: np.ndarray, seed: int, size: tuple[float, float] | None) -> np.ndarray:
    """Copies of uint8 images ((N, H, W) or (N, H, W, C)) with one synthetic defect each, sized to `size` (shares
    of the shorter side; None: the whole image), rounded back to uint8 as a camera would deliver them."""
    chw = (images[..., None] if images.ndim == 3 else images).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    side = min(chw.shape[2:])
    scales = None if size is None else (size[0] * side, size[1] * side)
    bad, _ = defect_batch(np.random.default_rng(seed), chw, rate=1.0, scales=scales)
    out = np.clip(np.rint(bad * 255.0), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    return out[..., 0] if images.ndim == 3 else out


def separation(score: Callable[[np.ndarray], np.ndarray], held_out: np.ndarray) -> dict[str, float]:
    """AUROC of `score` (uint8 images -> one score each) between the held-out good images (at most PROBE_IMAGES of
    them) and their defective copies, per defect size (mean over PROBE_SEEDS), and their mean under "mean"."""
    if len(held_out) > PROBE_IMAGES:
        held_out = held_out[np.linspace(0, len(held_out) - 1, PROBE_IMAGES).round().astype(int)]
    good = score(held_out)
    per_size = {_size_name(size): float(np.mean([auroc(good, score(defective_copies(held_out, seed, size)))
                                                 for seed in PROBE_SEEDS]))
                for size in PROBE_SIZES}
    return {**{k: round(v, 4) for k, v in per_size.items()}, "mean": round(float(np.mean(list(per_size.values()))), 4)}


def choose(separations: dict[str, dict[str, float]], preferred: str, margin: float) -> str:
    """`preferred`, unless another candidate's mean separation beats it by more than `margin`; then the best."""
    best = max(separations, key=lambda k: separations[k]["mean"])
    return best if separations[best]["mean"] > separations[preferred]["mean"] + margin else preferred

"""The training objective of anomaly-map families (DRAEM): repair synthetic defects and segment them.

Each step takes a batch of good images, optionally cuts random crops (the model is fully convolutional, so
crops are cheaper than whole frames and it still scores whole frames; more, smaller steps won on the real
data sets), paints synthetic defects on half of them
(`inspector.defects`), and asks the model to reconstruct the clean crop (L2) and to segment the painted
pixels (focal loss). Used by training only.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .defects import defect_batch

FOCAL_GAMMA = 2.0
FOCAL_WEIGHT = 10.0  # the focal loss is small per pixel (most pixels are easy); this balances it with L2
DEFECT_RATE = 0.5  # share of training images that get a synthetic defect


def crop_size(height: int, width: int, multiple: int, share: float = 1.0) -> tuple[int, int]:
    """Training crop: `share` of the input per side (at least 64 px, at most the input), a multiple of `multiple`."""
    def side(n: int) -> int:
        c = max(min(n, 64), int(n * share))
        return max(multiple, c - c % multiple)
    return side(height), side(width)


def random_crops(x: torch.Tensor, size: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
    """One random crop of `size` per image: (B, C, H, W) -> (B, C, h, w).

    The origin is drawn from a range that reaches half a crop beyond each side, then clamped into the image, so
    that each border of the image lies at a crop's edge about a quarter of the time. Drawn uniformly inside the
    image, a crop of half the side would hold the border row once in H / 2 + 1 draws, so the part's own edges
    were hardly trained, and good parts scored highest there (docs/quality.md, row 75)."""
    _, _, h, w = x.shape
    ch, cw = size
    ys = np.clip(rng.integers(-(ch // 2), h - ch + ch // 2 + 1, len(x)), 0, h - ch)
    xs = np.clip(rng.integers(-(cw // 2), w - cw + cw // 2 + 1, len(x)), 0, w - cw)
    return torch.stack([x[i, :, y:y + ch, c:c + cw] for i, (y, c) in enumerate(zip(ys, xs, strict=True))])


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """Mean binary focal loss of logits against a 0/1 target, same shape."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_true = torch.where(target > 0.5, p, 1.0 - p)
    return ((1.0 - p_true) ** gamma * bce).mean()


def paint(clean: torch.Tensor, rng: np.random.Generator, rate: float = DEFECT_RATE,
          scales: tuple[float, float] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic defects on a `rate` share of the batch (sized as `defect_batch` says): the painted batch and the
    masks (B, 1, H, W)."""
    painted, masks = defect_batch(rng, clean.detach().cpu().numpy(), rate, scales)
    return (torch.from_numpy(painted).to(clean.device),
            torch.from_numpy(masks).unsqueeze(1).to(clean.device))


def repair_loss(model: nn.Module, clean: torch.Tensor, rng: np.random.Generator,
                rate: float = DEFECT_RATE, scales: tuple[float, float] | None = None) -> torch.Tensor:
    """Focal segmentation loss on the painted pixels plus L2 between the repair and the clean images."""
    painted, masks = paint(clean, rng, rate, scales)
    recon, logits = model.repair(painted)  # type: ignore[operator]
    return FOCAL_WEIGHT * focal_loss(logits.float(), masks) + F.mse_loss(recon.float(), clean)  # fp32 under autocast

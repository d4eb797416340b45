"""Choosing draem's coarser view from the held-out good images alone (docs/quality.md, rows 84-85).

A coarser view (the frame resized to half its side, its map resized back and averaged with the full one) sees
large regions in more context. It helps where the parts' texture survives the resize, and hurts where fine
structure (a PCB's one-pixel tracks) turns into something the model never saw. The good images tell which:
the view is kept when the model's maps of the held-out good images are clearly quieter there than at full
size (their mean maximum at most `QUIETER` times the full size's): magnetic tiles 0.72-0.79 times, PCBs 1.52-1.66.
A view at 0.75 as well gave the tiles nothing more (row 84) at 1.5 times the cost, so it is not a candidate.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .inference import run
from .model import ANOMALY_MAP
from .scoring import make_reduction

CANDIDATES = (0.5,)  # coarser views tried, each on its own against the full size
QUIETER = 0.95  # a view must be this much quieter than the full size, so that a near tie keeps the full size alone


class _AtScale(nn.Module):
    """A draem model's map at one resize factor."""

    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.map_at(x, self.factor)  # type: ignore[operator]


def choose_scales(model: nn.Module, held_out: np.ndarray, device: torch.device, batch_size: int,
                  dtype: torch.dtype) -> tuple[list[float], dict[str, Any]]:
    """Scale 1, then each of `CANDIDATES` at which the mean map maximum of the held-out good images (uint8,
    prepared) is at most `QUIETER` times the full size's; and the evidence, for model.json."""
    peak = make_reduction("map_max")
    loudness = {}
    for factor in (1.0, *CANDIDATES):
        scores = run(_AtScale(model, factor), held_out, {"max": peak}, device, batch_size, output=ANOMALY_MAP,
                     dtype=dtype).scores["max"]
        loudness[factor] = float(np.mean(scores))
    chosen = [1.0] + [f for f in CANDIDATES if loudness[f] <= QUIETER * loudness[1.0]]
    rule = f"a coarser view is kept when the held-out good images' mean map maximum there is <= {QUIETER} x full size's"
    return chosen, {"chosen": chosen, "rule": rule, "mean_max": {str(f): round(v, 4) for f, v in loudness.items()}}

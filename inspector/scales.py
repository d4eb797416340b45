"""Choosing draem's coarser view from the held-out good images alone (docs/quality.md, rows 84-85).

A coarser view (the frame resized to half its side, its map resized back and averaged with the full one) sees
large regions in more context. It helps where the parts' texture survives the resize, and hurts where fine
structure (a PCB's one-pixel tracks) turns into something the model never saw. The good images tell which:
the view is kept when the model's maps of the held-out good images are clearly quieter there than at full
size (their mean maximum at most `QUIETER` times the full size's): magnetic tiles 0.72-0.79 times, PCBs 1.52-1.66.
A view at 0.75 as well gave the tiles nothing more (row 84) at 1.5 times the cost, so it is not a candidate.

The same question, asked early in training, sizes draem's synthetic defects (`defect_size` auto, row 89): a part
that looks the same at half size is trained again from the start with defects up to the image's size, and so
learns the large faint regions it can have (magnetic tiles' "uneven" ones); a part with fine structure goes on
with defects sized to the crop.
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
SIZE_READINGS = (0.8, 0.9, 1.0)  # defect_size auto reads the good images at these shares of its step, and averages
SIZE_RULE = (f"training starts again with synthetic defects up to the image's size when the held-out good images' "
             f"mean map maximum at half size, averaged over readings at {', '.join(f'{r:g}' for r in SIZE_READINGS)} "
             f"times this step, is <= {QUIETER} x full size's")


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
    loud = loudness(model, held_out, device, batch_size, dtype)
    chosen = _kept(loud)
    rule = f"a coarser view is kept when the held-out good images' mean map maximum there is <= {QUIETER} x full size's"
    return chosen, {"chosen": chosen, "rule": rule, "mean_max": _rounded(loud)}


def loudness(model: nn.Module, held_out: np.ndarray, device: torch.device, batch_size: int,
             dtype: torch.dtype) -> dict[float, float]:
    """The mean map maximum of the held-out good images (uint8, prepared) at full size and at each candidate."""
    peak = make_reduction("map_max")
    loud = {}
    for factor in (1.0, *CANDIDATES):
        scores = run(_AtScale(model, factor), held_out, {"max": peak}, device, batch_size, output=ANOMALY_MAP,
                     dtype=dtype).scores["max"]
        loud[factor] = float(np.mean(scores))
    return loud


def size_reading_steps(step: int) -> tuple[int, ...]:
    """The steps at which defect_size auto reads the good images' loudness, the last of them `step`."""
    return tuple(sorted({max(1, round(step * share)) for share in SIZE_READINGS}))


def choose_defect_size(readings: dict[int, dict[float, float]], step: int) -> tuple[str, dict[str, Any]]:
    """"image" where the held-out good images look the same to the model at half size (the view `choose_scales`
    keeps) on average over `readings` (step -> `loudness`), else "crop"; and the evidence, for model.json.
    One reading moves from step to step while the learning rate is high (docs/quality.md, row 98); their mean
    is steadier."""
    mean = {f: float(np.mean([r[f] for r in readings.values()])) for f in (1.0, *CANDIDATES)}
    size = "image" if len(_kept(mean)) > 1 else "crop"
    return size, {"chosen": size, "at_step": step, "rule": SIZE_RULE, "mean_max": _rounded(mean),
                  "readings": {str(k): _rounded(v) for k, v in sorted(readings.items())}}


def _kept(loud: dict[float, float]) -> list[float]:
    return [1.0] + [f for f in CANDIDATES if loud[f] <= QUIETER * loud[1.0]]


def _rounded(loud: dict[float, float]) -> dict[str, float]:
    return {str(f): round(v, 4) for f, v in loud.items()}


def defect_size_unasked(step: int) -> dict[str, Any]:
    """The evidence of a training that stopped before `step`: its defects stayed sized to the crop."""
    return {"chosen": "crop", "at_step": step, "rule": SIZE_RULE, "mean_max": None,
            "note": f"training ended before step {step}, so the good images were not asked"}

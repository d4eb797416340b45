"""Offline scoring of prepared images with a model: batched forward on a device, scores, reconstructions
and error maps. Used by calibrate, evaluate, score and the end of training; knows nothing of the daemon."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from torch import nn

from .artifact import Artifact
from .device import resolve_dtype
from .heatmap import heat_scale  # noqa: F401  (re-exported for the offline tools)
from .progress import Progress
from .scoring import Reduction, heat_map

DEFAULT_BATCH = 32


def to_tensor(images: np.ndarray, device: torch.device, scale: float = 255.0) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float (N, C, H, W) in [0, 1] on `device`."""
    t = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)  # (N, C, H, W)
    return t.float().div_(scale)


def to_images(batch: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) in [0, 1] -> uint8 (N, H, W) or (N, H, W, C) on the CPU."""
    x = (batch.detach().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu()
    return (x[:, 0] if x.shape[1] == 1 else x.permute(0, 2, 3, 1)).numpy()


@dataclass
class Scored:
    """Per-image scores for each reduction, and optionally reconstructions and error maps."""

    scores: dict[str, np.ndarray]  # reduction name -> float64 (N,)
    recon: np.ndarray | None = None  # uint8 like the input
    errors: np.ndarray | None = None  # float32 (N, H, W): squared error averaged over channels, or the anomaly map


@torch.no_grad()
def run(module: nn.Module, images: np.ndarray, reductions: Mapping[str, Reduction], device: torch.device,
        batch_size: int = DEFAULT_BATCH, keep_maps: bool = False, scale: float = 255.0,
        progress: str | None = None, output: str = "reconstruction", dtype: torch.dtype = torch.float32) -> Scored:
    """Score uint8 images (already prepared to the model's input) with each reduction, in batches.

    `output` is what the module returns ("reconstruction" or "anomaly_map"); for an anomaly-map model that
    can show its repair (`repair`), the kept reconstructions are that repair. With a `dtype` other than
    float32 a copy of the module runs in it, as the daemon's worker runs it (the module itself is untouched).
    """
    module = module.to(device).eval()
    if dtype != torch.float32:
        module = copy.deepcopy(module).to(dtype)
    n = len(images)
    scores: dict[str, list[np.ndarray]] = {name: [] for name in reductions}
    recons: list[np.ndarray] = []
    errors: list[np.ndarray] = []
    with Progress(n, progress or "", enabled=progress is not None) as bar:
        for start in range(0, n, batch_size):
            x = to_tensor(images[start:start + batch_size], device, scale).to(dtype)  # (B, C, H, W)
            out = module(x)  # (B, C, H, W) reconstruction or (B, 1, H, W) anomaly map
            for name, reduce in reductions.items():
                scores[name].append(reduce(x.float(), out.float()).double().cpu().numpy())  # as the worker does
            if keep_maps:
                repair = getattr(module, "repair", None)
                shown = repair(x)[0] if output == "anomaly_map" and repair is not None else out
                recons.append(to_images(shown if shown.shape == x.shape else out.expand_as(x)))
                errors.append(heat_map(x.float(), out.float(), output).float().cpu().numpy())
            bar.update(len(x))
    return Scored(
        scores={k: np.concatenate(v) if v else np.zeros(0) for k, v in scores.items()},
        recon=np.concatenate(recons) if keep_maps and recons else None,
        errors=np.concatenate(errors) if keep_maps and errors else None,
    )


def score_artifact(artifact: Artifact, images: np.ndarray, device: torch.device,
                   batch_size: int = DEFAULT_BATCH, keep_maps: bool = False,
                   progress: str | None = None, precision: str = "auto") -> Scored:
    """Score images with the artifact's own reduction (scores under the key "score"), in the arithmetic
    `precision` resolves to (`inspector.device.resolve_dtype`, as the daemon's `worker.precision`)."""
    dtype = resolve_dtype(precision, device, artifact.meta.output)
    return run(artifact.module, images, {"score": artifact.reduction()}, device, batch_size, keep_maps,
               artifact.meta.input.scale, progress, artifact.meta.output, dtype)

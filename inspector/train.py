"""Training an autoencoder on good images, then calibrating it on those images and writing the artifact.

Never imported by the daemon. Determinism: python, numpy and torch are seeded, the split and batch order
come from the seed, there are no loader workers, and torch runs with deterministic algorithms, so the same
command on the same machine (same torch version and thread count; CPU) gives the same weights. A time
budget (`max_minutes`) makes the number of steps depend on speed, and so breaks this.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from . import calibrate
from .artifact import Artifact, ThresholdSpec, save_artifact
from .backbone import load_pretrained
from .choose import PROBE_IMAGES, choose, separation
from .dataset import ImageSet, load_folder, training_folder
from .device import fast_bf16, precision_name, resolve_device, resolve_dtype
from .inference import run, to_tensor
from .model import ANOMALY_MAP, BANK_FAMILIES, build_model, check_scales, output_kind
from .patchcore import build_bank, footprint_percent, plain_distances
from .preprocess import Contrast, Fit
from .progress import Progress
from .repair import crop_size, random_crops, repair_loss
from .scales import choose_defect_size, choose_scales, defect_size_unasked, loudness, size_reading_steps
from .scoring import make_reduction, map_mean, map_peak_mean, map_peaks_uniqueness, reduction_output

AUTO = "auto"  # the family: fit each of AUTO_FAMILIES, keep the one the good images choose (inspector.choose)
AUTO_FAMILIES = ("patchcore", "draem")  # patchcore first: it takes a minute or two, draem the rest of the budget
AUTO_PREFERRED = "patchcore"  # kept unless another candidate separates the synthetic defects by more than ...
AUTO_MARGIN = 0.05  # ... this much mean AUROC (docs/quality.md, row 105)
DEFAULT_FAMILY = AUTO  # docs/quality.md
DEFAULT_REDUCTION = "topk_mean"  # of the autoencoder families (docs/training.md)
DEFAULT_REDUCTIONS: dict[str, str] = {"conv-ae": DEFAULT_REDUCTION, "dense-ae": DEFAULT_REDUCTION, "draem": "map_peaks",
                                      "patchcore": "map_topk_or_mean"}  # over one patch's footprint, or the whole map
DEFAULT_HPARAMS: dict[str, dict[str, Any]] = {
    "conv-ae": {"base_width": 16, "depth": 4, "latent": 32},
    "dense-ae": {"hidden": 256, "code": 32},
    "draem": {"fold": 2, "recon_width": 16, "recon_depth": 3, "seg_width": 16, "seg_depth": 3, "views": 2,
              "seg_views": 1, "padding": "reflect", "decoder": "conv-resize"},
    "patchcore": {"layers": [10, 14], "pool": 3, "bank": 6000, "density": 8, "whiten": 0.5},
}
DEFAULT_MAX_MINUTES = 9.0  # with loading and calibration, 3000 images train within 10 minutes on 2 CPU cores
VAL_SEED = 12345  # the synthetic defects of the held-out slice are the same at every epoch
DEFAULT_EPOCHS = 40  # epochs "auto" runs these where they make MIN_STEPS (from 1,200 training images at batch 16)
MIN_SCALE_IMAGES = 10  # the scales of map_topk_or_mean and map_peaks need this many held-out good images' spreads
MIN_STEPS = 3000  # epochs "auto" adds passes over smaller sets until training makes this many steps
MIN_BUDGET_SHARE = 0.25  # the least of the time budget that training gets after a slow reading of the images
SIZE_CHECK_SHARE = 6  # defect_size auto asks the good images after min_steps / this many steps (500 by default)
CLOCK_EPOCH = 2  # the epoch whose pace decides whether the time budget binds (_budget_binds)
MIN_IMAGES = 2  # one to train on, one held out for calibration
FEW_IMAGES = 20  # below this the threshold is a rough guess; training warns


class Augment(BaseModel):
    """Light augmentation that fits line images: small shifts and brightness/contrast jitter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shift: float = Field(0.03, ge=0, le=0.25, description="Largest shift, as a fraction of width/height.")
    brightness: float = Field(0.05, ge=0, le=0.5, description="Largest brightness offset (pixel scale 0..1).")
    contrast: float = Field(0.10, ge=0, le=0.5, description="Largest relative contrast change.")
    flip: bool = Field(False, description="Mirror each image left-right and up-down at random.")


class TrainSettings(BaseModel):
    """Everything that decides the trained model (recorded in model.json under `training`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: str = Field(DEFAULT_FAMILY, description="Model family (inspector.model.FAMILIES), or auto: fit "
                                                   "patchcore and draem, keep the one the good images choose.")
    height: int = Field(256, ge=8, description="Input height in pixels.")
    width: int = Field(256, ge=8, description="Input width in pixels.")
    channels: int | str = Field("auto", description="1, 3 or auto (1 when every image is grayscale).")
    hparams: dict[str, Any] = Field(default_factory=dict, description="Family hyper-parameters (over defaults).")
    epochs: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description=f"Passes over the training slice; auto: {DEFAULT_EPOCHS}, or more over a small set, "
                            "enough for `min_steps` optimisation steps (the time budget still ends training).")
    min_steps: int = Field(MIN_STEPS, ge=1, description="The fewest optimisation steps that epochs auto makes.")
    batch_size: int = Field(16, ge=1, description="Images per optimisation step.")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate.")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Share of images held out for validation/calibration.")
    seed: int = Field(0, description="Seed for the split, initialisation, batch order and augmentation.")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    max_minutes: float | None = Field(DEFAULT_MAX_MINUTES, gt=0, description="Stop training after this long "
                                      "(best checkpoint kept), counted from fit's budget_started; None: no limit.")
    reduction: str | None = Field(None, description="Score reduction (inspector.scoring.REDUCTIONS); None: the "
                                                    "family's default (with its parameters, `score_for`).")
    reduction_params: dict[str, float] = Field(default_factory=dict, description="Parameters of the reduction.")
    target_false_reject: float = Field(0.01, gt=0, lt=1, description="False-reject rate the threshold aims for.")
    threshold_from: Literal["auto", "held-out"] = Field(
        "auto", description="Good images the threshold is set on: auto, all of them (trained-on and held-out), "
                            "raised just far enough where it rejects more held-out images than the rate makes "
                            "likely (inspector.calibrate.all_good_quantile; docs/quality.md, rows 99 and 140); or "
                            "held-out, those alone.")
    augment: Augment = Field(default_factory=Augment, description="Augmentation strengths.")
    fit: Fit | Literal["auto"] = Field(
        "auto", description="How images of another aspect than the input's are fitted to it: stretch, pad (aspect "
                            "kept, margins reflected), or auto (pad when the training images' aspects differ).")
    contrast: Contrast | Literal["auto"] = Field(
        "auto", description="Grey levels: stretch (each image's 1st to 99th percentile to 0-255), none, or auto "
                            "(stretch when the training images' contrasts differ).")
    crop: float = Field(0.5, gt=0, le=1, description="Anomaly-map families train on random crops of this share of "
                                                     "each side (1: whole images).")
    defect_size: Literal["auto", "crop", "image"] = Field(
        "auto", description="draem's synthetic defects: sized to the training crop, each sized between the crop's "
                            "side and the image's (for parts whose defects are large regions), or auto: crop, "
                            "unless the held-out good images look the same to the model at half size by "
                            "min_steps / 6 steps (the mean of readings at 0.8, 0.9 and 1 times it); then training "
                            "starts again with image (inspector.scales; docs/quality.md, rows 89 and 98).")
    scales: Literal["auto"] | list[float] = Field(
        "auto", description="draem's views of the frame: 1 (full size) followed by coarser resize factors, the map "
                            "being their mean; auto: 1, plus 0.5 where the model's maps of the "
                            "held-out good images are clearly quieter than at full size (inspector.scales; "
                            "docs/quality.md, row 84).")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Training arithmetic: bf16 mixed precision (about 1.6x the steps per minute where the "
                            "device computes bf16 natively), fp32, or auto (bf16 for anomaly-map families where "
                            "native and faster than fp32, else fp32; the autoencoders' small reconstruction errors "
                            "keep fp32).")


@dataclass
class Split:
    """Images loaded for training, split into a training and a held-out slice."""

    data: ImageSet
    train_idx: np.ndarray
    val_idx: np.ndarray
    note: str | None = None  # e.g. "training on DIR/good only"
    warnings: list[str] = field(default_factory=list)


@dataclass
class TrainResult:
    """What training produced: the saved artifact and how it went."""

    artifact: Artifact
    split: Split
    seconds: float
    epochs_run: float
    best_epoch: int
    best_val_loss: float
    stopped: str  # "epochs" or "time budget"
    val_scores: np.ndarray
    history: list[dict[str, float]]


def hparams_for(settings: TrainSettings) -> dict[str, Any]:
    """The family defaults overlaid with the settings' hyper-parameters. draem's segmenter-only views, when
    asked for, replace its default whole-model views (the two do not go together)."""
    defaults = DEFAULT_HPARAMS.get(settings.family, {})
    seg_views = settings.hparams.get("seg_views", 1)
    if isinstance(seg_views, int) and seg_views > 1 and "views" not in settings.hparams:
        defaults = {**defaults, "views": 1}
    return {**defaults, **settings.hparams}


def epochs_for(settings: TrainSettings, steps_per_epoch: int) -> int:
    """The epochs a run makes: the settings' number, or for auto the default, more when that many passes over
    a small set would make fewer than `min_steps` steps (a set of 150 images, 40 epochs: 360 steps)."""
    if settings.epochs != "auto":
        return settings.epochs
    return max(DEFAULT_EPOCHS, math.ceil(settings.min_steps / max(steps_per_epoch, 1)))


def score_for(settings: TrainSettings) -> tuple[str, dict[str, float]]:
    """The settings' score reduction and its parameters, or the family's default: for patchcore the mean of the
    map's top share that one patch vector describes (`patchcore.footprint_percent`; docs/quality.md, row 108), or
    the whole map's mean where that is louder on the good images' scale (`map_topk_or_mean`, row 113; its scale
    is fitted once the model is, `fit_scoring`). `map_peaks` (draem's) gets its square from the frame's size
    (`peak_window`) unless given, counts no peak within half of it from the frame's edge unless a margin is
    given, and reads the input's uniqueness where the map speaks (its maximum and those peaks) in squares from the
    frame's size (`unique_radius`) unless given; its scales too are fitted later."""
    name = settings.reduction or DEFAULT_REDUCTIONS.get(settings.family, DEFAULT_REDUCTION)
    if name == "map_peaks":
        window = settings.reduction_params.get("window", peak_window(settings.height, settings.width))
        return name, {"window": window, "margin": int(window) // 2,
                      "unique_radius": unique_radius(settings.height, settings.width), **settings.reduction_params}
    if settings.reduction or settings.reduction_params or settings.family != "patchcore":
        return name, settings.reduction_params
    h = hparams_for(settings)
    return name, {"top_percent": footprint_percent(settings.height, settings.width, h["layers"], h["pool"])}


def peak_window(height: int, width: int) -> int:
    """`map_peaks`' square: a quarter of the frame's shorter side, odd (65 px at 256x256; docs/quality.md, row
    132: with the margin of half of it, 33 and 49 px did less; row 129: a 9-px square helped less)."""
    return min(height, width) // 4 // 2 * 2 + 1


def unique_radius(height: int, width: int) -> int:
    """`map_peaks`' uniqueness squares' radius: 3 px at 256x256 (squares of 7 px), scaled with the frame's shorter
    side (docs/quality.md, row 140: 4 did about as well, 2 and 5 less, 6 and more worse)."""
    return max(1, round(3 * min(height, width) / 256))


def check_settings(settings: TrainSettings) -> None:
    """Raise ValueError for a family, size, reduction or device that cannot work, before any image is read."""
    channels = 1 if settings.channels == "auto" else settings.channels
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1, 3 or auto, got {settings.channels!r}")
    if settings.family == AUTO:
        if settings.hparams:
            raise ValueError("hyper-parameters need a family: family auto fits more than one "
                             f"(--family {' or '.join(AUTO_FAMILIES)} with --hparam)")
        for family in AUTO_FAMILIES:  # --scales is draem's: the others are checked without it
            try:
                check_settings(settings.model_copy(update={
                    "family": family, "scales": settings.scales if family == "draem" else "auto"}))
            except ValueError as exc:
                raise ValueError(f"family auto fits {' and '.join(AUTO_FAMILIES)}, and {exc}") from None
        return
    model = build_model(settings.family, int(channels), settings.height, settings.width, **hparams_for(settings))
    if "scales" in settings.hparams:
        raise ValueError("set draem's scales with the scales setting (--scales), not as a hyper-parameter")
    if settings.scales != "auto":
        if not hasattr(model, "map_at"):
            raise ValueError(f"scales apply to family draem, not {settings.family!r}")
        check_scales(settings.scales)
    reduction, params = score_for(settings)
    make_reduction(reduction, params)
    if reduction_output(reduction) != output_kind(settings.family):
        raise ValueError(f"score reduction {reduction!r} reads a {reduction_output(reduction).replace('_', ' ')}, "
                         f"but family {settings.family!r} outputs a {output_kind(settings.family).replace('_', ' ')}")
    resolve_device(settings.device)


def load_split(data: Path, settings: TrainSettings, warn: Callable[[str], None] | None = None,
               progress: bool = False) -> Split:
    """Load the good images (DIR/good when present) and split them deterministically; ValueError if too few."""
    folder, note = training_folder(Path(data))
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    images = load_folder(folder, settings.height, settings.width, settings.channels,  # type: ignore[arg-type]
                         warn=warn, progress=progress, fit=settings.fit, contrast=settings.contrast)
    n = len(images)
    skipped = f" ({len(images.skipped)} unreadable skipped)" if images.skipped else ""
    if n == 0:
        raise ValueError(f"{folder}: no readable images{skipped}")
    if n < MIN_IMAGES:
        raise ValueError(f"{folder}: found {n} readable image{skipped}; training needs at least {MIN_IMAGES} "
                         "(some to train on, some held out to set the threshold)")
    n_val = min(max(1, int(round(n * settings.val_fraction))), n - 1)
    order = np.random.default_rng(settings.seed).permutation(n)
    split = Split(data=images, train_idx=np.sort(order[n_val:]), val_idx=np.sort(order[:n_val]), note=note)
    if n < FEW_IMAGES:
        split.warnings.append(f"only {n} good images: the model and its threshold will be rough; "
                              "a few hundred are better")
    return split


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Deterministic:
    """Context: deterministic torch algorithms on, restored on exit."""

    def __enter__(self) -> None:
        self._prev = (torch.are_deterministic_algorithms_enabled(),
                      torch.is_deterministic_algorithms_warn_only_enabled(),
                      torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True

    def __exit__(self, *exc: object) -> None:
        enabled, warn_only, bench, det = self._prev
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.backends.cudnn.benchmark = bench
        torch.backends.cudnn.deterministic = det


def augment(x: torch.Tensor, cfg: Augment, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by a few pixels (reflecting at the edges) and jitter brightness and contrast."""
    b, _, h, w = x.shape  # (B, C, H, W)
    sy, sx = min(int(round(cfg.shift * h)), h - 1), min(int(round(cfg.shift * w)), w - 1)
    if sy or sx:
        dy = torch.randint(-sy, sy + 1, (b,), generator=gen).tolist()
        dx = torch.randint(-sx, sx + 1, (b,), generator=gen).tolist()
        padded = F.pad(x, (sx, sx, sy, sy), mode="reflect")  # (B, C, H + 2sy, W + 2sx)
        x = torch.stack([padded[i, :, sy + dy[i]:sy + dy[i] + h, sx + dx[i]:sx + dx[i] + w] for i in range(b)])
    if cfg.flip:
        for dim in (2, 3):
            mirror = (torch.rand(b, generator=gen) < 0.5).to(x.device).view(b, 1, 1, 1)
            x = torch.where(mirror, x.flip(dim), x)
    contrast = 1.0 + (torch.rand(b, generator=gen) * 2 - 1) * cfg.contrast
    brightness = (torch.rand(b, generator=gen) * 2 - 1) * cfg.brightness
    contrast = contrast.to(x.device).view(b, 1, 1, 1)
    brightness = brightness.to(x.device).view(b, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * contrast + mean + brightness).clamp_(0.0, 1.0)


def _batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled index batches; a last batch of one joins the previous one (batch norm needs two)."""
    order = torch.randperm(n, generator=gen)
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    for i, s in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else n
        yield order[s:end]


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimisation steps in one pass over n images (as _batches cuts them)."""
    steps = -(-n // batch_size)
    return steps - 1 if steps > 1 and n - (steps - 1) * batch_size == 1 else steps


def _train_loss(model: nn.Module, x: torch.Tensor, settings: TrainSettings, rng: np.random.Generator,
                defect_size: str) -> torch.Tensor:
    """The family's loss on one augmented batch: L2 reconstruction, or repair-and-segment (on random crops, with
    synthetic defects of `defect_size`, crop or image)."""
    if output_kind(settings.family) == ANOMALY_MAP:
        size = crop_size(x.shape[2], x.shape[3], int(getattr(model, "step", 1)), settings.crop)
        scales = defect_scales(defect_size, size, (x.shape[2], x.shape[3]))
        if size != (x.shape[2], x.shape[3]):
            x = random_crops(x, size, rng)
        return repair_loss(model, x, rng, scales=scales)
    return F.mse_loss(model(x), x)


def defect_scales(defect_size: str, crop: tuple[int, int], image: tuple[int, int]) -> tuple[float, float] | None:
    """The size scales of the synthetic defects painted on a training crop: None (sized to the crop), or for
    `defect_size` "image" drawn from the crop's shorter side to the image's (docs/quality.md, row 79)."""
    return (float(min(crop)), float(min(image))) if defect_size == "image" else None


def _size_check_step(settings: TrainSettings) -> int | None:
    """The step after which defect_size auto asks the good images (None where nothing is to choose: a size set,
    or a family without synthetic defects)."""
    auto = (settings.defect_size == "auto" and output_kind(settings.family) == ANOMALY_MAP
            and settings.family not in BANK_FAMILIES)
    return max(1, settings.min_steps // SIZE_CHECK_SHARE) if auto else None


@torch.no_grad()
def _val_loss(model: nn.Module, val: torch.Tensor, batch_size: int, family: str) -> float:
    """Mean loss on the held-out slice (with the same synthetic defects every time, for map families)."""
    model.eval()
    rng = np.random.default_rng(VAL_SEED)
    total = 0.0
    for s in range(0, len(val), batch_size):
        x = val[s:s + batch_size].float().div(255.0)
        if output_kind(family) == ANOMALY_MAP:
            total += repair_loss(model, x, rng).item() * len(x)
        else:
            total += F.mse_loss(model(x), x, reduction="sum").item() / x[0].numel()
    return total / len(val)


def _lr(settings: TrainSettings, progress: float) -> float:
    """Cosine decay from the learning rate to 0 as `progress` goes from 0 to 1."""
    return settings.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _budget_binds(epochs_left: int, epoch_seconds: float, seconds_left: float) -> bool:
    """Whether, at the pace of one epoch, the time budget ends training before the last epoch. Only then does the
    clock enter the learning-rate schedule, so that a run that fits its budget stays deterministic. The pace is the
    second epoch's (CLOCK_EPOCH): the first also holds the setup and the warm-up of the kernels, and a decision on
    it flipped from run to run for a set that takes 70% of its budget."""
    return epochs_left * epoch_seconds > seconds_left


def _deadline(max_minutes: float | None, started: float, budget_started: float | None) -> float:
    """When training must stop: `max_minutes` after the budget started, but not before the loop has had
    MIN_BUDGET_SHARE of them (`_floor`)."""
    if not max_minutes:
        return math.inf
    return max((started if budget_started is None else budget_started) + max_minutes * 60,
               _floor(max_minutes, started))


def _floor(max_minutes: float | None, started: float) -> float:
    """The earliest a training that started at `started` may be stopped: after MIN_BUDGET_SHARE of its budget."""
    return started + MIN_BUDGET_SHARE * max_minutes * 60 if max_minutes else -math.inf


@dataclass
class _Trained:
    """What one training loop produced (`_train`)."""

    model: nn.Module
    mixed: bool
    epochs: int
    epochs_run: float
    clocked: bool
    best_epoch: int
    best_loss: float
    stopped: str  # "epochs", "time budget", "defect size" (defect_size auto chose image: train again), "bank"
    history: list[dict[str, float]]
    size_chosen: dict[str, Any] | None = None


@dataclass
class _Fitted:
    """One family fitted and calibrated, not yet saved (`_fit_one`)."""

    model: nn.Module
    meta: dict[str, Any]
    trained: _Trained
    val_scores: np.ndarray
    score: Callable[[np.ndarray], np.ndarray]  # its scores of uint8 images, as calibration computed them (`_scorer`)
    dtype: torch.dtype  # the arithmetic they were computed in (the daemon's)
    scoring: tuple[str, dict[str, float]]  # the reduction they read, with its fitted parameters


def fit(split: Split, settings: TrainSettings, out: Path, progress: bool = False,
        budget_started: float | None = None) -> TrainResult:
    """Fit `settings.family` (with auto, each of AUTO_FAMILIES, keeping the one that `_fit_auto` chooses),
    calibrate it and save it to `out`; see `_fit_one`."""
    started = time.monotonic()
    if settings.family == AUTO:
        fitted = _fit_auto(split, settings, out, progress, budget_started)
    else:
        fitted = _fit_one(split, settings, out, progress, budget_started)
    trained = fitted.trained
    artifact = save_artifact(out, fitted.model, fitted.meta)
    return TrainResult(artifact=artifact, split=split, seconds=time.monotonic() - started,
                       epochs_run=trained.epochs_run, best_epoch=trained.best_epoch, best_val_loss=trained.best_loss,
                       stopped=trained.stopped, val_scores=fitted.val_scores, history=trained.history)


def _fit_auto(split: Split, settings: TrainSettings, out: Path, progress: bool,
              budget_started: float | None) -> _Fitted:
    """Fit each of AUTO_FAMILIES on the same split, ask each how well it tells the held-out good images from
    copies with synthetic defects (`inspector.choose`), and keep the one `choose.choose` picks. patchcore goes
    first (no gradient steps, a minute or two); draem trains in what is left of the time budget, less the time
    its own question will take (about what patchcore's took, which runs the slower network)."""
    auto_started = time.monotonic()
    budget_started = auto_started if budget_started is None else budget_started
    held_out = split.data.images[split.val_idx]
    fitted: dict[str, _Fitted] = {}
    asked: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    question = 0.0  # how long the last question took: the next one is given as long, inside the budget
    for family in AUTO_FAMILIES:
        budget = settings.max_minutes and max(settings.max_minutes - question / 60,
                                              MIN_BUDGET_SHARE * settings.max_minutes)
        one = settings.model_copy(update={"family": family, "max_minutes": budget})
        started = time.monotonic()
        fitted[family] = _fit_one(split, one, out, progress, budget_started, left_out=False)
        asking = time.monotonic()
        asked[family] = separation(_question_scorer(fitted[family], one, held_out), held_out)
        question = time.monotonic() - asking
        seconds[family], seconds[f"{family} question"] = round(asking - started, 2), round(question, 2)
    chosen = choose(asked, AUTO_PREFERRED, AUTO_MARGIN)
    best = fitted[chosen]
    if chosen in BANK_FAMILIES:  # its trained-on images are scored without their own patches only now, for the
        kept = settings.model_copy(update={"family": chosen})  # kept model: draem trained in that time
        threshold, calibrated = _threshold(best.model, split, kept, best.dtype, best.scoring, best.score,
                                           best.val_scores)
        best.meta.update(threshold=threshold, calibration=calibrate.good_stats(calibrated))
    best.meta["training"]["family_choice"] = {
        "chosen": chosen, "separation": asked, "preferred": AUTO_PREFERRED, "margin": AUTO_MARGIN,
        "seconds": seconds, "asked": min(int(len(split.val_idx)), PROBE_IMAGES),
    }
    best.meta["training"]["seconds"] = round(time.monotonic() - auto_started, 2)  # both fittings and questions
    return best


def _question_scorer(fitted: _Fitted, settings: TrainSettings,
                     held_out: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The scores the family question asks of a fitted model: its own, except that patchcore is asked with its
    bank's plain distances (`density` 0, its scale and score fitted on the held-out images as training fits them).
    The density weighting lowers patchcore's answer on synthetic defects while it raises its figures on real ones
    (docs/quality.md, row 133), and the rule's margin was set on the plain distances' answers."""
    model = fitted.model
    if not getattr(model, "density", 0):
        return fitted.score
    device, dtype = resolve_device(settings.device), fitted.dtype
    plain = plain_distances(cast(Any, model), to_tensor(held_out, device, 1.0).to(torch.uint8), settings.batch_size,
                            dtype)
    return _scorer(plain, settings, dtype, fit_scoring(plain, settings, dtype, held_out, score_for(settings)))


def _scorer(model: nn.Module, settings: TrainSettings, dtype: torch.dtype,
            scoring: tuple[str, dict[str, float]]) -> Callable[[np.ndarray], np.ndarray]:
    """The model's scores of uint8 images with a reduction and its parameters, in `dtype` (the daemon's
    arithmetic)."""
    device = resolve_device(settings.device)
    reduce = make_reduction(*scoring)
    output = output_kind(settings.family)
    return lambda images: run(model, images, {"score": reduce}, device, settings.batch_size, output=output,
                              dtype=dtype).scores["score"]


@torch.no_grad()
def _left_out_scores(model: nn.Module, settings: TrainSettings, dtype: torch.dtype, images: np.ndarray,
                     scoring: tuple[str, dict[str, float]]) -> np.ndarray:
    """A bank model's scores of the uint8 images its bank was built from (in that order), each image's own bank
    vectors left out of its nearest-vector search (`PatchCore.distances`' exclude), in `dtype`."""
    device = resolve_device(settings.device)
    reduce = make_reduction(*scoring)
    module = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
    out = []
    for s in range(0, len(images), settings.batch_size):
        x = to_tensor(images[s:s + settings.batch_size], device).to(dtype)
        maps = module(x, torch.arange(s, s + len(x), device=device))
        out.append(reduce(x.float(), maps.float()).double().cpu().numpy())
    return np.concatenate(out)


def fit_scoring(model: nn.Module, settings: TrainSettings, dtype: torch.dtype, good: np.ndarray,
                scoring: tuple[str, dict[str, float]]) -> tuple[str, dict[str, float]]:
    """The reduction with what it learns from good images (uint8) added, unless given: `map_topk_or_mean`'s scale
    of the whole map's mean (`mean_scale`), `map_peaks`' scale of the peak mean (`peaks_scale`); any other
    reduction as it is."""
    name, params = scoring
    if name == "map_peaks" and "peaks_gain" not in params and "peaks_shift" not in params:
        peak_params = {k: v for k, v in params.items() if k in ("window", "pool", "peaks", "margin")}
        radius = int(params.get("unique_radius", 0))
        readings = _readings(model, settings, dtype, good, {
            "max": make_reduction("map_max"), "peaks": functools.partial(map_peak_mean, **peak_params),
            **({"unique": functools.partial(map_peaks_uniqueness, **peak_params, radius=radius)}
               if radius > 0 else {})})
        fitted = {**params, **peaks_scale(readings["max"], readings["peaks"])}
        if radius > 0 and "unique_gain" not in params and "unique_shift" not in params:
            fitted.update(uniqueness_scale(readings["max"], readings["unique"]))
        return name, fitted
    if name != "map_topk_or_mean" or "mean_gain" in params or "mean_shift" in params:
        return scoring
    top = params.get("top_percent", 0.1)
    readings = _readings(model, settings, dtype, good, {"top": make_reduction("map_topk", {"top_percent": top}),
                                                        "mean": map_mean})
    return name, {**params, **mean_scale(readings["top"], readings["mean"])}


def _readings(model: nn.Module, settings: TrainSettings, dtype: torch.dtype, good: np.ndarray,
              reductions: dict[str, Any]) -> dict[str, np.ndarray]:
    return run(model, good, reductions, resolve_device(settings.device), settings.batch_size,
               output=output_kind(settings.family), dtype=dtype).scores


def peaks_scale(top: np.ndarray, peaks: np.ndarray) -> dict[str, float]:
    """`map_peaks`' peaks_gain and peaks_shift from good images' map maxima and peak means: the peak mean
    standardised on them, then given the maximum's spread and centred on 0, so that the score is the maximum plus
    how far the loudest peaks stand above good images', each in its own good images' spread (docs/quality.md,
    row 129's sum of z-scores, on the maximum's scale). Fewer than MIN_SCALE_IMAGES images give no gain: `map_max`."""
    gain, shift = _on_max_spread(top, peaks)
    return {"peaks_gain": gain, "peaks_shift": shift}


def uniqueness_scale(top: np.ndarray, unique: np.ndarray) -> dict[str, float]:
    """`map_peaks`' unique_gain and unique_shift from good images' map maxima and the input's uniqueness where their
    maps speak (`map_peaks_uniqueness`), as `peaks_scale` scales the peaks: standardised on them, then given the
    maximum's spread and centred on 0, so that a loud spot on a structure the frame repeats counts less than one on
    something unlike the rest of the frame (docs/quality.md, row 140). Fewer than MIN_SCALE_IMAGES images give no
    gain."""
    gain, shift = _on_max_spread(top, unique)
    return {"unique_gain": gain, "unique_shift": shift}


def _on_max_spread(top: np.ndarray, reading: np.ndarray) -> tuple[float, float]:
    """(gain, shift) that give good images' `reading` their maxima's spread, centred on 0 (`_spread_match` to the
    maximum's centre, then that centre taken off: the term is 0 on average); (0, 0) where that gives no gain."""
    gain, shift = _spread_match(top, reading)
    return gain, (shift - float(np.mean(top))) if gain else 0.0


def mean_scale(top: np.ndarray, mean: np.ndarray) -> dict[str, float]:
    """`map_topk_or_mean`'s mean_gain and mean_shift from good images' two readings (their top-share means and
    whole-map means): the whole-map mean standardised on them, then given the top-share mean's centre and spread,
    so that each reading counts in the spread of its own good images (docs/quality.md, row 113). Fewer than
    MIN_SCALE_IMAGES images give no gain: two spreads from so few would be guesses."""
    gain, shift = _spread_match(top, mean)
    return {"mean_gain": gain, "mean_shift": shift}


def _spread_match(target: np.ndarray, reading: np.ndarray) -> tuple[float, float]:
    """(gain, shift) that give good images' `reading` the centre and spread of their `target`; (0, 0) for fewer
    than MIN_SCALE_IMAGES images or a reading with no spread (nothing to scale by)."""
    target, reading = np.asarray(target, np.float64), np.asarray(reading, np.float64)
    spread = float(reading.std())
    if len(target) < MIN_SCALE_IMAGES or spread <= 1e-12 * max(1.0, abs(float(reading.mean()))):
        return 0.0, 0.0
    gain = float(target.std()) / spread
    return gain, float(target.mean()) - gain * float(reading.mean())


def _fit_one(split: Split, settings: TrainSettings, out: Path, progress: bool = False,
             budget_started: float | None = None, left_out: bool = True) -> _Fitted:
    """Train on the split, keep the best validation checkpoint, calibrate (`settings.threshold_from`).

    The time budget (`settings.max_minutes`) runs from `budget_started` (a `time.monotonic()` reading; default:
    now), so that a caller can count the reading of the images in it. Training still gets at least
    `MIN_BUDGET_SHARE` of the budget, however long the reading took.

    With `defect_size` auto (draem), training asks the held-out good images after min_steps / SIZE_CHECK_SHARE
    steps whether the part looks the same to the model at half size. If it does, training starts again from
    scratch with defects up to the image's size, so the model is the one `defect_size` image trains (the first
    steps cost about a sixth of the default training); if not, it goes on with crop-sized defects. `left_out`
    False: a bank family's threshold from the held-out images alone, for now (`_fit_auto` pools the kept one's)."""
    started = time.monotonic()
    device = resolve_device(settings.device)
    images = split.data.images
    hparams = hparams_for(settings)
    deadline = _deadline(settings.max_minutes, started, budget_started)
    floor = _floor(settings.max_minutes, started)
    dtype = resolve_dtype("auto", device, output_kind(settings.family))  # the daemon's default arithmetic
    size_check = _size_check_step(settings)
    after = len(split.train_idx) if settings.threshold_from == "auto" else 0  # scored for the threshold
    if settings.family in BANK_FAMILIES:
        trained = _fill_bank(split, settings, hparams, device, dtype)
        hparams = {**hparams, "bank": int(cast(Any, trained.model).bank.shape[0])}
    else:
        trained = _train(split, settings, hparams, device, deadline, dtype, size_check,
                         "training" if progress else None, after, floor)
    if trained.stopped == "defect size":
        asked = trained.size_chosen
        trained = _train(split, settings.model_copy(update={"defect_size": "image"}), hparams, device, deadline,
                         dtype, None, "training again, with defects up to the image's size" if progress else None,
                         after, floor)
        trained.size_chosen = asked
    model = trained.model
    train_seconds = time.monotonic() - started
    scoring = score_for(settings)
    scales_chosen = None
    if hasattr(model, "map_at"):  # draem: its views of the frame, from the held-out good images or as set
        if settings.scales == "auto":
            scales, scales_chosen = choose_scales(model, images[split.val_idx], device, settings.batch_size, dtype)
        else:
            scales = check_scales(settings.scales)
        cast(Any, model).scales = scales  # a Draem (it has map_at)
        hparams = {**hparams, "scales": scales}

    scoring = fit_scoring(model, settings, dtype, images[split.val_idx], scoring)
    score = _scorer(model, settings, dtype, scoring)
    val_scores = score(images[split.val_idx])
    threshold, calibrated = _threshold(model, split, settings, dtype, scoring, score, val_scores, left_out)
    size_chosen = trained.size_chosen or (defect_size_unasked(size_check) if size_check else None)
    meta = _meta(split, settings, hparams, scoring, threshold, calibrate.good_stats(calibrated), out, device, {
        "precision": "bf16" if trained.mixed else "fp32", "seconds": round(train_seconds, 2),
        "epochs": trained.epochs, "epochs_run": round(trained.epochs_run, 3), "clocked_schedule": trained.clocked,
        "best_epoch": trained.best_epoch, "best_val_loss": trained.best_loss, "stopped_by": trained.stopped,
        "history": trained.history, **({"scales": scales_chosen} if scales_chosen else {}),
        **({"defect_size": size_chosen} if size_chosen else {}),
    })
    return _Fitted(model, meta, trained, val_scores, score, dtype, scoring)


def _threshold(model: nn.Module, split: Split, settings: TrainSettings, dtype: torch.dtype,
               scoring: tuple[str, dict[str, float]], score: Callable[[np.ndarray], np.ndarray],
               val_scores: np.ndarray, left_out: bool = True) -> tuple[ThresholdSpec, np.ndarray]:
    """The threshold (`settings.threshold_from`) and the good scores it was set on. With auto the trained-on images
    join the held-out ones (`calibrate.all_good_quantile`); a bank holds their own patches, so for a bank family
    (with `left_out`) each is scored without them, as if held out, at the held-out images' median: their level
    differs a little, their tail is ten times as many images' (docs/quality.md, row 135). Should the held-out
    images refuse that pool, its threshold is raised until they do not (`calibrate.left_out_pool`, row 138)."""
    images = split.data.images
    bank = settings.family in BANK_FAMILIES
    rate = settings.target_false_reject
    if settings.threshold_from == "auto" and bank and left_out and len(split.train_idx) > 1:
        left = _left_out_scores(model, settings, dtype, images[split.train_idx], scoring)
        threshold, calibrated = calibrate.left_out_pool(val_scores, left, rate)
    else:
        seen = score(images[split.train_idx]) if settings.threshold_from == "auto" and not bank else np.zeros(0)
        threshold, calibrated = calibrate.all_good_quantile(val_scores, seen, rate)
    threshold.details["arithmetic"] = precision_name(dtype)
    return threshold, calibrated


def _train(split: Split, settings: TrainSettings, hparams: dict[str, Any], device: torch.device, deadline: float,
           dtype: torch.dtype, size_check: int | None, bar_label: str | None, after: int = 0,
           floor: float = -math.inf) -> _Trained:
    """One training loop from the seed: the best validation checkpoint, loaded and in eval mode. With
    `size_check` (defect_size auto) it reads the held-out good images' loudness at a few steps up to that one
    (`scales.size_reading_steps`), asks them there which size the defects should be, and returns at once,
    stopped by "defect size", where the answer is image. `bar_label`: the progress bar's label, or None for no
    bar. `after`: how many images will be scored once training ends, beyond the held-out ones; the loop stops
    early enough for that, at the pace of the first epoch's validation, but not before `floor` (the share of
    the budget that training always gets)."""
    started = time.monotonic()
    images = split.data.images
    with _Deterministic():
        seed_everything(settings.seed)
        gen = torch.Generator().manual_seed(settings.seed)
        model = build_model(settings.family, split.data.channels, settings.height, settings.width, **hparams)
        model = model.to(device)
        train_u8 = to_tensor(images[split.train_idx], device, 1.0).to(torch.uint8)  # (N, C, H, W)
        val_u8 = to_tensor(images[split.val_idx], device, 1.0).to(torch.uint8)
        opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
        rng = np.random.default_rng(settings.seed)  # crops and synthetic defects
        maps = output_kind(settings.family) == ANOMALY_MAP
        mixed = settings.precision == "bf16" or (settings.precision == "auto" and maps and fast_bf16(device))
        n = len(train_u8)
        steps = steps_per_epoch(n, settings.batch_size)
        epochs = epochs_for(settings, steps)
        best_state, best_loss, best_epoch = copy.deepcopy(model.state_dict()), math.inf, 0
        history: list[dict[str, float]] = []
        stopped, epochs_run = "epochs", 0.0
        clocked = False  # the schedule also follows the clock (_budget_binds), decided after CLOCK_EPOCH
        defect_size: str = "crop" if settings.defect_size == "auto" else settings.defect_size
        size_chosen = None
        reading_steps, readings = (size_reading_steps(size_check) if size_check else ()), {}
        epoch_ended = started
        budget = deadline - started  # the training loop's share of the budget
        with Progress(epochs * steps, bar_label or "", enabled=bar_label is not None) as bar:
            for epoch in range(1, epochs + 1):
                model.train()
                seen, loss_sum, done = 0, 0.0, 0
                for idx in _batches(n, settings.batch_size, gen):
                    x = augment(train_u8[idx.to(device)].float().div_(255.0), settings.augment, gen)
                    if maps:  # cosine learning-rate decay (the autoencoders keep a constant rate)
                        progress_now = (epoch - 1 + done / steps) / epochs
                        if clocked:  # the budget binds: the decay ends at the deadline
                            progress_now = max(progress_now, (time.monotonic() - started) / budget)
                        lr = _lr(settings, progress_now)
                        for group in opt.param_groups:
                            group["lr"] = lr
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed):
                        loss = _train_loss(model, x, settings, rng, defect_size)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    loss_sum += loss.item() * len(idx)
                    seen += len(idx)
                    done += 1
                    step = (epoch - 1) * steps + done
                    if step in reading_steps:  # larger defects where the part looks the same at half size
                        readings[step] = loudness(model, images[split.val_idx], device, settings.batch_size, dtype)
                        model.train()
                    if step == size_check:
                        defect_size, size_chosen = choose_defect_size(readings, size_check)
                        if defect_size == "image":
                            stopped = "defect size"
                            break
                    bar.update(postfix=f"epoch {epoch} loss {loss_sum / seen:.5f} best val {best_loss:.5f}")
                    if time.monotonic() > deadline:
                        stopped = "time budget"
                        break
                if stopped == "defect size":
                    break
                val_started = time.monotonic()
                val = _val_loss(model, val_u8, settings.batch_size, settings.family)
                epochs_run += done / steps
                now = time.monotonic()
                if epoch == 1 and after:  # time for scoring the trained-on images too, inside the budget
                    deadline = max(deadline - after * (now - val_started) / len(val_u8), floor)
                    budget = deadline - started
                if epoch == CLOCK_EPOCH and math.isfinite(deadline):
                    clocked = _budget_binds(epochs - epoch, now - epoch_ended, deadline - now)
                epoch_ended = now
                history.append({"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "val_loss": val,
                                "seconds": round(now - started, 2)})
                if val < best_loss:
                    best_loss, best_epoch = val, epoch
                    best_state = copy.deepcopy(model.state_dict())
                if stopped != "epochs":
                    break
        model.load_state_dict(best_state)
        model.eval()
    return _Trained(model, mixed, epochs, epochs_run, clocked, best_epoch, best_loss, stopped, history, size_chosen)


def _fill_bank(split: Split, settings: TrainSettings, hparams: dict[str, Any], device: torch.device,
               dtype: torch.dtype) -> _Trained:
    """A bank family's model: pretrained features, and a coreset of the training slice's patches as its bank."""
    started = time.monotonic()
    images = split.data.images
    with _Deterministic():
        seed_everything(settings.seed)
        model = build_model(settings.family, split.data.channels, settings.height, settings.width,
                            **{**hparams, "bank": 0})
        load_pretrained(cast(Any, model).trunk)
        model = model.to(device)
        done = build_bank(cast(Any, model), to_tensor(images[split.train_idx], device, 1.0).to(torch.uint8),
                          to_tensor(images[split.val_idx], device, 1.0).to(torch.uint8), int(hparams["bank"]),
                          settings.batch_size, dtype)
    history = [{"epoch": 1, **done, "seconds": round(time.monotonic() - started, 2)}]
    return _Trained(model, False, 1, 1.0, False, 1, 0.0, "bank", history)


def _meta(split: Split, settings: TrainSettings, hparams: dict[str, Any], scoring: tuple[str, dict[str, float]],
          threshold: Any, stats: Any, out: Path, device: torch.device, outcome: dict[str, Any]) -> dict[str, Any]:
    data = split.data
    return {
        "name": Path(out).resolve().name,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "family": settings.family,
        "output": output_kind(settings.family),
        "hparams": hparams,
        "input": {"height": settings.height, "width": settings.width, "channels": data.channels,
                  "scale": 255.0, "resize": "area", "fit": data.fit, "contrast": data.contrast},
        "score": {"reduction": scoring[0], "params": scoring[1]},
        "threshold": threshold,
        "calibration": stats,
        "data": {
            "folder": str(data.folder), "count": len(data), "train_count": int(len(split.train_idx)),
            "held_out_count": int(len(split.val_idx)), "content_hash": data.content_hash,
            "held_out_files": [data.paths[i].name for i in split.val_idx],
            "skipped_unreadable": len(data.skipped), "resized": data.resized,
            "original_sizes": sorted(f"{w}x{h}" for w, h in data.sizes)[:20],
        },
        "training": {
            "settings": settings.model_dump(mode="json"),
            "device": str(device), "torch_version": torch.__version__, "threads": torch.get_num_threads(),
            "deterministic": outcome["stopped_by"] != "time budget" and not outcome["clocked_schedule"], **outcome,
        },
    }

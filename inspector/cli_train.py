"""The training workflow commands: train, calibrate, evaluate, score.

Heavy modules (torch, training, inference) are imported inside the handlers, so `inspector --help` and the
daemon's commands stay fast. Bad input raises UsageError, which the CLI prints as one line (exit 2).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UsageError

if TYPE_CHECKING:
    from .artifact import Artifact
    from .dataset import ImageSet

_FORMATTER = argparse.RawDescriptionHelpFormatter
_METHODS = ("auto", "good-quantile", "best-f1", "target-false-reject", "two-modes")


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register train, calibrate, evaluate and score on the CLI's sub-parsers."""
    _add_train(sub)
    _add_calibrate(sub)
    _add_evaluate(sub)
    _add_score(sub)


# ----------------------------------------------------------------------------------------------- parsers

def _add_train(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "train", help="train a model on good images and calibrate it", formatter_class=_FORMATTER,
        description=(
            "Train a model on images of good parts, keep the checkpoint with the lowest validation loss, set\n"
            "the threshold on the good images (checked on a held-out slice), and write the model directory. By\n"
            "default (--family auto) it fits two families and keeps the one that better tells the held-out good\n"
            "images from copies with synthetic defects: patchcore, a bank of good patches' features from an\n"
            "ImageNet-pretrained network (no training steps), unless draem, which learns to repair and segment\n"
            "synthetic defects painted on the good images, does clearly better. conv-ae and dense-ae are plain\n"
            "autoencoders. Training stops after --max-minutes (default 9; auto fits both inside it).\n\n"
            "Images: any common format, grayscale or colour, any size (all are resized to --size; folders of\n"
            "mixed sizes are fine). Unreadable files are skipped with a warning. If DIR has a good/ subfolder\n"
            "(as `inspector synth` writes), only DIR/good is used. The same command gives the same weights on\n"
            "the same machine (unless --max-minutes stops it; --max-minutes 0 sets no limit)."
        ),
        epilog="example:\n  inspector train --data data/synth --out models/demo --size 128 --epochs 30",
    )
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="folder of good images (or DIR/good)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="model directory to write, e.g. models/NAME")
    p.add_argument("--family", default="auto",
                   help="model family: auto (default: patchcore or draem, chosen from the good images), draem, "
                        "patchcore, conv-ae or dense-ae")
    p.add_argument("--size", default="256", metavar="N|WxH",
                   help="model input size: N for NxN or WIDTHxHEIGHT (default 256; auto and patchcore need "
                        "multiples of 32, draem and conv-ae of 16)")
    p.add_argument("--channels", default="auto", choices=("auto", "1", "3"),
                   help="1 gray, 3 colour, auto: 1 when every image is gray (default auto)")
    p.add_argument("--epochs", default="auto", metavar="N|auto",
                   help="training epochs; auto: 40, or more over a small set, enough for 3000 steps (default auto)")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per step (default 16)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 0.001)")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="share of images held out for validation and calibration (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--max-minutes", type=float, default=9.0, metavar="M",
                   help="stop training M minutes after the images start being read, keeping the best checkpoint "
                        "(default 9; 0: no limit)")
    p.add_argument("--reduction", default=None, metavar="NAME",
                   help="score reduction: map_max, map_peaks, map_topk or map_topk_or_mean (draem, patchcore); mse, "
                        "diff_std, smoothed_max or topk_mean (autoencoders) (default: the family's)")
    p.add_argument("--hparam", action="append", default=[], metavar="KEY=VALUE",
                   help="family hyper-parameter, e.g. base_width=16 (repeatable)")
    p.add_argument("--target-false-reject", type=float, default=0.01, metavar="RATE",
                   help="false-reject rate the threshold aims for on good images (default 0.01)")
    p.add_argument("--threshold-from", default="auto", choices=("auto", "held-out"),
                   help="good images the threshold is set on: auto, all of them (trained-on and held-out), raised "
                        "just far enough where it rejects more held-out ones than the rate makes likely; held-out: "
                        "those alone (default auto)")
    p.add_argument("--no-augment", action="store_true", help="train without shifts and brightness jitter")
    p.add_argument("--flip", action="store_true", help="also mirror training images at random")
    p.add_argument("--crop", type=float, default=0.5, metavar="SHARE",
                   help="draem trains on random crops of this share of each side (default 0.5; 1: whole images)")
    p.add_argument("--defect-size", default="auto", choices=("auto", "crop", "image"),
                   help="draem's synthetic defects sized to the training crop, or each between the crop's side and "
                        "the image's (for parts whose defects are large regions); auto: crop, unless the held-out "
                        "good images look the same to the model at half size (the mean of readings at steps 400, "
                        "450 and 500), then training starts again with image (default)")
    p.add_argument("--scales", default="auto", metavar="auto|1[,F...]",
                   help="draem's views of the frame: 1 (full size) and coarser resize factors, e.g. 1,0.5, the map "
                        "their mean; auto: 0.5 added where the held-out good images' maps are clearly quieter there "
                        "(at most 0.95x) than at full size (default auto)")
    p.add_argument("--fit", default="auto", choices=("auto", "stretch", "pad"),
                   help="images of another aspect than the input's: stretched, padded (aspect kept, margins "
                        "reflected), or auto (padded when the training images' aspects differ)")
    p.add_argument("--contrast", default="auto", choices=("auto", "none", "stretch"),
                   help="grey levels: each image's 1st to 99th percentile stretched to 0-255, kept as captured "
                        "(none), or auto (stretched when the training images' contrasts differ)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="training arithmetic: auto (bf16 mixed precision for draem where the device computes it "
                        "natively and faster than fp32, else fp32), fp32 or bf16")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)


def _add_calibrate(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "calibrate", help="set a model's threshold from good (and defective) images", formatter_class=_FORMATTER,
        description=(
            "Score images with a model and set its threshold, written into model.json with how it was chosen.\n\n"
            "  --good DIR                 good-quantile: reject at most --target-false-reject of the good images\n"
            "  --good DIR --defect DIR    best-f1 (default) or, with --method target-false-reject, the\n"
            "                             good-quantile threshold, reporting the miss rate it gives\n"
            "  --unlabelled DIR           two-modes: mostly good parts with a few defects, unlabelled; the\n"
            "                             threshold splits the two modes of the (log) score distribution\n"
            "  --threshold VALUE          manual: set the value as given\n\n"
            "The good-score statistics stored with the threshold come from --good (for --unlabelled: from the\n"
            "images below the new threshold)."
        ),
    )
    p.add_argument("--model", type=Path, required=True, metavar="DIR", help="model directory")
    p.add_argument("--good", type=Path, metavar="DIR", help="folder of good images")
    p.add_argument("--defect", type=Path, metavar="DIR", help="folder of defective images")
    p.add_argument("--unlabelled", "--unlabeled", type=Path, metavar="DIR",
                   help="folder of unlabelled images, mostly good, a few defective")
    p.add_argument("--method", default="auto", choices=_METHODS, help="threshold method (default: from the inputs)")
    p.add_argument("--target-false-reject", type=float, default=0.01, metavar="RATE",
                   help="false-reject rate for good-quantile and target-false-reject, in (0, 1) (default 0.01)")
    p.add_argument("--threshold", type=float, metavar="VALUE", help="set this threshold (method manual)")
    p.add_argument("--dry-run", action="store_true", help="show the new threshold without writing it")
    _add_common(p)
    p.set_defaults(func=cmd_calibrate)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "evaluate", help="measure how well a model separates good from defective images",
        formatter_class=_FORMATTER,
        description=(
            "Score labelled images and report image-level AUROC, average precision, best F1, the miss rate\n"
            "at 1% and 5% false rejects and, at the model's threshold, the false-reject rate, the miss rate\n"
            "and the confusion matrix. Prints a table; writes OUT/report.json and OUT/report.html (ROC curve,\n"
            "score histograms with the threshold, and originals, reconstructions and error maps of the\n"
            "highest-scoring good images and the lowest- and highest-scoring defects)."
        ),
    )
    p.add_argument("--model", type=Path, required=True, metavar="DIR", help="model directory")
    p.add_argument("--good", type=Path, required=True, metavar="DIR", help="folder of good images")
    p.add_argument("--defect", type=Path, required=True, metavar="DIR", help="folder of defective images")
    p.add_argument("--report", type=Path, required=True, metavar="OUT", help="folder for report.json and report.html")
    p.add_argument("--cases", type=int, default=4, metavar="N", help="images per group in the picture grid (default 4)")
    _add_common(p)
    p.set_defaults(func=cmd_evaluate)


def _add_score(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "score", help="score images and print each verdict", formatter_class=_FORMATTER,
        description=(
            "Print each image's score and verdict (reject when the score is at or above the model's\n"
            "threshold). Images of another size than the model's input are resized, as the daemon does.\n"
            "A folder argument scores every image in it. Exit status 0 whatever the verdicts."
        ),
    )
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files or folders")
    p.add_argument("--model", type=Path, required=True, metavar="DIR", help="model directory")
    p.add_argument("--heatmap", type=Path, metavar="DIR", help="write an error heatmap overlay per image here")
    _add_common(p)
    p.set_defaults(func=cmd_score)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                   help="arithmetic of the forward pass; set it as the daemon's worker.precision is set, so that "
                        "scores and thresholds are the daemon's (default auto, the daemon's default)")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per forward pass (default 32)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


# ----------------------------------------------------------------------------------------------- helpers

def _warn(message: str) -> None:
    print(f"inspector: warning: {message}", file=sys.stderr)


def _note(message: str) -> None:
    print(f"inspector: {message}", file=sys.stderr)


def _parse_size(text: str) -> tuple[int, int]:
    """N -> (N, N); WxH -> (H, W)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if not m:
        raise UsageError(f"--size must be N or WIDTHxHEIGHT, e.g. 128 or 256x128; got {text!r}")
    w = int(m.group(1))
    h = int(m.group(2)) if m.group(2) else w
    if not (16 <= w <= 4096 and 16 <= h <= 4096):
        raise UsageError(f"--size must be between 16 and 4096 pixels per side; got {text!r}")
    return h, w


def _check_rate(rate: float, option: str = "--target-false-reject") -> float:
    if not (math.isfinite(rate) and 0.0 < rate < 1.0):
        raise UsageError(f"{option} must be between 0 and 1 (exclusive), e.g. 0.01 for 1%; got {rate:g}")
    return rate


def _parse_epochs(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    if not re.fullmatch(r"\s*\d+\s*", text):
        raise UsageError(f"--epochs must be a number of epochs or auto; got {text!r}")
    return _check_positive(int(text), "--epochs")


def _check_positive(value: int, option: str) -> int:
    if value < 1:
        raise UsageError(f"{option} must be at least 1; got {value}")
    return value


def _scales_line(scales: list[float], chosen: dict[str, Any] | None) -> str:
    """The summary's scales line: the views kept and, where training chose them, how loud each one was."""
    from .scales import QUIETER

    views = ", ".join(f"{f:g}" for f in scales)
    if chosen is None:
        return f"{views} (as set)"
    loud = dict(chosen["mean_max"])
    full = loud.pop("1.0")
    ratios = ", ".join(f"{float(f):g} of the side: {v / max(full, 1e-12):.2f}x" for f, v in loud.items())
    hint = "--scales 1 for the full size alone" if len(scales) > 1 else f"--scales 1,{','.join(loud)} to force"
    return f"{views} (held-out good maps at {ratios} as loud as at full size, kept when <= {QUIETER}x; {hint})"


def _defects_line(chosen: dict[str, Any]) -> str:
    """The summary's defects line: the size defect_size auto chose, and the loudness it chose it from."""
    from .scales import QUIETER

    if chosen["mean_max"] is None:
        return f"crop-sized (auto: {chosen['note']})"
    loud = chosen["mean_max"]
    ratio = f"held-out good maps at half size {loud['0.5'] / max(loud['1.0'], 1e-12):.2f}x as loud as at full size"
    if "readings" in chosen:
        when = f"at steps {', '.join(chosen['readings'])}, {ratio} on average"
    else:  # a model.json from before the readings: one step
        when = f"at step {chosen['at_step']}, {ratio}"
    if chosen["chosen"] == "image":
        return f"up to the image's size ({when}, <= {QUIETER}x, so training started again with " \
               "them; --defect-size crop to keep them crop-sized)"
    return f"crop-sized ({when}, > {QUIETER}x; --defect-size image to force larger ones)"


def _choice_line(choice: dict[str, Any]) -> str:
    """What `--family auto` chose and why, for the training summary."""
    sep, chosen, preferred = choice["separation"], choice["chosen"], choice["preferred"]
    others = ", ".join(f"{k}'s {v['mean']:.3f}" for k, v in sep.items() if k != chosen)
    rule = (f"{preferred} is kept unless another is ahead by more than {choice['margin']:g}; "
            f"--family {' or '.join(sep)} to force one")
    return (f"{chosen}, chosen from {', '.join(sep)} (auto): held-out good images against copies with synthetic "
            f"defects, mean AUROC {sep[chosen]['mean']:.3f} against {others} ({rule})")


def _parse_scales(text: str) -> str | list[float]:
    if text == "auto":
        return text
    try:
        return [float(f) for f in text.split(",")]
    except ValueError:
        raise UsageError(f"--scales must be auto or factors such as 1,0.5; got {text!r}") from None


def _parse_hparams(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--hparam must be KEY=VALUE, e.g. base_width=16; got {item!r}")
        value: Any = raw.strip()
        for conv in (int, float):
            try:
                value = conv(raw)
                break
            except ValueError:
                continue
        out[key.strip()] = value
    return out


def _device(spec: str) -> Any:
    from .device import resolve_device

    try:
        return resolve_device(spec)
    except ValueError as exc:
        raise UsageError(f"--device: {exc}") from None


def _load(folder: Path, option: str, artifact: Artifact, quiet: bool) -> ImageSet:
    """Images of a folder prepared for the model; UsageError when the folder is missing or has none."""
    from .dataset import load_folder

    if not folder.exists():
        raise UsageError(f"{option} {folder}: no such folder")
    if not folder.is_dir():
        raise UsageError(f"{option} {folder}: not a folder")
    from .images import list_images

    recursive = False
    if not list_images(folder):
        label = {"--good": "good", "--defect": "defect"}.get(option)
        if label and (folder / label).is_dir():
            _note(f"{option} {folder} has no images but a {label}/ subfolder: using {folder / label}")
            folder = folder / label
        elif option == "--unlabelled":
            recursive = True
    spec = artifact.meta.input
    data = load_folder(folder, spec.height, spec.width, spec.channels, warn=_warn, progress=not quiet,
                       recursive=recursive, **spec.preparation())
    if len(data) == 0:
        skipped = f" ({len(data.skipped)} unreadable)" if data.skipped else ""
        raise UsageError(f"{option} {folder}: no readable images{skipped}")
    _report_loaded(data, f"{option} {folder}", spec.width, spec.height)
    return data


def _report_loaded(data: ImageSet, what: str, width: int, height: int, training: bool = False) -> None:
    if data.skipped:
        _warn(f"{what}: skipped {len(data.skipped)} unreadable image(s) of {len(data) + len(data.skipped)}")
    if data.resized:
        how = " (padded, aspect kept)" if data.fit == "pad" else ""
        _note(f"{what}: resized {data.resized} image(s) to the model input {width}x{height}{how}")
    if data.contrast == "stretch" and not training:  # training says why, below
        _note(f"{what}: each image's grey levels stretched to the full range, as the model was trained")


def _load_artifact(path: Path) -> Artifact:
    from .artifact import load_artifact

    return load_artifact(path)


# ----------------------------------------------------------------------------------------------- train

def cmd_train(args: argparse.Namespace) -> int:
    """Train, calibrate on the good images, write the artifact, print a summary."""
    import torch
    from pydantic import ValidationError

    from .artifact import META_FILE, WEIGHTS_FILE
    from .model import BANK_FAMILIES
    from .train import (
        AUTO,
        AUTO_FAMILIES,
        DEFAULT_EPOCHS,
        Augment,
        TrainSettings,
        check_settings,
        epochs_for,
        fit,
        load_split,
        steps_per_epoch,
    )

    height, width = _parse_size(args.size)
    _check_rate(args.target_false_reject)
    epochs = _parse_epochs(args.epochs)
    _check_positive(args.batch_size, "--batch-size")
    if not 0.0 < args.val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be between 0 and 1 (exclusive); got {args.val_fraction:g}")
    if not args.max_minutes >= 0:
        raise UsageError(f"--max-minutes must be positive (or 0 for no limit); got {args.max_minutes:g}")
    if not args.data.is_dir():
        raise UsageError(f"--data {args.data}: {'not a folder' if args.data.exists() else 'no such folder'}")
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    if (out / META_FILE).exists() or (out / WEIGHTS_FILE).exists():
        if not args.overwrite:
            raise UsageError(f"--out {out}: already holds a model; pass --overwrite to replace it")
    elif out.is_dir() and any(out.iterdir()):
        raise UsageError(f"--out {out}: folder is not empty and holds no model; choose another")
    try:
        settings = TrainSettings(
            family=args.family, height=height, width=width,
            channels=args.channels if args.channels == "auto" else int(args.channels),
            hparams=_parse_hparams(args.hparam), epochs=epochs, batch_size=args.batch_size, lr=args.lr,
            val_fraction=args.val_fraction, seed=args.seed, device=args.device, max_minutes=args.max_minutes or None,
            reduction=args.reduction, target_false_reject=args.target_false_reject,
            augment=Augment(shift=0, brightness=0, contrast=0) if args.no_augment else Augment(flip=args.flip),
            crop=args.crop, defect_size=args.defect_size, scales=_parse_scales(args.scales),
            precision=args.precision, fit=args.fit, contrast=args.contrast, threshold_from=args.threshold_from,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UsageError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    try:
        check_settings(settings)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.threads:
        torch.set_num_threads(_check_positive(args.threads, "--threads"))

    reading = time.monotonic()  # the time budget counts the reading of the images too
    try:
        split = load_split(args.data, settings, warn=_warn, progress=not args.quiet)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    read_seconds = time.monotonic() - reading
    if split.note:
        _note(split.note)
    _report_loaded(split.data, f"--data {split.data.folder}", width, height, training=True)
    if settings.fit == "auto" and split.data.fit == "pad":
        aspects = sorted(w / h for w, h in split.data.sizes)
        _note(f"--data: the images' aspects (width/height) range from {aspects[0]:.2f} to {aspects[-1]:.2f}, so "
              "they are padded to the model input, not stretched (--fit stretch to stretch them)")
    if settings.contrast == "auto" and split.data.contrast == "stretch":
        low, high = split.data.spans
        _note(f"--data: the images' contrasts (1st to 99th percentile) span from {low} to {high} grey levels, so "
              "each image's grey levels are stretched to the full range (--contrast none to keep them)")
    for w in split.warnings:
        _warn(w)
    steps = steps_per_epoch(len(split.train_idx), settings.batch_size)
    epochs = epochs_for(settings, steps)
    if settings.epochs == "auto" and epochs > DEFAULT_EPOCHS and settings.family not in BANK_FAMILIES:
        _note(f"--epochs auto: {len(split.train_idx)} training images make {steps} step(s) per epoch, so {epochs} "
              f"epochs, for at least {settings.min_steps} steps (--epochs N to set them)")
    if settings.family == AUTO:
        _note(f"--family auto: fits {' then '.join(AUTO_FAMILIES)} inside the time budget and keeps the one that "
              "better tells the held-out good images from copies with synthetic defects (--family NAME for one)")
    result = fit(split, settings, out, progress=not args.quiet, budget_started=reading)

    meta = result.artifact.meta
    bank = meta.family in BANK_FAMILIES
    th = meta.threshold
    weights_mb = (out / WEIGHTS_FILE).stat().st_size / 1e6
    data = split.data
    how = (f"a bank of {meta.hparams['bank']} good patches" if bank else
           f"{result.epochs_run:.1f} of {epochs} epoch(s), stopped by {result.stopped}")
    print(f"trained {out} ({meta.family}, {width}x{height}x{data.channels}) in {result.seconds:.1f} s on "
          f"{meta.training['device']}: {how}")
    print(f"  data      {data.folder}: {len(data)} images ({len(split.train_idx)} train, {len(split.val_idx)} held "
          f"out), {len(data.skipped)} unreadable skipped, {data.resized} resized, read in {read_seconds:.1f} s; hash "
          f"{data.content_hash[:16]}")
    if "family_choice" in meta.training:
        print(f"  family    {_choice_line(meta.training['family_choice'])}")
    if not bank:
        print(f"  best      epoch {result.best_epoch}, validation loss {result.best_val_loss:.6f}")
    if "defect_size" in meta.training:
        print(f"  defects   {_defects_line(meta.training['defect_size'])}")
    if "scales" in meta.hparams:
        print(f"  scales    {_scales_line(meta.hparams['scales'], meta.training.get('scales'))}")
    cal = meta.calibration
    assert cal is not None  # train always calibrates
    params = ", ".join(f"{k} {v:g}" for k, v in meta.score.params.items())
    print(f"  score     {meta.score.reduction}{f' ({params})' if params else ''}; good scores mean {cal.mean:.4g}, "
          f"max {cal.max:.4g}")
    print(f"  threshold {th.value:.6g} ({th.method} on {th.details.get('calibrated_on', 'the good images')}, "
          f"target false-reject {args.target_false_reject:g})")
    if "note" in th.details:
        _warn(str(th.details["note"]))
    print(f"  artifact  {out}/{META_FILE}, {out}/{WEIGHTS_FILE} ({weights_mb:.2f} MB)")
    return 0


# ----------------------------------------------------------------------------------------------- calibrate

def _method(args: argparse.Namespace) -> str:
    """Resolve --method auto and check the method has the inputs it needs."""
    if args.unlabelled is not None and (args.good is not None or args.defect is not None):
        raise UsageError("--unlabelled cannot be combined with --good or --defect")
    if args.defect is not None and args.good is None:
        raise UsageError("--defect needs --good as well (the good images set the false-reject side)")
    if args.threshold is not None:
        if not (math.isfinite(args.threshold) and args.threshold > 0):
            raise UsageError(f"--threshold must be a positive number; got {args.threshold:g}")
        return "manual"
    if args.good is None and args.unlabelled is None:
        raise UsageError("give --good DIR (optionally with --defect DIR), --unlabelled DIR or --threshold VALUE")
    method = args.method
    if method == "auto":
        if args.unlabelled is not None:
            return "two-modes"
        return "best-f1" if args.defect is not None else "good-quantile"
    needs = {"good-quantile": "--good", "best-f1": "--good and --defect", "target-false-reject": "--good and --defect",
             "two-modes": "--unlabelled"}[method]
    ok = {"good-quantile": args.good is not None, "best-f1": args.defect is not None,
          "target-false-reject": args.defect is not None, "two-modes": args.unlabelled is not None}[method]
    if not ok:
        raise UsageError(f"--method {method} needs {needs}")
    return method


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Choose a threshold and write it into model.json."""
    import numpy as np

    _check_rate(args.target_false_reject)
    _check_positive(args.batch_size, "--batch-size")
    method = _method(args)
    artifact = _load_artifact(args.model)
    device = _device(args.device)
    from . import calibrate
    from .artifact import ThresholdSpec, write_meta

    def scores(folder: Path, option: str) -> Any:
        from .inference import score_artifact

        data = _load(folder, option, artifact, args.quiet)
        return score_artifact(artifact, data.images, device, args.batch_size,
                              progress=None if args.quiet else "scoring", precision=args.precision).scores["score"]

    good = scores(args.good, "--good") if args.good is not None else None
    defect = scores(args.defect, "--defect") if args.defect is not None else None
    unlabelled = scores(args.unlabelled, "--unlabelled") if args.unlabelled is not None else None
    rate = args.target_false_reject
    try:
        if method == "manual":
            spec = ThresholdSpec(value=float(args.threshold), method="manual", details={})
        elif method == "good-quantile":
            spec = calibrate.good_quantile(good, rate)
        elif method == "best-f1":
            spec = calibrate.best_f1(good, defect)
        elif method == "target-false-reject":
            spec = calibrate.target_false_reject(good, defect, rate)
        else:
            spec = calibrate.two_modes(unlabelled)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    sources = {k: str(v) for k, v in (("good", args.good), ("defect", args.defect), ("unlabelled", args.unlabelled))
               if v is not None}
    spec.details.update(sources=sources, calibrated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if method != "manual":
        from .device import precision_name, resolve_dtype

        spec.details["arithmetic"] = precision_name(resolve_dtype(args.precision, device, artifact.meta.output))
    stats_from = good if good is not None else (
        unlabelled[unlabelled < spec.value] if unlabelled is not None else None)
    stats = (calibrate.good_stats(stats_from) if stats_from is not None and len(stats_from)
             else artifact.meta.calibration)

    old = artifact.meta.threshold
    print(f"{args.model}: threshold {old.value:.6g} ({old.method}) -> {spec.value:.6g} ({spec.method})")
    if good is not None:
        fr = float(np.mean(good >= spec.value))
        print(f"  good        {len(good)} images, false-reject rate {fr:.2%} at the new threshold")
    if defect is not None:
        miss = float(np.mean(defect < spec.value))
        print(f"  defect      {len(defect)} images, miss rate {miss:.2%} at the new threshold")
    if unlabelled is not None:
        d = spec.details
        print(f"  unlabelled  {d['n']} images, {d['n_rejected']} above the threshold ({d['rejected_share']:.2%}), "
              f"mode separation (Ashman's D) {d['ashman_d']:.2f}")
        if not d["separated"]:
            _warn("the scores show no clear second mode; the threshold is the main mode's upper tail "
                  "(check it with labelled images)")
    if "note" in spec.details:
        _warn(str(spec.details["note"]))
    if args.dry_run:
        print("  dry run: model.json not changed")
        return 0
    meta = artifact.meta.model_copy(update={"threshold": spec, "calibration": stats})
    write_meta(args.model, meta)
    print(f"  written to {args.model}/model.json")
    return 0


# ----------------------------------------------------------------------------------------------- evaluate

def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score labelled images, print the metrics table, write the report."""
    import numpy as np

    _check_positive(args.batch_size, "--batch-size")
    if args.cases < 0:
        raise UsageError(f"--cases must be 0 or more; got {args.cases}")
    if args.report.exists() and not args.report.is_dir():
        raise UsageError(f"--report {args.report}: exists and is not a folder")
    artifact = _load_artifact(args.model)
    device = _device(args.device)
    from . import evaluate
    from .inference import heat_scale, score_artifact
    from .report import Case, write_report

    good_set = _load(args.good, "--good", artifact, args.quiet)
    defect_set = _load(args.defect, "--defect", artifact, args.quiet)
    progress = None if args.quiet else "scoring"
    good = score_artifact(artifact, good_set.images, device, args.batch_size, progress=progress,
                          precision=args.precision).scores["score"]
    defect = score_artifact(artifact, defect_set.images, device, args.batch_size, progress=progress,
                            precision=args.precision).scores["score"]
    meta = artifact.meta
    threshold = meta.threshold.value
    try:
        metrics = evaluate.summarize(good, defect, threshold)
    except ValueError as exc:  # e.g. a model whose output is not finite
        raise UsageError(f"cannot evaluate {args.model}: {exc}") from None

    groups = [
        ("highest-scoring good", good_set, np.argsort(-good, kind="stable")[:args.cases], good),
        ("lowest-scoring defect", defect_set, np.argsort(defect, kind="stable")[:args.cases], defect),
        ("highest-scoring defect", defect_set, np.argsort(-defect, kind="stable")[:args.cases], defect),
    ]
    cases = []
    for title, data, idx, sc in groups:
        if len(idx) == 0:
            continue
        maps = score_artifact(artifact, data.images[idx], device, args.batch_size, keep_maps=True,
                              precision=args.precision)
        assert maps.recon is not None and maps.errors is not None
        label = "good" if data is good_set else "defect"
        for j, i in enumerate(idx):
            cases.append(Case(title=title, name=data.paths[i].name, label=label, score=float(sc[i]),
                              image=data.images[i], recon=maps.recon[j], error=maps.errors[j]))
    report = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inspector_version": meta.inspector_version,
        "model": {"path": str(args.model), "name": meta.name, "family": meta.family,
                  "input": meta.input.model_dump(), "reduction": meta.score.reduction,
                  "threshold": threshold, "threshold_method": meta.threshold.method,
                  "weights_sha256": meta.weights_sha256},
        "data": {"good": {"folder": str(args.good), "count": len(good_set), "skipped": len(good_set.skipped),
                          "resized": good_set.resized, "content_hash": good_set.content_hash},
                 "defect": {"folder": str(args.defect), "count": len(defect_set), "skipped": len(defect_set.skipped),
                            "resized": defect_set.resized, "content_hash": defect_set.content_hash}},
        "metrics": metrics,
        "scores": {"good": {p.name: float(s) for p, s in zip(good_set.paths, good, strict=True)},
                   "defect": {p.name: float(s) for p, s in zip(defect_set.paths, defect, strict=True)}},
    }
    json_path, html_path = write_report(args.report, report, good, defect, threshold, cases,
                                        heat_scale(meta.score.reduction, threshold))
    _print_metrics(metrics, meta.score.reduction, threshold)
    print(f"report: {json_path}, {html_path}")
    return 0


def _print_metrics(m: dict[str, Any], reduction: str, threshold: float) -> None:
    at = m["at_threshold"]
    rows = [
        ("images", f"{m['n_good']} good, {m['n_defect']} defect"),
        ("score", reduction),
        ("AUROC", f"{m['auroc']:.4f}"),
        ("average precision", f"{m['average_precision']:.4f}"),
        ("best F1", f"{m['best_f1']:.4f} at threshold {m['best_f1_threshold']:.6g}"),
        *[(f"miss rate @ {float(k):.0%} false rejects", f"{v:.4f}") for k, v in m["miss_rate_at_false_reject"].items()],
        ("model threshold", f"{threshold:.6g}"),
        ("  false-reject rate", f"{at['false_reject_rate']:.4f} ({at['false_reject']} of {m['n_good']} good)"),
        ("  miss rate", f"{at['miss_rate']:.4f} ({at['miss']} of {m['n_defect']} defects)"),
        ("  confusion", f"good: {at['true_accept']} accepted / {at['false_reject']} rejected; "
                        f"defect: {at['miss']} accepted / {at['true_reject']} rejected"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


# ----------------------------------------------------------------------------------------------- score

def cmd_score(args: argparse.Namespace) -> int:
    """Print score and verdict per image; optionally write heatmap overlays."""
    import cv2

    from .dataset import load_files
    from .images import list_images
    from .inference import heat_scale, score_artifact
    from .preprocess import unfit
    from .report import overlay

    _check_positive(args.batch_size, "--batch-size")
    artifact = _load_artifact(args.model)
    device = _device(args.device)
    paths: list[Path] = []
    for item in args.images:
        if item.is_dir():
            paths.extend(list_images(item))
        elif item.exists():
            paths.append(item)
        else:
            _warn(f"{item}: no such file; skipped")
    if not paths:
        raise UsageError("no images to score")
    spec = artifact.meta.input
    data = load_files(paths, spec.height, spec.width, spec.channels, warn=_warn, progress=False,
                      **spec.preparation())
    if len(data) == 0:
        raise UsageError(f"none of the {len(paths)} file(s) could be read as an image")
    _report_loaded(data, "images", spec.width, spec.height)
    scored = score_artifact(artifact, data.images, device, args.batch_size, keep_maps=args.heatmap is not None,
                            precision=args.precision)
    scores = scored.scores["score"]
    threshold = artifact.meta.threshold.value
    vmax = heat_scale(artifact.meta.score.reduction, threshold)
    if args.heatmap is not None:
        if args.heatmap.exists() and not args.heatmap.is_dir():
            raise UsageError(f"--heatmap {args.heatmap}: exists and is not a folder")
        args.heatmap.mkdir(parents=True, exist_ok=True)
    width = max(len(str(p)) for p in data.paths)
    rejects = 0
    for i, (path, score) in enumerate(zip(data.paths, scores, strict=True)):
        verdict = "reject" if score >= threshold else "accept"
        rejects += verdict == "reject"
        line = f"{str(path):<{width}}  {score:.6g}  {verdict}"
        if args.heatmap is not None and scored.errors is not None:
            from .images import read_image

            original = read_image(path)
            base = original if original is not None else data.images[i]
            target = args.heatmap / f"{path.stem}_heatmap.png"
            cv2.imwrite(str(target), overlay(base, unfit(scored.errors[i], *base.shape[:2], spec.fit), vmax))
            line += f"  {target}"
        print(line)
    print(f"{len(data)} image(s): {rejects} reject, {len(data) - rejects} accept (threshold {threshold:.6g}, "
          f"{artifact.meta.score.reduction}); {len(data.skipped)} unreadable skipped")
    return 0

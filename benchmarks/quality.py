"""Detection quality of the default recipe on real data sets: train, calibrate, evaluate, time.

Each data set is a folder laid out as train/good/, test/good/, test/defect/ and optionally ground_truth/
(as ../shared/data/*/). For each, this runs `inspector train --data DIR/train/good --out TMP` (the default
recipe, plus any extra options given after `--`), keeps the threshold that training set on train/good
(never tuned on test labels), scores test/ and prints per data set: image AUROC, AP, miss rate (and test
false-reject rate) at the 1% and 5% thresholds of those good images (all of them, or the held-out slice
alone, as training chose: `inspector train --threshold-from`), the ROC miss rate at 1% test false rejects,
pixel AUROC where ground truth exists, training time and inference frames/s (batch 8, TorchScript,
channels_last, as the daemon runs it; the daemon's preprocessing excluded). Scoring runs on the CPU, with as
many threads as training is given (`-- --threads N`), else torch's default.

    python benchmarks/quality.py ../shared/data/magnetic_tile ../shared/data/deeppcb [--json out.json] \
        [--keep DIR] [-- --family conv-ae --max-minutes 2]
    python benchmarks/quality.py ../shared/data/magnetic_tile ../shared/data/deeppcb --trained DIR --views 2
    python benchmarks/quality.py ../shared/data/deeppcb --trained DIR --seg-views 2    # views of the segmenter only
    python benchmarks/quality.py ../shared/data/magnetic_tile --trained DIR --scales auto  # choose draem's scales
    python benchmarks/quality.py ../shared/data/deeppcb --trained DIR --threshold-from auto  # threshold afresh

The second form re-evaluates models kept by an earlier `--keep DIR` (no training; "train time" is then the
training time model.json records), here with two test-time views of draem, thresholds set afresh on the
good images as training set them. `--scales auto` gives a kept draem model the coarser views training now chooses
(from its held-out good images, `inspector.scales`), or the factors given (`--scales 1,0.75,0.5`).

Ground truth: masks ground_truth/defect/<name>.png (thresholded at 128), or boxes
ground_truth/defect_bboxes/<id>.txt (`x1 y1 x2 y2 ...` per line; <id> is the image name without a
trailing `_test`), rasterised. The images are read where they are; nothing is copied.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inspector import calibrate, evaluate  # noqa: E402
from inspector.artifact import Artifact, load_artifact  # noqa: E402
from inspector.cli import build_parser  # noqa: E402
from inspector.cli_train import _parse_scales  # noqa: E402
from inspector.dataset import load_folder  # noqa: E402
from inspector.device import resolve_dtype  # noqa: E402
from inspector.inference import score_artifact  # noqa: E402
from inspector.model import BANK_FAMILIES, VIEWS, check_scales  # noqa: E402
from inspector.preprocess import Fit, resize  # noqa: E402
from inspector.scales import choose_scales  # noqa: E402
from inspector.scoring import Reduction  # noqa: E402
from inspector.worker import compiled  # noqa: E402

PIXEL_STRIDE = 2  # pixel AUROC on every 2nd row and column of the maps (plenty of pixels, 4x faster)


def ground_truth(root: Path, image: Path, height: int, width: int, fit: Fit = "stretch") -> np.ndarray | None:
    """The defect mask of a test image at the model's input size, fitted as the images are (bool (H, W)), or
    None without ground truth."""
    mask_file = root / "ground_truth" / "defect" / f"{image.stem}.png"
    box_file = root / "ground_truth" / "defect_bboxes" / f"{image.stem.removesuffix('_test')}.txt"
    if mask_file.is_file():
        raw = cv2.imread(str(mask_file), cv2.IMREAD_GRAYSCALE)
        mask = (raw >= 128).astype(np.float32)
    elif box_file.is_file():
        h, w = cv2.imread(str(image), cv2.IMREAD_GRAYSCALE).shape
        mask = np.zeros((h, w), np.float32)
        for line in box_file.read_text().splitlines():
            values = line.replace(",", " ").split()
            if len(values) >= 4:
                x1, y1, x2, y2 = (int(float(v)) for v in values[:4])
                mask[y1:y2 + 1, x1:x2 + 1] = 1.0
    else:
        return None
    return resize(mask, height, width, fit, interpolation=cv2.INTER_AREA) >= 0.5


def frames_per_second(module: torch.nn.Module, reduce: Reduction, channels: int, height: int, width: int,
                      batch: int = 8, seconds: float = 5.0, output: str = "anomaly_map") -> float:
    """Model forward plus score reduction on the CPU, as the daemon's worker runs them (`worker.compiled`, in the
    arithmetic its default `precision = "auto"` picks for the model's output: bf16 for an anomaly map where the
    CPU computes it natively, else fp32)."""
    dtype = resolve_dtype("auto", torch.device("cpu"), output)
    x = torch.rand(batch, channels, height, width).to(dtype).contiguous(memory_format=torch.channels_last)
    module = copy.deepcopy(module).eval().to(dtype=dtype, memory_format=torch.channels_last)  # type: ignore[call-overload]
    model = compiled(module, x, None)
    with torch.inference_mode():
        for _ in range(3):
            reduce(x.float(), model(x).float())
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            reduce(x.float(), model(x).float())
            n += batch
    return n / (time.perf_counter() - t0)


def _views(module: Any) -> str:
    """The views column: "1", "2" (whole-model views) or "seg 2" (views of the segmenter only), and draem's
    scales where there are more than one ("1 at 1/0.75/0.5")."""
    seg = len(getattr(module, "seg_flips", []))
    views = f"seg {seg + 1}" if seg else str(len(getattr(module, "flips", [])) + 1)
    scales = getattr(module, "scales", [1.0])
    return f"{views} at {'/'.join(f'{f:g}' for f in scales)}" if len(scales) > 1 else views


def bench(root: Path, out: Path, extra: list[str], trained: bool = False, views: int | None = None,
          seg_views: int | None = None, scales: str | None = None,
          threshold_from: str | None = None) -> dict[str, Any]:
    """Train the recipe on root/train/good (or take the model already in `out`), evaluate on root/test; one
    result dict. `views` (`seg_views`) re-evaluates a draem model with that many test-time views (of the
    segmenter only), `scales` ("auto" or factors "1,0.75") with those scales, its thresholds then set afresh
    on the good images' scores as training set them (or as `threshold_from` says: "auto" or "held-out")."""
    t0 = time.monotonic()
    if not trained:
        cmd = [sys.executable, "-m", "inspector", "train", "--data", str(root / "train" / "good"), "--out",
               str(out), "--quiet", "--overwrite", *extra]
        subprocess.run(cmd, check=True, cwd=REPO)
    art = load_artifact(out)
    train_s = art.meta.training["seconds"] if trained else time.monotonic() - t0
    if views is not None:
        art.module.flips = VIEWS[views]  # type: ignore[union-attr]
    if seg_views is not None:
        art.module.seg_flips = VIEWS[seg_views]  # type: ignore[union-attr]
    spec, device = art.meta.input, torch.device("cpu")
    how = spec.preparation()  # as the model was trained
    good = load_folder(root / "test" / "good", spec.height, spec.width, spec.channels, **how)
    defect = load_folder(root / "test" / "defect", spec.height, spec.width, spec.channels, **how)
    train_good = load_folder(root / "train" / "good", spec.height, spec.width, spec.channels, **how)
    is_held = held_out_mask(art, train_good.paths, root / "train" / "good")
    val, seen = train_good.images[is_held], train_good.images[~is_held]
    if scales is not None:  # parsed as `inspector train --scales` parses them
        given = _parse_scales(scales)
        if isinstance(given, str):  # auto: as training chooses them
            given = choose_scales(art.module, val, device, 8, resolve_dtype("auto", device, art.meta.output))[0]
        cast(Any, art.module).scales = check_scales(given)
    sv = score_artifact(art, val, device).scores["score"]
    # the threshold's good images, as training chose them (models from before threshold_from: held-out only); a
    # bank holds its trained-on images' own patches, so theirs would join far too low: its thresholds set afresh
    # (the 5 % one, or any after --views and the like) read the held-out images alone
    rule = threshold_from or art.meta.training.get("settings", {}).get("threshold_from", "held-out")
    pooled = rule == "auto" and art.meta.family not in BANK_FAMILIES
    st = score_artifact(art, seen, device).scores["score"] if pooled else np.zeros(0)
    sg_all = score_artifact(art, good.images, device, keep_maps=True)
    sd_all = score_artifact(art, defect.images, device, keep_maps=True)
    sg, sd = sg_all.scores["score"], sd_all.scores["score"]
    row: dict[str, Any] = {
        "dataset": root.name, "family": art.meta.family, "size": f"{spec.width}x{spec.height}x{spec.channels}",
        "reduction": art.meta.score.reduction, "views": _views(art.module), "threshold_from": rule,
        "train_seconds": round(train_s, 1),
        "stopped_by": art.meta.training.get("stopped_by"), "epochs_run": art.meta.training.get("epochs_run"),
        "n_heldout": len(sv), "n_calibration": int(art.meta.calibration.count) if art.meta.calibration else None,
        "n_test_good": len(sg), "n_test_defect": len(sd),
        "auroc": evaluate.auroc(sg, sd), "ap": evaluate.average_precision(sg, sd),
        "roc_miss_at_1pct": evaluate.miss_rate_at_false_reject(sg, sd, 0.01)[0],
    }
    for rate in (0.01, 0.05):
        own = rate == 0.01 and all(x is None for x in (views, seg_views, scales, threshold_from))  # else afresh
        thr = art.meta.threshold.value if own else calibrate.all_good_quantile(sv, st, rate)[0].value
        c = evaluate.confusion(sg, sd, thr)
        row[f"miss_at_{rate:.0%}"] = c.miss_rate
        row[f"test_false_reject_at_{rate:.0%}"] = c.false_reject_rate
    row["pixel_auroc"] = pixel_auroc(root, defect.paths, sg_all.errors, sd_all.errors, spec.height, spec.width,
                                     spec.fit)
    row["frames_per_s"] = round(frames_per_second(art.module, art.reduction(), spec.channels, spec.height,
                                                  spec.width, output=art.meta.output), 1)
    return row


def held_out_mask(art: Artifact, paths: list[Path], folder: Path) -> np.ndarray:
    """Which of a model's training images (`paths`, read from `folder`) it held out (bool per path). Stops with
    a clear message when the model lists none, or lists files that the folder does not hold (another folder
    than the one it was trained on, or copies under other names)."""
    names = art.meta.data.get("held_out_files")
    if not names:
        raise SystemExit(f"{art.path}: model.json lists no held-out files (data.held_out_files)")
    held = set(names)
    missing = sorted(held - {p.name for p in paths})
    if missing:
        raise SystemExit(f"{folder}: {len(missing)} of the {len(held)} held-out files that {art.path}/model.json "
                         f"lists are not there (such as {missing[0]}); evaluate a model on the folder it was "
                         "trained on")
    return np.array([p.name in held for p in paths])


def pixel_auroc(root: Path, defect_paths: list[Path], good_maps: np.ndarray | None, defect_maps: np.ndarray | None,
                height: int, width: int, fit: Fit = "stretch") -> float | None:
    """AUROC of map pixels: defect pixels of the ground truth against every other pixel of the test images (with
    fit "pad", the reflected margins too, their masks reflected alike)."""
    if good_maps is None or defect_maps is None:
        return None
    masks = [ground_truth(root, p, height, width, fit) for p in defect_paths]
    if any(m is None for m in masks):
        return None
    s = PIXEL_STRIDE
    labels = np.stack([m for m in masks if m is not None])[:, ::s, ::s]
    negatives = np.concatenate([good_maps[:, ::s, ::s].ravel(), defect_maps[:, ::s, ::s][~labels]])
    positives = defect_maps[:, ::s, ::s][labels]
    return evaluate.auroc(negatives, positives) if positives.size else None


def scoring_threads(extra: list[str]) -> int | None:
    """The CPU threads that training is given among the extra options (`--threads N`), which scoring then
    takes too: several benchmarks run side by side (on a GPU host) must not each score on every core. Read by
    `inspector train`'s own parser, so that scoring takes exactly what training does."""
    return build_parser().parse_args(["train", "--data", ".", "--out", ".", *extra]).threads


def table(rows: list[dict[str, Any]]) -> str:
    """The results as a markdown table, one row per data set."""
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"
    lines = ["| data set | family | size | views | AUROC | AP | miss@1% | FR@1% | miss@5% | FR@5% | ROC miss@1% "
             "| pixel AUROC | train time | frames/s |", "|" + "---|" * 14]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['family']} | {r['size']} | {r['views']} | {f(r['auroc'])} | "
                     f"{f(r['ap'])} | {f(r['miss_at_1%'])} | {f(r['test_false_reject_at_1%'])} | "
                     f"{f(r['miss_at_5%'])} | {f(r['test_false_reject_at_5%'])} | {f(r['roc_miss_at_1pct'])} | "
                     f"{f(r['pixel_auroc'])} | "
                     f"{r['train_seconds'] / 60:.1f} min | {r['frames_per_s']:.0f} |")
    return "\n".join(lines)


def check_layout(parser: argparse.ArgumentParser, roots: list[Path]) -> None:
    """Exit with a usage error unless every data set folder has train/good, test/good and test/defect."""
    for root in roots:
        for sub in ("train/good", "test/good", "test/defect"):
            if not (root / sub).is_dir():
                parser.error(f"{root}: no {sub}/ folder")


def write_json(path: Path | None, rows: list[dict[str, Any]]) -> None:
    """The result rows as JSON at `path` (folders made), when a path is given."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run every data set, print the table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("datasets", nargs="+", type=Path, help="data set folders (train/good, test/good, test/defect)")
    p.add_argument("--keep", type=Path, help="keep the trained models under this folder")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--trained", type=Path, metavar="DIR",
                   help="evaluate the models already in DIR/<data set name> (a --keep folder) instead of training")
    p.add_argument("--views", type=int, choices=sorted(VIEWS), help="evaluate draem models with this many views")
    p.add_argument("--seg-views", type=int, choices=sorted(VIEWS),
                   help="evaluate draem models with this many views of the segmenter (one repair)")
    p.add_argument("--scales", metavar="auto|1[,F...]",
                   help="evaluate draem models at these scales, or those chosen from the held-out good images")
    p.add_argument("--threshold-from", choices=("auto", "held-out"),
                   help="with --trained: set the thresholds afresh on these good images (as `inspector train "
                        "--threshold-from`) instead of keeping the model's")
    args = p.parse_args(argv)
    if (args.views or 1) > 1 and (args.seg_views or 1) > 1:  # as Draem refuses them together
        p.error("--views and --seg-views are not taken together")
    torch.set_num_threads(scoring_threads(extra) or torch.get_num_threads())
    check_layout(p, args.datasets)
    rows = []
    for root in args.datasets:
        scratch = None  # a model neither kept nor given: trained into a temporary folder, removed after
        if args.trained:
            out = args.trained / root.name
        elif args.keep:
            out = args.keep / root.name
        else:
            scratch = Path(tempfile.mkdtemp(prefix=f"quality-{root.name}-"))
            out = scratch / "m"
        try:
            rows.append(bench(root, out, extra, trained=args.trained is not None, views=args.views,
                              seg_views=args.seg_views, scales=args.scales, threshold_from=args.threshold_from))
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        print(table(rows[-1:]), file=sys.stderr, flush=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; extra train options: {extra or 'none'}")
    print(table(rows))
    write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

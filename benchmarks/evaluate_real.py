"""Evaluate a model family (by default the conv-ae baseline) on real data sets, with every score reduction.

Each data set is a folder laid out as train/good/, test/good/, test/defect/ (as ../shared/data/*/). The
recipe trains on train/good (time-budgeted), holds out its usual slice of it, and for each reduction sets
the threshold at the 99% quantile of the held-out TRAIN good scores (never tuned on test labels). It prints
a markdown table: data set, image size, training time, and per reduction AUROC, AP, and the miss rate and
false-reject rate on the test set at that threshold, plus the ROC miss rate at 1% false rejects.

    python benchmarks/evaluate_real.py ../shared/data/magnetic_tile ../shared/data/deeppcb \
        --size 128 --max-minutes 4 --json reports/real.json

The images are read where they are; nothing is copied.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.quality import check_layout, write_json  # noqa: E402
from inspector import calibrate, evaluate  # noqa: E402
from inspector.dataset import load_folder  # noqa: E402
from inspector.device import resolve_device  # noqa: E402
from inspector.inference import run  # noqa: E402
from inspector.model import output_kind  # noqa: E402
from inspector.scoring import REDUCTIONS, make_reduction, reduction_output  # noqa: E402
from inspector.train import DEFAULT_REDUCTIONS, TrainSettings, fit, load_split  # noqa: E402

RATE = 0.01


def bench(root: Path, settings: TrainSettings, keep: Path | None) -> dict[str, Any]:
    """Train on root/train/good, score root/test with every reduction; one result dict."""
    out = keep / root.name if keep else Path(tempfile.mkdtemp(prefix=f"bench-{root.name}-"))
    split = load_split(root / "train" / "good", settings, progress=False)
    t0 = time.monotonic()
    result = fit(split, settings, out, progress=sys.stderr.isatty())
    train_s = time.monotonic() - t0
    model = result.artifact.module
    device = resolve_device(settings.device)
    spec = result.artifact.meta.input
    how = spec.preparation()  # as the model was trained
    good = load_folder(root / "test" / "good", spec.height, spec.width, spec.channels, **how)
    defect = load_folder(root / "test" / "defect", spec.height, spec.width, spec.channels, **how)
    reductions = {name: make_reduction(name) for name in REDUCTIONS
                  if reduction_output(name) == output_kind(settings.family)}
    val = run(model, split.data.images[split.val_idx], reductions, device).scores
    sg = run(model, good.images, reductions, device).scores
    sd = run(model, defect.images, reductions, device).scores
    rows = {}
    for name in reductions:
        threshold = calibrate.good_quantile(val[name], RATE).value
        c = evaluate.confusion(sg[name], sd[name], threshold)
        rows[name] = {
            "auroc": evaluate.auroc(sg[name], sd[name]),
            "ap": evaluate.average_precision(sg[name], sd[name]),
            "miss_at_1pct_heldout_threshold": c.miss_rate,
            "test_false_reject_at_that_threshold": c.false_reject_rate,
            "roc_miss_at_1pct": evaluate.miss_rate_at_false_reject(sg[name], sd[name], RATE)[0],
        }
    return {
        "dataset": root.name, "family": settings.family,
        "size": f"{spec.width}x{spec.height}x{spec.channels}", "train_seconds": train_s,
        "epochs_run": result.epochs_run, "best_val_loss": result.best_val_loss, "n_train": len(split.train_idx),
        "n_heldout": len(split.val_idx), "n_test_good": len(good), "n_test_defect": len(defect),
        "hparams": result.artifact.meta.hparams, "reductions": rows,
    }


def table(results: list[dict[str, Any]]) -> str:
    """The results as a markdown table, one row per data set and reduction."""
    lines = ["| data set | size | train time | reduction | AUROC | AP | miss@1% (held-out thr.) | test FR at it "
             "| ROC miss@1% |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for name, m in r["reductions"].items():
            mark = " (default)" if name == DEFAULT_REDUCTIONS.get(r["family"]) else ""
            lines.append(f"| {r['dataset']} | {r['size']} | {r['train_seconds'] / 60:.1f} min "
                         f"({r['epochs_run']:.0f} ep) | {name}{mark} | {m['auroc']:.3f} | {m['ap']:.3f} | "
                         f"{m['miss_at_1pct_heldout_threshold']:.3f} | {m['test_false_reject_at_that_threshold']:.3f} "
                         f"| {m['roc_miss_at_1pct']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run every data set, print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("datasets", nargs="+", type=Path, help="data set folders (train/good, test/good, test/defect)")
    p.add_argument("--family", default="conv-ae", help="model family (default conv-ae, the baseline)")
    p.add_argument("--size", type=int, default=128, help="input size (default 128)")
    p.add_argument("--channels", default="1", choices=("auto", "1", "3"), help="default 1 (grayscale)")
    p.add_argument("--max-minutes", type=float, default=4.0, help="training time budget per data set")
    p.add_argument("--epochs", type=int, default=200, help="epoch cap (the time budget usually stops first)")
    p.add_argument("--device", default="auto")
    p.add_argument("--hparam", action="append", default=[], metavar="KEY=VALUE", help="override a hyper-parameter")
    p.add_argument("--keep", type=Path, help="keep the trained models under this folder")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    hparams = {k: int(v) for k, v in (h.split("=", 1) for h in args.hparam)}
    settings = TrainSettings(family=args.family, height=args.size, width=args.size, epochs=args.epochs,
                             max_minutes=args.max_minutes,
                             device=args.device, hparams=hparams,
                             channels=args.channels if args.channels == "auto" else int(args.channels))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, recipe {settings.model_dump_json()}",
          file=sys.stderr)
    check_layout(p, args.datasets)
    results = []
    for root in args.datasets:
        results.append(bench(root, settings, args.keep))
        print(table(results[-1:]), file=sys.stderr)
    print(table(results))
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Frames/s of trained models, timed in alternating rounds so that a shared machine's swings hit them alike.

Each round times every model once with `benchmarks/quality.py`'s own loop (forward + score reduction, batch 8,
TorchScript, channels_last, the arithmetic the daemon's `precision = "auto"` picks); the table gives each
round's figure, the median, and the median's ratio to the first model's. Single timed runs swing by up to 30 %
on 2 shared cores, so compare medians of alternating rounds, never two separate runs.

    python benchmarks/model_speed.py M_OLD M_NEW [--rounds 5] [--seconds 3] [--batch 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.quality import _views, frames_per_second  # noqa: E402
from inspector.artifact import Artifact, load_artifact  # noqa: E402


def time_once(art: Artifact, batch: int, seconds: float) -> float:
    """Frames/s of one model, one timed run."""
    meta = art.meta
    return frames_per_second(art.module, art.reduction(), meta.input.channels, meta.input.height, meta.input.width,
                             batch=batch, seconds=seconds, output=meta.output)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", type=Path, help="model directories (model.json + weights.pt)")
    p.add_argument("--rounds", type=int, default=5, help="timed runs of each model, alternating (default 5)")
    p.add_argument("--seconds", type=float, default=3.0, help="length of one timed run (default 3)")
    p.add_argument("--batch", type=int, default=8, help="frames per forward pass (default 8)")
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    arts = [load_artifact(m) for m in args.models]
    runs: list[list[float]] = [[] for _ in arts]
    for _ in range(args.rounds):
        for art, mine in zip(arts, runs, strict=True):
            mine.append(time_once(art, args.batch, args.seconds))
    medians = [statistics.median(r) for r in runs]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.rounds} rounds")
    print("| model | views | frames/s per round | median | ratio to the first |")
    print("|---|---|---|---|---|")
    for path, art, mine, med in zip(args.models, arts, runs, medians, strict=True):
        rounds = " / ".join(f"{v:.0f}" for v in mine)
        print(f"| {path} | {_views(art.module)} | {rounds} | {med:.1f} | {med / medians[0]:.2f} |")


if __name__ == "__main__":
    main()

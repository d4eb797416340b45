"""A quick scratch loop for trying draem variants on a real data set (docs/quality.md, rows marked scratch).

Trains `inspector.model.Draem` with the synthetic defects and losses of `inspector.repair` on random crops
of train/good (a fixed crop size, cosine schedule over a time budget, contrast and brightness jitter as in
training, no validation checkpointing), then prints image AUROC, AP and miss rates for three reductions of
the map (max, 5x5-mean max, top-0.1% mean) and the pixel AUROC, with thresholds from the held-out 10% of
train/good.

    python benchmarks/draem_sweep.py ../shared/data/deeppcb --minutes 5 --crop 128 --batch 16 \
        --hparam fold=2 --hparam recon_width=16 --hparam seg_width=16
    python benchmarks/draem_sweep.py --speed --hparam fold=4    # frames/s of an untrained model, no data
    python benchmarks/draem_sweep.py --train-speed               # ms per training step, fp32 and bf16, no data
    python benchmarks/draem_sweep.py --speed --vs padding=zeros --rounds 6   # two models in alternating rounds

Single timed runs of one model swing by up to 30 % on a shared 2-core machine; `--vs` with `--rounds` times the
recipe's model and a changed one in alternating rounds and prints each one's median and their ratio.

The images are read where they are; nothing is copied.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.quality import frames_per_second, ground_truth  # noqa: E402
from inspector import calibrate, evaluate  # noqa: E402
from inspector.cli_train import _parse_hparams  # noqa: E402
from inspector.dataset import load_folder  # noqa: E402
from inspector.device import native_bf16  # noqa: E402
from inspector.model import build_model  # noqa: E402
from inspector.repair import paint, random_crops, repair_loss  # noqa: E402
from inspector.scoring import make_reduction  # noqa: E402
from inspector.train import DEFAULT_HPARAMS  # noqa: E402


def maps(net: torch.nn.Module, images: np.ndarray) -> torch.Tensor:
    """Anomaly maps (N, H, W) of uint8 images (N, H, W)."""
    with torch.inference_mode():
        return torch.cat([net(torch.from_numpy(images[s:s + 32]).float()[:, None] / 255)[:, 0]
                          for s in range(0, len(images), 32)])


def reductions(m: torch.Tensor) -> dict[str, np.ndarray]:
    """Image scores from maps (N, H, W) by three reductions."""
    flat = m.flatten(1)
    smooth = F.avg_pool2d(m[:, None], 5, 1, 2).flatten(1)
    return {"max": flat.amax(1).double().numpy(), "smax5": smooth.amax(1).double().numpy(),
            "top0.1": flat.topk(max(1, flat.shape[1] // 1000), 1).values.mean(1).double().numpy()}


def train_step_ms(hp: dict[str, Any], crop: int, batch: int, steps: int = 20) -> dict[str, float]:
    """Milliseconds per training step (synthetic defects, forward, backward, Adam) in fp32, and in bf16 autocast
    where the CPU computes bf16 natively (emulated, it took 15 times fp32's step on an AVX2-only EPYC); and the
    milliseconds of the step's synthetic defects alone."""
    net = build_model("draem", 1, crop, crop, **hp).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    x = torch.rand(batch, 1, crop, crop)
    out = {}
    for precision in ("fp32", "bf16") if native_bf16(torch.device("cpu")) else ("fp32",):
        for i in range(steps + 5):  # 5 warm-up steps
            if i == 5:
                t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = repair_loss(net, x, rng)
            opt.zero_grad()
            loss.backward()
            opt.step()
        out[f"{precision}_ms_per_step"] = round((time.perf_counter() - t0) / steps * 1000, 1)
    t0 = time.perf_counter()  # the synthetic defects alone, as each step makes them (numpy, before the network)
    for _ in range(steps):
        paint(x, rng)
    out["defects_ms_per_step"] = round((time.perf_counter() - t0) / steps * 1000, 1)
    return out


def timings(models: dict[str, dict[str, Any]], rounds: int,
            measure: Callable[[dict[str, Any]], dict[str, float]]) -> dict[str, Any]:
    """`measure(hparams) -> {figure: value}` for each model, the models taking turns for `rounds` rounds; each
    figure's median per model and, for two models, the second's median over the first's."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, hp in models.items():
            runs[name].append(measure(hp))
    out: dict[str, Any] = {name: {k: round(statistics.median(r[k] for r in rs), 1) for k in rs[0]}
                           for name, rs in runs.items()}
    out["each"] = {name: {k: [round(r[k], 1) for r in rs] for k in rs[0]} for name, rs in runs.items()}
    if len(models) == 2:
        first, second = (out[name] for name in models)
        out["ratio"] = {k: round(second[k] / first[k], 3) for k in first}
    out["rounds"] = rounds
    return out


def main() -> int:
    """Train one variant, print one JSON line of results."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", type=Path, nargs="?")
    p.add_argument("--speed", action="store_true", help="only measure frames/s (batch 8, TorchScript, 2 threads)")
    p.add_argument("--train-speed", action="store_true",
                   help="only time training steps (random crops of --crop, batch --batch) in fp32 and in bf16")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hparam", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--vs", action="append", default=[], metavar="KEY=VALUE",
                   help="with --speed or --train-speed: also time the model with these changes, in alternating rounds")
    p.add_argument("--rounds", type=int, default=1, help="with --speed or --train-speed: rounds per model (medians)")
    a = p.parse_args()
    torch.set_num_threads(2)
    given, changes = _parse_hparams(a.hparam), _parse_hparams(a.vs)  # as `inspector train --hparam` reads them
    hp = {**DEFAULT_HPARAMS["draem"], **given}  # the default recipe's model, with the given changes
    models = {"model": hp} | ({"vs_model": {**hp, **changes}} if changes else {})
    head = {"hparams": given} | ({"vs": changes} if changes else {})
    if a.speed:
        def fps(h: dict[str, Any]) -> dict[str, float]:
            net = build_model("draem", 1, a.size, a.size, **h).eval()
            return {"frames_per_s": frames_per_second(net, make_reduction("map_max"), 1, a.size, a.size)}
        n_params = sum(p.numel() for p in build_model("draem", 1, a.size, a.size, **hp).parameters())
        print(json.dumps(head | {"size": a.size, "parameters": n_params} | timings(models, a.rounds, fps)))
        return 0
    if a.train_speed:
        def step_ms(h: dict[str, Any]) -> dict[str, float]:
            return train_step_ms(h, a.crop, a.batch)
        print(json.dumps(head | {"crop": a.crop, "batch": a.batch} | timings(models, a.rounds, step_ms)))
        return 0
    if a.dataset is None:
        p.error("give a data set folder (or --speed)")
    rng = np.random.default_rng(a.seed)
    torch.manual_seed(a.seed)
    train = load_folder(a.dataset / "train" / "good", a.size, a.size, 1).images
    order = rng.permutation(len(train))
    n_val = round(len(train) * 0.1)
    val, train = train[order[:n_val]], train[order[n_val:]]
    good = load_folder(a.dataset / "test" / "good", a.size, a.size, 1)
    defect = load_folder(a.dataset / "test" / "defect", a.size, a.size, 1)
    net = build_model("draem", 1, a.size, a.size, **hp)
    opt = torch.optim.Adam(net.parameters(), lr=a.lr)
    t0, steps = time.monotonic(), 0
    budget = a.minutes * 60
    net.train()
    while (elapsed := time.monotonic() - t0) < budget:
        x = torch.from_numpy(train[rng.integers(0, len(train), a.batch)]).float()[:, None] / 255
        x = random_crops(x, (a.crop, a.crop), rng)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)  # contrast x0.9-1.1, brightness +-0.05
        jitter = torch.from_numpy(rng.uniform(0.9, 1.1, (a.batch, 1, 1, 1))).float()
        x = ((x - mean) * jitter + mean + torch.from_numpy(rng.uniform(-0.05, 0.05, (a.batch, 1, 1, 1))).float())
        x = x.clamp(0.0, 1.0)
        for g in opt.param_groups:
            g["lr"] = a.lr * 0.5 * (1 + math.cos(math.pi * elapsed / budget))
        loss = repair_loss(net, x, rng)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    net.eval()
    rv, rg, rd = reductions(maps(net, val)), reductions(maps(net, good.images)), reductions(maps(net, defect.images))
    out: dict[str, object] = {"dataset": a.dataset.name, "hparams": given, "crop": a.crop, "batch": a.batch,
                              "steps": steps, "train_s": round(time.monotonic() - t0)}
    for name in rv:
        sg, sd = rg[name], rd[name]
        c1 = evaluate.confusion(sg, sd, calibrate.good_quantile(rv[name], 0.01).value)
        c5 = evaluate.confusion(sg, sd, calibrate.good_quantile(rv[name], 0.05).value)
        out[name] = {"auroc": evaluate.auroc(sg, sd), "ap": evaluate.average_precision(sg, sd),
                     "miss1": c1.miss_rate, "fr1": c1.false_reject_rate, "miss5": c5.miss_rate,
                     "roc_miss1": evaluate.miss_rate_at_false_reject(sg, sd, 0.01)[0]}
    masks = [ground_truth(a.dataset, path, a.size, a.size) for path in defect.paths]
    if all(m is not None for m in masks):
        labels = np.stack(masks)[:, ::2, ::2]  # type: ignore[arg-type]
        mg, md = maps(net, good.images)[:, ::2, ::2].numpy(), maps(net, defect.images)[:, ::2, ::2].numpy()
        out["pixel_auroc"] = evaluate.auroc(np.concatenate([mg.ravel(), md[~labels]]), md[labels])
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Daemon throughput against the bare model, and capture-to-publish latency.

Runs, in one process and one run:
  1. the bare model's forward pass (input already on the device, batch = max_batch) -> frames/s;
  2. the whole daemon (synthetic cameras -> ring -> worker -> ZeroMQ -> a real SUB socket) with the cameras
     paced at `--overdrive` x what the bare model can take, so the worker is always saturated -> inspected
     frames/s, their ratio to (1), and latency under saturation;
  3. the daemon at the demo's rate (config/demo.toml: 2 cameras x 10 fps) -> p50/p99 latency when not saturated.

    python benchmarks/throughput.py [--model models/demo] [--batch 8] [--device auto] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import zmq
from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inspector.artifact import load_artifact  # noqa: E402
from inspector.config import Config  # noqa: E402
from inspector.logs import configure_logging  # noqa: E402
from inspector.service import Service  # noqa: E402
from inspector.worker import resolve_device, resolve_dtype  # noqa: E402


def bare_forward(model_dir: Path, batch: int, device_name: str, precision: str, seconds: float) -> float:
    """Frames/s of the model's forward pass alone, input resident on the device."""
    art = load_artifact(model_dir)
    device = resolve_device(device_name)
    dtype = resolve_dtype(precision, device)
    model = art.module.to(device=device, dtype=dtype).eval()
    spec = art.meta.input
    x = torch.rand(batch, spec.channels, spec.height, spec.width, device=device, dtype=dtype)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            model(x)
            n += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        return n * batch / (time.perf_counter() - t0)


def run_daemon(model_dir: Path, cameras: int, fps: float, batch: int, device: str, precision: str,
               warmup_s: float, seconds: float, endpoint: str) -> dict[str, float]:
    """Run the daemon in-process and measure what a subscriber receives during `seconds` after `warmup_s`."""
    cams = [{"id": f"cam{i + 1}", "model": str(model_dir),
             "source": {"type": "synthetic", "fps": fps, "width": 256, "height": 256, "defect_rate": 0.1,
                        "seed": i + 1, "bank_size": 32}} for i in range(cameras)]
    config = Config.model_validate({
        "cameras": cams,
        "buffer": {"capacity": 2 * batch},
        "worker": {"device": device, "precision": precision, "max_batch": batch, "max_wait_ms": 5,
                   "deadline_ms": 1000},
        "publisher": {"endpoint": endpoint, "wait_for_subscribers": 1},
        "metrics": {"port": 0},
    })
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt_string(zmq.SUBSCRIBE, "a")  # accept.* and reject.*
    sub.setsockopt_string(zmq.SUBSCRIBE, "r")
    sub.connect(endpoint)
    service = Service(config, registry=CollectorRegistry())
    service.start()
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    inspected, failsafe, latencies = 0, 0, []
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t_start = time.monotonic()
    t_measure = t_start + warmup_s
    t_end = t_measure + seconds
    while (now := time.monotonic()) < t_end:
        if not sub.poll(100):
            continue
        payload = json.loads(sub.recv_multipart()[1])
        if now < t_measure:
            continue
        if payload["reason"] in ("ok", "anomaly"):
            inspected += 1
            latencies.append(payload["latency_ms"])
        else:
            failsafe += 1
    service.stop_event.set()
    runner.join(5)
    service.shutdown()
    sub.close(0)
    lat = np.array(latencies) if latencies else np.array([float("nan")])
    return {"inspected_fps": inspected / seconds, "failsafe_fps": failsafe / seconds,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "rss_growth_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "models" / "demo")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--cameras", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--overdrive", type=float, default=1.5, help="camera rate / bare model rate (default 1.5)")
    ap.add_argument("--demo-fps", type=float, default=10.0, help="per-camera rate of the unsaturated run")
    args = ap.parse_args()
    configure_logging("warning", "json")
    endpoint = "ipc:///tmp/inspector-bench.ipc"
    device = resolve_device(args.device)
    bare = bare_forward(args.model, args.batch, args.device, args.precision, args.seconds)
    sat = run_daemon(args.model, args.cameras, args.overdrive * bare / args.cameras, args.batch, args.device,
                     args.precision, 3.0, args.seconds, endpoint)
    demo = run_daemon(args.model, args.cameras, args.demo_fps, args.batch, args.device, args.precision, 2.0,
                      args.seconds, endpoint)
    bare_after = bare_forward(args.model, args.batch, args.device, args.precision, args.seconds)
    spread = abs(bare - bare_after) / max(bare, bare_after)
    bare = (bare + bare_after) / 2  # measured before and after the daemon runs; their mean is the reference
    print(f"device: {device} ({torch.get_num_threads()} torch threads), batch {args.batch}, model {args.model}, "
          f"{args.cameras} synthetic cameras at 256x256")
    print(f"{'run':<34}{'frames/s':>10}{'ratio':>8}{'fail-safe/s':>13}{'p50 ms':>9}{'p99 ms':>9}")
    print(f"{'bare model forward (mean of 2)':<34}{bare:>10.1f}{1.0:>8.2f}{'-':>13}{'-':>9}{'-':>9}")
    sat_label = f"daemon, saturated ({args.overdrive:.1f}x cameras)"
    print(f"{sat_label:<34}{sat['inspected_fps']:>10.1f}"
          f"{sat['inspected_fps'] / bare:>8.2f}{sat['failsafe_fps']:>13.1f}{sat['p50_ms']:>9.1f}{sat['p99_ms']:>9.1f}")
    label = f"daemon, {args.cameras} x {args.demo_fps:g} fps (demo)"
    print(f"{label:<34}{demo['inspected_fps']:>10.1f}{demo['inspected_fps'] / bare:>8.2f}"
          f"{demo['failsafe_fps']:>13.1f}{demo['p50_ms']:>9.1f}{demo['p99_ms']:>9.1f}")
    print(f"bare-model runs before and after differ by {spread:.1%}; saturated run resident memory grew "
          f"{sat['rss_growth_mib']:.0f} MiB")


if __name__ == "__main__":
    main()

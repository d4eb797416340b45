"""Daemon throughput against the bare model, and capture-to-publish latency.

Runs, in one process and one run:
  1. the bare model's forward pass (input already on the device, batch = max_batch) -> frames/s;
  2. the whole daemon (synthetic cameras -> ring -> worker -> ZeroMQ -> a SUB socket in another process) with
     the cameras paced at `--overdrive` x what the bare model can take, so the worker is always saturated ->
     inspected frames/s, their ratio to (1), and latency under saturation; (1) again after (2);
  3. the daemon at the demo's rate (config/demo.toml: 2 cameras x 10 fps) -> p50/p99 latency when not saturated.

    python benchmarks/throughput.py [--model models/demo] [--batch 8 32] [--device auto] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inspector.artifact import load_artifact  # noqa: E402
from inspector.config import Config  # noqa: E402
from inspector.device import resolve_device, resolve_dtype  # noqa: E402
from inspector.logs import configure_logging  # noqa: E402
from inspector.service import Service  # noqa: E402
from inspector.threads import in_own_thread  # noqa: E402
from inspector.worker import compiled  # noqa: E402


def bare_forward(model_dir: Path, batch: int, device_name: str, precision: str, seconds: float,
                 jit: bool = True) -> float:
    """Frames/s of the model's forward pass alone, input resident on the device; with jit, the same module the
    daemon runs (`worker.compiled`: TorchScript, or a family that fuses itself as it is)."""
    art = load_artifact(model_dir)
    device = resolve_device(device_name)
    dtype = resolve_dtype(precision, device, art.meta.output)
    model = art.module.to(device=device, dtype=dtype).eval()
    spec = art.meta.input
    x = torch.rand(batch, spec.channels, spec.height, spec.width, device=device, dtype=dtype)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if jit:
        model = compiled(model, x, None)
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


SUBSCRIBER = """
import json, sys, time, zmq
endpoint, warmup_s, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
sub = zmq.Context().socket(zmq.SUB)
sub.setsockopt(zmq.RCVHWM, 0)
sub.setsockopt_string(zmq.SUBSCRIBE, "a")  # accept.* and reject.*
sub.setsockopt_string(zmq.SUBSCRIBE, "r")
sub.connect(endpoint)
while not sub.poll(100):
    pass  # the first verdict starts the clock
inspected, failsafe, latencies = 0, 0, []
t_measure = time.monotonic() + warmup_s
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
print(json.dumps({"inspected": inspected, "failsafe": failsafe, "latencies": latencies}))
"""


def run_daemon(model_dir: Path, cameras: int, fps: float, batch: int, device: str, precision: str,
               warmup_s: float, seconds: float, endpoint: str) -> dict[str, float]:
    """Run the daemon in-process; a subscriber in its own process (as an actuator would be) measures what it
    receives during `seconds` after `warmup_s`."""
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
    reader = subprocess.Popen([sys.executable, "-c", SUBSCRIBER, endpoint, str(warmup_s), str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    service = Service(config, registry=CollectorRegistry())
    service.start()  # waits for the subscriber (wait_for_subscribers = 1)
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out, _ = reader.communicate(timeout=warmup_s + seconds + 60)
    service.stop_event.set()
    runner.join(5)
    service.shutdown()
    got = json.loads(out)
    inspected, failsafe, latencies = got["inspected"], got["failsafe"], got["latencies"]
    lat = np.array(latencies) if latencies else np.array([float("nan")])
    return {"inspected_fps": inspected / seconds, "failsafe_fps": failsafe / seconds,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "rss_growth_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "models" / "demo")
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 32], help="batch sizes to measure (default 8 32)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--cameras", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--overdrive", type=float, default=1.2, help="camera rate / bare model rate (default 1.2)")
    ap.add_argument("--demo-fps", type=float, default=10.0, help="per-camera rate of the unsaturated run")
    args = ap.parse_args()
    configure_logging("error", "json")
    endpoint = "ipc:///tmp/inspector-bench.ipc"
    device = resolve_device(args.device)
    rows = []
    for batch in args.batch:
        # each on a thread of its own, as the daemon loads its models: a pool left on this thread would slow the
        # daemon's worker (inspector/threads.py)
        before = in_own_thread(bare_forward, args.model, batch, args.device, args.precision, args.seconds / 2)
        sat = run_daemon(args.model, args.cameras, args.overdrive * before / args.cameras, batch, args.device,
                         args.precision, 3.0, args.seconds, endpoint)
        after = in_own_thread(bare_forward, args.model, batch, args.device, args.precision, args.seconds / 2)
        bare = (before + after) / 2  # measured before and after the daemon; their mean is the reference
        eager = in_own_thread(bare_forward, args.model, batch, args.device, args.precision, args.seconds / 2,
                              jit=False)
        rows.append((batch, bare, abs(before - after) / max(before, after), sat, eager))
    demo = run_daemon(args.model, args.cameras, args.demo_fps, args.batch[0], args.device, args.precision, 2.0,
                      args.seconds, endpoint)
    print(f"device: {device} ({torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs), model {args.model}, "
          f"{args.cameras} synthetic cameras at 256x256, subscriber in its own process")
    print(f"saturated: cameras at {args.overdrive:g}x the bare model's rate; the excess gets fail-safe verdicts")
    print("ratio: against the bare forward of the module the daemon runs (TorchScript, frozen), measured before and "
          "after the daemon (their difference in %)")
    print(f"{'run':<40}{'batch':>6}{'frames/s':>10}{'ratio':>7}{'fail-safe/s':>12}{'p50 ms':>8}{'p99 ms':>8}")
    for batch, bare, spread, sat, eager in rows:
        print(f"{'bare model, eager PyTorch':<40}{batch:>6}{eager:>10.1f}{eager / bare:>7.2f}{'-':>12}{'-':>8}{'-':>8}")
        label = f"bare model, as the daemon runs it ({100 * spread:.0f}%)"
        print(f"{label:<40}{batch:>6}{bare:>10.1f}{1.0:>7.2f}{'-':>12}{'-':>8}{'-':>8}")
        print(f"{'daemon, saturated':<40}{batch:>6}{sat['inspected_fps']:>10.1f}{sat['inspected_fps'] / bare:>7.2f}"
              f"{sat['failsafe_fps']:>12.1f}{sat['p50_ms']:>8.1f}{sat['p99_ms']:>8.1f}")
    label = f"daemon, {args.cameras} x {args.demo_fps:g} fps (the demo)"
    print(f"{label:<40}{args.batch[0]:>6}{demo['inspected_fps']:>10.1f}{'-':>7}{demo['failsafe_fps']:>12.1f}"
          f"{demo['p50_ms']:>8.1f}{demo['p99_ms']:>8.1f}")


if __name__ == "__main__":
    main()

"""GigE Vision capture throughput: the fake GigE camera at 1024x1024 Mono8 as fast as it goes, through a bare Aravis
loop and through inspector's AravisCamera + capture thread into a FrameRing.

Runs as root: it creates a network namespace holding only `lo`, starts arv-fake-gv-camera-0.8 on 127.0.0.1 in it,
and runs each measurement in a fresh Python process inside it (nothing is sent beyond that loopback). Prints, per
path: frames/s received, frames lost (incomplete + gaps in the frame ids), and the capture thread's CPU time per
frame (utime + stime of that thread from /proc/self/task/TID/stat, 10 ms ticks, over the whole run).

    sudo .venv/bin/python benchmarks/gige_throughput.py [--seconds 10] [--rate 1000] [--size 1024] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FAKE_GV = "arv-fake-gv-camera-0.8"
PATHS = ("bare", "source", "inspector")


def thread_cpu_s(native_id: int) -> tuple[float, int]:
    """utime + stime of one thread of this process, in seconds, and its minor page faults."""
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[7])


def lost_in_ids(ids: list[int]) -> int:
    """Frame ids missing between consecutive ones (GigE Vision 1.x ids wrap from 65535 to 1)."""
    return sum((b - a - 1) if b > a else (b + 65535 - a - 1) for a, b in zip(ids, ids[1:], strict=False))


def bare(size: int, rate: float, seconds: float, buffers: int) -> dict[str, Any]:
    """Pop buffer, copy to numpy, push back: the least a Python consumer of Aravis does."""
    import gi

    gi.require_version("Aravis", "0.8")
    from gi.repository import Aravis

    Aravis.disable_interface("USB3Vision")
    cam = Aravis.Camera.new("127.0.0.1")
    cam.set_pixel_format_from_string("Mono8")
    cam.set_region(0, 0, size, size)
    cam.set_frame_rate(rate)
    stream = cam.create_stream(None, None)
    stream.set_property("socket-buffer", Aravis.GvStreamSocketBuffer.AUTO)
    stream.set_property("packet-resend", Aravis.GvStreamPacketResend.ALWAYS)
    for _ in range(buffers):
        stream.push_buffer(Aravis.Buffer.new_allocate(cam.get_payload()))
    out: dict[str, Any] = {"ids": [], "incomplete": 0}
    stop = time.monotonic() + seconds

    def loop() -> None:
        success = Aravis.BufferStatus.SUCCESS
        while time.monotonic() < stop:
            buffer = stream.timeout_pop_buffer(1_000_000)
            if buffer is None:
                continue
            if buffer.get_status() == success:
                image = np.frombuffer(buffer.get_data(), np.uint8).reshape(size, size)
                out["ids"].append(buffer.get_frame_id())
                out["last"] = image
            else:
                out["incomplete"] += 1
            stream.push_buffer(buffer)
        out["cpu_s"], out["faults"] = thread_cpu_s(threading.get_native_id())

    cam.start_acquisition()
    wall = run_in_thread(loop, "bare")
    cam.stop_acquisition()
    return loop_result(out, wall)


def run_in_thread(loop: Callable[[], None], name: str) -> float:
    """Run `loop` in a thread of its own (so its CPU time is its own); the wall-clock seconds it took."""
    t0 = time.monotonic()
    thread = threading.Thread(target=loop, name=name)
    thread.start()
    thread.join()
    return time.monotonic() - t0


def loop_result(out: dict[str, Any], wall: float) -> dict[str, Any]:
    """One table row's figures from what a reading loop collected."""
    return {"frames": len(out["ids"]), "wall_s": wall, "incomplete": out["incomplete"],
            "gaps": lost_in_ids(out["ids"]), "cpu_s": out["cpu_s"], "faults": out["faults"]}


def source_only(size: int, rate: float, seconds: float, buffers: int) -> dict[str, Any]:
    """inspector's AravisCamera.read() in a plain loop (no capture thread, no ring): where (b)'s cost lies."""
    from inspector.capture.aravis import AravisCamera
    from inspector.config import AravisSource
    from inspector.types import FrameLost

    cam = AravisCamera(AravisSource(type="aravis", interfaces=["GigEVision"], device="127.0.0.1",
                                    pixel_format="Mono8", width=size, height=size, frame_rate=rate, buffers=buffers))
    cam.open()
    out: dict[str, Any] = {"ids": [], "incomplete": 0}
    stop = time.monotonic() + seconds

    def loop() -> None:
        while time.monotonic() < stop:
            try:
                out["ids"].append(cam.read().part_id)
            except FrameLost:
                out["incomplete"] += 1
        out["cpu_s"], out["faults"] = thread_cpu_s(threading.get_native_id())

    wall = run_in_thread(loop, "source")
    cam.close()
    return loop_result(out, wall)


class _Count:
    """A stand-in for a Prometheus counter child (the service's metrics are not part of this measurement)."""

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1


def inspector_path(size: int, rate: float, seconds: float, buffers: int) -> dict[str, Any]:
    """inspector's AravisCamera in its capture thread (inspector.capture.camera.Camera) into a FrameRing that a
    consumer thread empties (as the worker does)."""
    from inspector.buffer import FrameRing
    from inspector.capture.camera import Camera
    from inspector.config import AravisSource, CameraConfig

    source = AravisSource(type="aravis", interfaces=["GigEVision"], device="127.0.0.1", pixel_format="Mono8",
                          width=size, height=size, frame_rate=rate, buffers=buffers)
    cfg = CameraConfig(id="bench", source=source, model=Path("unused"))
    cond = threading.Condition()
    ring = FrameRing("bench", 64, "drop_oldest", cond)
    stop = threading.Event()
    ids: list[int] = []
    drops: dict[str, int] = {}

    def on_drop(frame: Any, reason: str) -> None:
        drops[reason] = drops.get(reason, 0) + 1

    def consume() -> None:
        while not stop.is_set():
            with cond:
                frame = ring.pop()
                if frame is None:
                    cond.wait(0.1)
                    continue
            ids.append(frame.part_id)

    from inspector.capture import make_source

    captured = _Count()
    cam = Camera(cfg, lambda: make_source(source), ring, on_drop, lambda *a: None, captured, _Count(), stop)
    consumer = threading.Thread(target=consume, name="consumer")
    consumer.start()
    cam.start()
    while cam.state != "up":  # opening (discovery, settings, stream) is not part of the measurement
        time.sleep(0.01)
    capture = next(t for t in threading.enumerate() if t.name.startswith("capture-bench"))
    assert capture.native_id is not None
    (cpu0, faults0), first, t0 = thread_cpu_s(capture.native_id), captured.value, time.monotonic()
    time.sleep(seconds)
    (cpu1, faults1), last, wall = thread_cpu_s(capture.native_id), captured.value, time.monotonic() - t0
    stop.set()
    cam.join(5)
    consumer.join(5)
    incomplete = drops.get("incomplete", 0)
    return {"frames": last - first - incomplete, "wall_s": wall, "incomplete": incomplete,
            "gaps": lost_in_ids(ids), "cpu_s": cpu1 - cpu0, "faults": faults1 - faults0,
            "buffer_full": drops.get("buffer_full", 0)}


def inside(args: argparse.Namespace) -> None:
    run = {"bare": bare, "source": source_only, "inspector": inspector_path}[args.inside]
    print("RESULT " + json.dumps(run(args.size, args.rate, args.seconds, args.buffers)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement per run (default %(default)s)")
    parser.add_argument("--rate", type=float, default=1000.0, help="AcquisitionFrameRate asked (fake max: 1000)")
    parser.add_argument("--size", type=int, default=1024, help="width and height, Mono8 (default %(default)s)")
    parser.add_argument("--buffers", type=int, default=8, help="stream buffers (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per path, alternating (default %(default)s)")
    parser.add_argument("--paths", default="bare,inspector",
                        help="comma-separated paths: bare, inspector, source (AravisCamera.read alone)")
    parser.add_argument("--inside", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        inside(args)
        return
    if os.geteuid() != 0:
        sys.exit("gige_throughput: needs root (ip netns)")
    name = f"inspector-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    camera = None
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        camera = subprocess.Popen(["ip", "netns", "exec", name, FAKE_GV, "-i", "127.0.0.1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        rows = []
        for _ in range(args.repeat):
            for path in args.paths.split(","):
                cmd = ["ip", "netns", "exec", name, sys.executable, __file__, "--inside", path,
                       "--seconds", str(args.seconds), "--rate", str(args.rate), "--size", str(args.size),
                       "--buffers", str(args.buffers)]
                run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=args.seconds + 60)
                result = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
                if run.returncode != 0 or not result:
                    sys.exit(f"gige_throughput: {path} failed:\n{run.stdout}\n{run.stderr}")
                rows.append((path, json.loads(result[0][7:])))
    finally:
        if camera is not None:
            camera.terminate()
            camera.wait(5)
        subprocess.run(["ip", "netns", "delete", name], check=False)
    print(f"fake GigE camera, {args.size}x{args.size} Mono8, AcquisitionFrameRate {args.rate:g}, {args.buffers} "
          f"buffers, {args.seconds:g} s per run, {os.cpu_count()} CPU cores")
    print(f"{'path':10s} {'frames/s':>9s} {'MB/s':>7s} {'incomplete':>10s} {'id gaps':>8s} {'CPU ms/frame':>13s} "
          f"{'faults/frame':>13s}")
    for path, r in rows:
        fps = r["frames"] / r["wall_s"]
        print(f"{path:10s} {fps:9.1f} {fps * args.size * args.size / 1e6:7.1f} {r['incomplete']:10d} {r['gaps']:8d} "
              f"{1000 * r['cpu_s'] / max(r['frames'], 1):13.3f} {r['faults'] / max(r['frames'], 1):13.1f}")


if __name__ == "__main__":
    main()

"""Per-frame preprocessing cost: camera frame -> model input, as the daemon's worker does it for every frame.

    python benchmarks/preprocess_speed.py [--size 256] [--repeat 200]

For common sensor sizes (gray, 8 bit), the median time of `inspector.preprocess.prepare` (stretch and pad, and
pad with the contrast stretched) and, for comparison, of OpenCV's one-step area resize to the same size.
OpenCV's area resize is fast for a whole shrink factor and several times slower for a fractional one, so from
a factor of 3 on, `prepare` first shrinks by the whole part of the factor (preprocess.TWO_STEP_SHRINK). The
frames are smooth noise; the cost depends on the size, not the content.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from inspector.preprocess import prepare

SENSORS = [(640, 480), (640, 640), (1280, 1024), (1440, 1080), (1920, 1080), (1920, 1200), (2448, 2048),
           (4096, 3000)]


def median_ms(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="model input side (default 256)")
    ap.add_argument("--repeat", type=int, default=200, help="timed calls per cell (default 200)")
    args = ap.parse_args()
    cv2.setNumThreads(1)  # the worker thread's own cost, not OpenCV's thread pool's
    rng = np.random.default_rng(0)
    s = args.size
    out = np.empty((s, s), np.uint8)
    print("| frame | shrink | OpenCV area, one step (ms) | prepare, stretch (ms) | prepare, pad (ms) "
          "| pad + contrast stretch (ms) |")
    print("|---|---|---|---|---|---|")
    for w, h in SENSORS:
        small = rng.random((max(2, h // 16), max(2, w // 16))).astype(np.float32)
        frame = (cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1) * 255).astype(np.uint8)
        one = median_ms(lambda f=frame: cv2.resize(f, (s, s), dst=out, interpolation=cv2.INTER_AREA), args.repeat)
        stretch = median_ms(lambda f=frame: prepare(f, None, s, s, 1, out=out, fit="stretch"), args.repeat)
        pad = median_ms(lambda f=frame: prepare(f, None, s, s, 1, out=out, fit="pad"), args.repeat)
        levels = median_ms(lambda f=frame: prepare(f, None, s, s, 1, out=out, fit="pad", contrast="stretch"),
                           args.repeat)
        print(f"| {w}x{h} | {min(w, h) / s:.2f} | {one:.2f} | {stretch:.2f} | {pad:.2f} | {levels:.2f} |")
    print(f"\n1 OpenCV thread, input {s}x{s} gray, median of {args.repeat} calls each")


if __name__ == "__main__":
    main()

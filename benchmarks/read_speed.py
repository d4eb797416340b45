"""How fast `inspector train` (and calibrate, evaluate, score) reads a folder of images, by reading threads.

    python benchmarks/read_speed.py FOLDER [--threads 1 2 4] [--size 256]
    python benchmarks/read_speed.py FOLDER --make 40 [--sensor 2448x2048]   # write test files first

Reads every image of FOLDER as training does (`inspector.dataset.load_folder`: decode, convert, resize both
ways for `--fit auto`, contrast levels for `--contrast auto`) with `dataset.READ_THREADS` set to each count,
and prints milliseconds per image and what 3,000 such images would take. Each count is run twice; the files
come from the page cache after the first run, so the figures are decoding and resizing, not the disk.
`--make N` first writes N gray images of the sensor size (smooth noise, half JPEG, half PNG) into FOLDER.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from inspector import dataset
from inspector.images import list_images


def make(folder: Path, count: int, width: int, height: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 255, (height, width), dtype=np.uint8), (0, 0), 8)
    base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX)
    for i in range(count):
        image = np.clip(base.astype(np.int16) + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"{i:04d}.{'jpg' if i % 2 else 'png'}"), image)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4], help="reading threads to compare")
    ap.add_argument("--size", type=int, default=256, help="model input side (default 256)")
    ap.add_argument("--make", type=int, default=0, metavar="N", help="first write N test images into FOLDER")
    ap.add_argument("--sensor", default="2448x2048", metavar="WxH", help="size of the images --make writes")
    args = ap.parse_args()
    if args.make:
        width, height = (int(v) for v in args.sensor.lower().split("x"))
        make(args.folder, args.make, width, height)
    files = list_images(args.folder)
    if not files:
        raise SystemExit(f"{args.folder}: no images")
    shapes = {cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape[:2] for p in files[:5]}
    print(f"{len(files)} images in {args.folder} (first sizes {sorted(shapes)}), input {args.size}x{args.size}, "
          "fit auto, contrast auto")
    print("| threads | ms per image (run 1 / run 2) | 3,000 images |")
    print("|---|---|---|")
    for threads in args.threads:
        dataset.READ_THREADS = threads
        times = []
        for _ in range(2):
            t = time.perf_counter()
            dataset.load_folder(args.folder, args.size, args.size, "auto", fit="auto", contrast="auto")
            times.append((time.perf_counter() - t) / len(files) * 1e3)
        print(f"| {threads} | {times[0]:.1f} / {times[1]:.1f} | {times[1] * 3000 / 60e3:.1f} min |")


if __name__ == "__main__":
    main()

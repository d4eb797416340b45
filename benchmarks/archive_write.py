"""Reject-archive write rate: entries/s (frame + heatmap overlay + JSON sidecar) and bytes per entry.

    python benchmarks/archive_write.py [--size 256] [--count 400]

The frames are noise over a grey level (compresses worse than real parts, so real entries are smaller). What it
tells: how many rejects per second the archive thread keeps up with before it starts dropping archive writes
(never frames) and counting them in inspector_archive_dropped_total.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from prometheus_client import CollectorRegistry

from inspector.archive import Archive
from inspector.config import ArchiveConfig
from inspector.logs import configure_logging, get_logger
from inspector.metrics import Metrics
from inspector.types import Evidence


def measure(fmt: str, size: int, count: int) -> tuple[float, float]:
    """(entries/s, KiB per entry) writing `count` rejects of size x size gray frames in `fmt`."""
    rng = np.random.default_rng(0)
    image = (rng.random((size, size)) * 40 + 100).astype(np.uint8)
    heat = rng.random((size // 2, size // 2)).astype(np.float32) * 0.01
    with tempfile.TemporaryDirectory() as folder:
        archive = Archive(ArchiveConfig(enabled=True, directory=Path(folder), queue=count, image_format=fmt),
                          Metrics(CollectorRegistry()), get_logger("benchmark"))
        for seq in range(count):
            archive.submit({"camera": "cam1", "seq": seq, "captured_at": time.time(), "verdict": "reject",
                            "reason": "anomaly", "threshold": 0.01}, Evidence(image, heat))
        t0 = time.perf_counter()
        archive.start()
        archive.close(300)
        seconds = time.perf_counter() - t0
        size_b = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
    return count / seconds, size_b / count / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="frame width and height (default 256)")
    parser.add_argument("--count", type=int, default=400, help="entries per format (default 400)")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # as in the daemon
    configure_logging("warning", "console")
    print(f"reject archive, {args.size}x{args.size} gray frames, {args.count} entries, one writer thread")
    print("| format | entries/s | KiB per entry |\n|---|---|---|")
    for fmt in ("png", "jpg"):
        rate, kib = measure(fmt, args.size, args.count)
        print(f"| {fmt} | {rate:.0f} | {kib:.1f} |")


if __name__ == "__main__":
    main()

"""A copy of a data set shrunk to the model's input, from which a model reads the very pixels it reads from
the original: for moving a data set to a machine with little room or a small transfer limit (a lent GPU).

    python benchmarks/shrink_dataset.py SRC DST [--size 256]

Every image under SRC/train and SRC/test that is larger than it needs to be is resized as
`inspector.preprocess.resize` would resize it for an input of SIZE x SIZE: stretched when the images of
SRC/train/good have one aspect, else fitted inside with its aspect kept (as `inspector train --fit auto`
chooses). Images no larger are copied as they are. Each is written losslessly (WebP) **under its original file
name**, since OpenCV reads an image by its content and a model's held-out list (`training.held_out_files`)
names the files it held out: `benchmarks/quality.py --trained` then finds them in the copy and in the original.
Ground truth is written as masks in DST/ground_truth/defect/<image stem>.png, at the size that
`benchmarks/quality.py` reads them from SRC (masks and `defect_bboxes` boxes alike).

Training and evaluating on the copy then gives the model the same pixels as the original at SIZE. What can
differ: `--contrast auto`'s decision reads each image's grey-level span after a square resize, and a copy is
resized twice on that path, so the spans it reports move by a few grey levels (magnetic_tile: 47-233 against
49-237); the decision itself only flips for a data set on its 1.25x edge.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.quality import ground_truth  # noqa: E402
from inspector.images import list_images  # noqa: E402
from inspector.preprocess import Fit, choose_fit, inner_box, resize  # noqa: E402

LOSSLESS_WEBP = [cv2.IMWRITE_WEBP_QUALITY, 101]  # above 100: lossless


def shrink(image: np.ndarray, size: int, fit: Fit) -> np.ndarray:
    """The image at the size `resize(image, size, size, fit)` gives it before any margin: shrunk as that call
    shrinks it; an image it would enlarge, as it is."""
    h, w = image.shape[:2]
    _, _, inner_h, inner_w = inner_box(h, w, size, size, fit)
    if inner_h >= h and inner_w >= w:
        return image
    return resize(image, inner_h, inner_w, "stretch", interpolation=cv2.INTER_AREA)


def copy_dataset(src: Path, dst: Path, size: int = 256) -> dict[str, int]:
    """Write the shrunk copy of `src` to `dst`; counts of the images and masks written."""
    train = list_images(src / "train" / "good")
    if not train:
        raise SystemExit(f"shrink_dataset: {src / 'train' / 'good'}: no images")
    sizes = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape[:2] for p in train]
    fit = choose_fit(w / h for h, w in sizes)
    counts = {"images": 0, "masks": 0}
    for path in list_images(src / "train", recursive=True) + list_images(src / "test", recursive=True):
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            continue
        ok, data = cv2.imencode(".webp", shrink(image, size, fit), LOSSLESS_WEBP)
        if not ok:
            raise SystemExit(f"shrink_dataset: {path}: OpenCV could not encode it as WebP")
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.tobytes())
        counts["images"] += 1
        mask = ground_truth(src, path, size, size, fit) if "defect" in path.relative_to(src).parts else None
        if mask is not None:
            h, w = image.shape[:2]
            top, left, inner_h, inner_w = inner_box(h, w, size, size, fit)
            inner = mask[top:top + inner_h, left:left + inner_w]
            out = dst / "ground_truth" / "defect" / f"{path.stem}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(out), inner.astype(np.uint8) * 255)
            counts["masks"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path, help="data set folder (train/good, test/good, test/defect, ground_truth/)")
    p.add_argument("dst", type=Path, help="where the copy goes (created)")
    p.add_argument("--size", type=int, default=256, help="the model's input side (default 256, the recipe's)")
    args = p.parse_args(argv)
    counts = copy_dataset(args.src, args.dst, args.size)
    print(f"{args.dst}: {counts['images']} images, {counts['masks']} masks")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""benchmarks/shrink_dataset.py: a shrunk copy from which the model reads the very pixels and masks of the
original, under the original names."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.quality import ground_truth
from benchmarks.shrink_dataset import copy_dataset
from inspector.images import list_images
from inspector.preprocess import prepare

SIZE = 32


def _image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured grey image with its own contrast, as parts under varying light look."""
    noise = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 1.5)
    lo, hi = sorted(rng.uniform(0, 255, 2))
    return np.clip(lo + (noise - noise.min()) / (np.ptp(noise) + 1e-6) * (hi - lo + 20), 0, 255).astype(np.uint8)


def _dataset(root: Path, shapes: list[tuple[int, int]], boxes: bool) -> None:
    """train/good, test/good and test/defect images of the given (h, w) shapes in turn; the defects' ground
    truth as masks (ground_truth/defect/<stem>.png) or as DeepPCB's boxes (defect_bboxes/<id>.txt)."""
    rng = np.random.default_rng(0)
    for i in range(12):
        for folder in ("train/good", "test/good", "test/defect"):
            h, w = shapes[i % len(shapes)]
            (root / folder).mkdir(parents=True, exist_ok=True)
            name = f"{i:02d}_test" if boxes and folder == "test/defect" else f"{i:02d}"
            cv2.imwrite(str(root / folder / f"{name}.jpg"), _image(rng, h, w))
            if folder != "test/defect":
                continue
            y, x = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
            if boxes:
                (root / "ground_truth" / "defect_bboxes").mkdir(parents=True, exist_ok=True)
                (root / "ground_truth" / "defect_bboxes" / f"{i:02d}.txt").write_text(f"{x} {y} {x + 7} {y + 5} 1\n")
            else:
                (root / "ground_truth" / "defect").mkdir(parents=True, exist_ok=True)
                mask = np.zeros((h, w), np.uint8)
                cv2.ellipse(mask, (x + 4, y + 4), (4, 2), 30, 0, 360, 255, -1)
                cv2.imwrite(str(root / "ground_truth" / "defect" / f"{i:02d}.png"), mask)


@pytest.mark.parametrize(("shapes", "boxes", "fit"), [
    ([(90, 60), (70, 100), (50, 50), (20, 28)], False, "pad"),  # aspects differ; the last one is enlarged
    ([(80, 80)], True, "stretch"),  # one aspect, boxes as ground truth
])
def test_the_copy_gives_the_model_the_same_pixels_and_masks(tmp_path: Path, shapes: list[tuple[int, int]],
                                                            boxes: bool, fit: str) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _dataset(src, shapes, boxes)
    counts = copy_dataset(src, dst, SIZE)
    originals = list_images(src / "train", recursive=True) + list_images(src / "test", recursive=True)
    assert counts == {"images": 36, "masks": 12}
    for path in originals:
        copy = dst / path.relative_to(src)  # the same name, so a model's held-out list finds it
        a, b = cv2.imread(str(path), cv2.IMREAD_UNCHANGED), cv2.imread(str(copy), cv2.IMREAD_UNCHANGED)
        assert max(b.shape) <= max(SIZE, max(a.shape))
        for contrast in ("none", "stretch"):
            assert np.array_equal(prepare(a, None, SIZE, SIZE, 1, fit=fit, contrast=contrast),
                                  prepare(b, None, SIZE, SIZE, 1, fit=fit, contrast=contrast)), (path, contrast)
        if "defect" in path.parts:
            truth = ground_truth(src, path, SIZE, SIZE, fit)
            assert truth is not None and truth.any()
            assert np.array_equal(truth, ground_truth(dst, copy, SIZE, SIZE, fit)), path


def test_a_folder_without_good_training_images_is_refused(tmp_path: Path) -> None:
    (tmp_path / "train" / "good").mkdir(parents=True)
    with pytest.raises(SystemExit, match="no images"):
        copy_dataset(tmp_path, tmp_path / "out", SIZE)

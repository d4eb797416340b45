"""Tests for the synthetic part renderer (inspector.synth)."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from inspector.synth import DEFECT_KINDS, PartRenderer, SynthPart, write_dataset


def _absdiff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Absolute per-pixel difference as float."""
    return np.abs(a.astype(np.float32) - b.astype(np.float32))


def test_same_seed_gives_identical_bytes() -> None:
    a = PartRenderer(96, 80, seed=7, defect_rate=0.5)
    b = PartRenderer(96, 80, seed=7, defect_rate=0.5)
    for _ in range(20):
        pa, pb = a.render(), b.render()
        assert pa.image.tobytes() == pb.image.tobytes()
        assert pa.mask.tobytes() == pb.mask.tobytes()
        assert (pa.label, pa.defect) == (pb.label, pb.defect)


def test_different_seed_gives_different_images() -> None:
    a = PartRenderer(96, 96, seed=1).render_part(None)
    b = PartRenderer(96, 96, seed=2).render_part(None)
    assert a.image.tobytes() != b.image.tobytes()


def test_good_parts_vary_but_are_the_same_product() -> None:
    r = PartRenderer(128, 128, seed=3)
    parts = [r.render_part(None) for _ in range(12)]
    assert _absdiff(parts[0].image, parts[1].image).mean() > 3.0
    means = [p.image.mean() for p in parts]
    assert np.std(means) < 8.0
    for p in parts:
        assert p.label == "good" and p.defect is None and not p.mask.any()
        centre_ring = p.image[64 - 20:64 + 20, 64 - 20:64 + 20].mean()
        corners = np.concatenate([p.image[:10, :10].ravel(), p.image[-10:, -10:].ravel()]).mean()
        assert centre_ring > corners + 40  # bright part on a dark belt


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_defect_rate_is_respected(rate: float) -> None:
    r = PartRenderer(48, 48, seed=5, defect_rate=rate)
    n = 400
    parts = [r.render() for _ in range(n)]
    defects = sum(p.label == "defect" for p in parts)
    tolerance = 4 * math.sqrt(n * rate * (1 - rate))
    assert abs(defects - n * rate) <= tolerance
    seen = {p.defect for p in parts if p.defect is not None}
    assert seen == set(DEFECT_KINDS)
    for p in parts:
        assert (p.label == "defect") == (p.defect is not None) == bool(p.mask.any())


def test_extreme_rates_and_kind_subset() -> None:
    assert all(p.label == "good" for p in (PartRenderer(40, 40, defect_rate=0.0).render() for _ in range(30)))
    r = PartRenderer(40, 40, defect_rate=1.0, kinds=("hole", "stain"))
    kinds = {r.render().defect for _ in range(40)}
    assert kinds == {"hole", "stain"}


@pytest.mark.parametrize("kind", DEFECT_KINDS)
@pytest.mark.parametrize("size", [(128, 128), (160, 96)])
def test_every_kind_changes_the_masked_region(kind: str, size: tuple[int, int]) -> None:
    w, h = size
    r = PartRenderer(w, h, seed=9)
    for _ in range(8):
        good, bad = r._render_pair(kind)
        assert isinstance(bad, SynthPart)
        assert bad.label == "defect" and bad.defect == kind
        assert bad.image.shape == (h, w) and bad.image.dtype == np.uint8
        assert bad.mask.shape == (h, w) and bad.mask.dtype == bool
        assert not good.mask.any() and good.label == "good"
        assert 3 <= bad.mask.sum() < 0.1 * w * h
        diff = _absdiff(bad.image, good.image)
        assert diff[bad.mask].mean() > 15.0  # well above sensor noise (sigma 2-4)
        assert diff[~bad.mask].mean() < 2.0  # the change is localised to the mask


def test_render_part_matches_the_requested_kind() -> None:
    r = PartRenderer(64, 64, seed=4)
    for kind in DEFECT_KINDS:
        p = r.render_part(kind)
        assert p.defect == kind and p.mask.any()


def test_colour_mode_is_bgr_and_tinted() -> None:
    r = PartRenderer(120, 100, channels=3, seed=2)
    p = r.render_part("stain")
    assert p.image.shape == (100, 120, 3) and p.image.dtype == np.uint8
    assert p.mask.shape == (100, 120)
    part = p.image[40:60, 50:70].reshape(-1, 3).mean(axis=0)
    assert part[2] > part[0]  # warm metal: red above blue
    g = PartRenderer(120, 100, channels=1, seed=2).render_part(None)
    assert g.image.shape == (100, 120)


@pytest.mark.parametrize("size", [(200, 120), (64, 160), (32, 32)])
def test_non_square_sizes(size: tuple[int, int]) -> None:
    w, h = size
    r = PartRenderer(w, h, seed=1, defect_rate=1.0)
    for _ in range(12):
        p = r.render()
        assert p.image.shape == (h, w) and p.mask.shape == (h, w) and p.mask.any()


def test_write_dataset_layout(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    counts = write_dataset(out, count=30, defect_rate=0.4, seed=3, width=64, height=48)
    good = sorted((out / "good").glob("part_*.png"))
    defect = sorted((out / "defect").glob("part_*.png"))
    truth = sorted((out / "ground_truth").glob("part_*.png"))
    assert counts == {"good": len(good), "defect": len(defect)}
    assert counts["good"] + counts["defect"] == 30 and counts["defect"] > 0
    assert [p.name for p in defect] == [p.name for p in truth]
    for p in defect:
        assert p.stem.split("_", 2)[2] in DEFECT_KINDS
    img = cv2.imread(str(good[0]), cv2.IMREAD_UNCHANGED)
    assert img.shape == (48, 64) and img.dtype == np.uint8
    mask = cv2.imread(str(truth[0]), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(mask)) == {0, 255}
    again = write_dataset(tmp_path / "again", count=30, defect_rate=0.4, seed=3, width=64, height=48)
    assert again == counts
    assert (tmp_path / "again" / "good" / good[0].name).read_bytes() == good[0].read_bytes()


def test_write_dataset_colour(tmp_path: Path) -> None:
    write_dataset(tmp_path, count=2, defect_rate=0.0, width=40, height=40, channels=3)
    img = cv2.imread(str(tmp_path / "good" / "part_00000.png"), cv2.IMREAD_UNCHANGED)
    assert img.shape == (40, 40, 3)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"width": 31}, "width"),
        ({"height": 8}, "height"),
        ({"width": 64.0}, "width"),
        ({"channels": 2}, "channels"),
        ({"defect_rate": -0.1}, "defect_rate"),
        ({"defect_rate": 1.5}, "defect_rate"),
        ({"kinds": ()}, "kinds"),
        ({"kinds": ("scratch", "rust")}, "kinds"),
    ],
)
def test_invalid_renderer_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        PartRenderer(**kwargs)


def test_invalid_defect_and_dataset_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="defect"):
        PartRenderer(64, 64).render_part("rust")
    with pytest.raises(ValueError, match="count"):
        write_dataset(tmp_path, count=0, defect_rate=0.1)
    with pytest.raises(ValueError, match="defect_rate"):
        write_dataset(tmp_path, count=1, defect_rate=2.0)
    with pytest.raises(ValueError, match="channels"):
        write_dataset(tmp_path, count=1, defect_rate=0.1, channels=4)

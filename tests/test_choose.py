"""`--family auto`: the question each candidate is asked (inspector.choose) and the training that asks it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from inspector.artifact import load_artifact
from inspector.choose import PROBE_IMAGES, PROBE_SEEDS, PROBE_SIZES, choose, defective_copies, separation
from inspector.cli import main
from inspector.inference import score_artifact
from inspector.train import AUTO_FAMILIES, AUTO_MARGIN, AUTO_PREFERRED, TrainSettings
from tests.test_draem import SIZE, _parts


def test_choose_keeps_the_preferred_family_unless_another_is_clearly_ahead() -> None:
    """Within the margin (either way) the preferred candidate stays; beyond it the best one wins."""
    def sep(**means: float) -> dict[str, dict[str, float]]:
        return {k: {"mean": v} for k, v in means.items()}

    assert choose(sep(patchcore=0.64, draem=0.68), "patchcore", 0.05) == "patchcore"
    assert choose(sep(patchcore=0.70, draem=0.60), "patchcore", 0.05) == "patchcore"
    assert choose(sep(patchcore=0.56, draem=0.80), "patchcore", 0.05) == "draem"
    assert choose(sep(patchcore=0.60, draem=0.66, other=0.70), "patchcore", 0.05) == "other"
    assert TrainSettings().family == "auto" and AUTO_PREFERRED in AUTO_FAMILIES and 0 < AUTO_MARGIN < 0.5


def test_defective_copies_keep_the_layout_and_differ_where_the_defect_is() -> None:
    """Gray and colour frames come back as uint8 in their own layout, each with some pixels changed; the same seed
    gives the same copies, another seed others."""
    rng = np.random.default_rng(0)
    for shape in ((6, 64, 64), (6, 64, 96, 3)):
        images = rng.integers(90, 160, size=shape, dtype=np.uint8)
        for size in PROBE_SIZES:
            bad = defective_copies(images, 0, size)
            assert bad.dtype == np.uint8 and bad.shape == images.shape
            changed = (bad != images).reshape(len(images), -1).any(axis=1)
            assert changed.all(), size
        assert np.array_equal(defective_copies(images, 1, None), defective_copies(images, 1, None))
        assert not np.array_equal(defective_copies(images, 1, None), defective_copies(images, 2, None))


def test_separation_is_chance_for_a_blind_score_and_one_for_a_score_that_knows_the_good_images() -> None:
    """A score that ignores the image separates nothing (0.5 at every size); the distance to the nearest held-out
    good image (0 for the good images themselves, above 0 for every changed copy) separates them all (1.0), and
    its negative none (0.0): the direction and the averaging are right."""
    good = _parts_array(12).astype(np.float32)

    def nearest(images: np.ndarray) -> np.ndarray:
        return np.abs(images[:, None].astype(np.float32) - good[None]).sum(axis=(2, 3)).min(axis=1)

    blind = separation(lambda images: np.zeros(len(images)), good.astype(np.uint8))
    assert blind == {"image": 0.5, "0.5-0.5": 0.5, "0.125-0.25": 0.5, "mean": 0.5}
    assert set(separation(nearest, good.astype(np.uint8)).values()) == {1.0}
    assert set(separation(lambda images: -nearest(images), good.astype(np.uint8)).values()) == {0.0}
    assert len(PROBE_SEEDS) == 3
    many = np.concatenate([good] * 10).astype(np.uint8)  # more than PROBE_IMAGES: an evenly spread subset is asked
    counted: list[int] = []
    separation(lambda images: counted.append(len(images)) or np.zeros(len(images)), many)
    assert len(many) > PROBE_IMAGES and set(counted) == {PROBE_IMAGES}


def _parts_array(count: int) -> np.ndarray:
    from inspector.synth import PartRenderer

    renderer = PartRenderer(width=SIZE, height=SIZE, channels=1, seed=3, defect_rate=0.0)
    return np.stack([renderer.render_part(None).image for _ in range(count)])


def test_train_by_default_fits_both_families_and_keeps_the_one_it_chose(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`inspector train` without --family fits patchcore and draem on one split, asks both, saves the chosen one
    (its own family, threshold rule and settings) and records and prints why; --hparam without a family is a usage
    error before any image is read."""
    _parts(tmp_path / "data", 24, seed=0)
    out = tmp_path / "m"
    common = ["train", "--data", str(tmp_path / "data"), "--size", str(SIZE), "--epochs", "2", "--batch-size", "4",
              "--device", "cpu", "--quiet"]
    assert main([*common, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "--family auto: fits patchcore then draem inside the time budget" in captured.err
    meta = json.loads((out / "model.json").read_text())
    choice = meta["training"]["family_choice"]
    assert set(choice["separation"]) == set(AUTO_FAMILIES)
    assert choice["chosen"] == meta["family"] == meta["training"]["settings"]["family"]
    means = {k: v["mean"] for k, v in choice["separation"].items()}
    assert choice["chosen"] == (AUTO_PREFERRED if max(means.values()) <= means[AUTO_PREFERRED] + AUTO_MARGIN
                                else max(means, key=lambda k: means[k]))
    assert set(choice["seconds"]) == {*AUTO_FAMILIES, *(f"{k} question" for k in AUTO_FAMILIES)}
    assert f"family    {choice['chosen']}, chosen from" in printed and "--family patchcore or draem" in printed
    art = load_artifact(out)
    assert art.meta.family == choice["chosen"] and art.meta.hparams == meta["hparams"]
    assert np.isfinite(score_artifact(art, _parts_array(4), torch.device("cpu")).scores["score"]).all()
    # a kept patchcore's threshold pools its trained-on images, scored without their own patches after the choice,
    # as `--family patchcore` alone pools them; a kept draem's pools them as draem does
    alone = tmp_path / "alone"
    assert main([*common, "--out", str(alone), "--family", choice["chosen"]]) == 0
    threshold = json.loads((alone / "model.json").read_text())["threshold"]
    assert meta["threshold"]["value"] == threshold["value"]
    assert meta["threshold"]["details"]["calibrated_on"] == threshold["details"]["calibrated_on"]
    assert meta["threshold"]["details"]["calibrated_on"].startswith("24 good training images")
    assert main([*common, "--out", str(tmp_path / "n"), "--hparam", "bank=50"]) == 2
    assert "--family patchcore or draem with --hparam" in capsys.readouterr().err

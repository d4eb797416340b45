"""Bad input to train, calibrate, evaluate and score: exit status 2 and one clear line, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from inspector.artifact import load_artifact
from inspector.cli import main
from inspector.dataset import load_files
from inspector.heatmap import heat_scale, overlay
from inspector.inference import score_artifact
from inspector.preprocess import unfit
from inspector.synth import PartRenderer

from .conftest import make_model

FAST = ["--family", "conv-ae", "--size", "32", "--epochs", "1", "--batch-size", "4", "--hparam", "base_width=4",
        "--hparam", "depth=2", "--hparam", "latent=4", "--device", "cpu", "--quiet"]


def _images(folder: Path, count: int, size: int = 48, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    renderer = PartRenderer(width=size, height=size, seed=seed, defect_rate=0.0)
    for i in range(count):
        cv2.imwrite(str(folder / f"p{i:03d}.png"), renderer.render_part(None).image)
    return folder


def _usage_error(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("inspector: error:")]
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err
    return lines[0]


def test_train_on_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty folder: exit 2, 'no readable images'."""
    (tmp_path / "empty").mkdir()
    _usage_error(capsys, ["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "m"), *FAST],
                 "no readable images")
    assert not (tmp_path / "m" / "model.json").exists()


def test_train_on_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder that does not exist: exit 2, named."""
    _usage_error(capsys, ["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "m"), *FAST],
                 "no such folder")


def test_train_on_one_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder with a single image: exit 2, says how many are needed."""
    _images(tmp_path / "one", 1)
    _usage_error(capsys, ["train", "--data", str(tmp_path / "one"), "--out", str(tmp_path / "m"), *FAST],
                 "at least 2")


def test_train_on_only_corrupt_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only unreadable files: exit 2, and the count of unreadable files is given."""
    (tmp_path / "bad").mkdir()
    for i in range(3):
        (tmp_path / "bad" / f"x{i}.png").write_bytes(b"\x89PNG garbage")
    _usage_error(capsys, ["train", "--data", str(tmp_path / "bad"), "--out", str(tmp_path / "m"), *FAST],
                 "3 unreadable")


@pytest.mark.parametrize("rate", ["0", "1", "1.5", "-0.01", "nan"])
def test_train_target_false_reject_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str], rate: str) -> None:
    """--target-false-reject outside (0, 1): exit 2 before any work."""
    _usage_error(capsys, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "m"), *FAST,
                          "--target-false-reject", rate], "--target-false-reject must be between 0 and 1")


def test_train_bad_size_family_device_and_existing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A size the default families or draem cannot take, a bad epoch count, an unknown family or device, an existing
    model: exit 2 each."""
    data = _images(tmp_path / "d", 2)
    out = str(tmp_path / "m")
    _usage_error(capsys, ["train", "--data", str(data), "--out", out, "--size", "40", "--quiet"],
                 "family auto fits patchcore and draem, and patchcore with feature layers [10, 14] needs height and "
                 "width divisible by 32")
    _usage_error(capsys, ["train", "--data", str(data), "--out", out, "--size", "40", "--family", "draem"],
                 "divisible by 16")
    _usage_error(capsys, ["train", "--data", str(data), "--out", out, "--size", "abc"], "--size")
    _usage_error(capsys, ["train", "--data", str(data), "--out", out, *FAST, "--family", "gan"], "unknown model family")
    _usage_error(capsys, ["train", "--data", str(data), "--out", out, *FAST, "--device", "tpu"], "device")
    _usage_error(capsys, ["train", "--data", str(data), "--out", out, *FAST, "--hparam", "widthless=3"], "bad options")
    _usage_error(capsys, ["train", "--data", str(data), "--out", out, *FAST, "--epochs", "many"], "--epochs")
    _usage_error(capsys, ["train", "--data", str(data), "--out", out, *FAST, "--epochs", "0"], "at least 1")
    _usage_error(capsys, ["train", "--data", str(data), "--out", out, *FAST, "--reduction", "median"],
                 "unknown score reduction")
    make_model(tmp_path / "existing")
    _usage_error(capsys, ["train", "--data", str(data), "--out", str(tmp_path / "existing"), *FAST], "--overwrite")


def test_corrupt_image_among_good_ones_is_skipped_and_counted(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """One corrupt file among good images, and mixed sizes: training succeeds, warns, and records the count."""
    data = _images(tmp_path / "d", 6)
    _images(tmp_path / "d2", 2, size=80, seed=5)
    for p in (tmp_path / "d2").iterdir():
        p.rename(data / f"big_{p.name}")
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "m"), *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "broken.png" in captured.err and "skipped 1 unreadable" in captured.err
    assert "Traceback" not in captured.err
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["data"]["skipped_unreadable"] == 1 and meta["data"]["count"] == 8
    assert meta["data"]["original_sizes"] == ["48x48", "80x80"]
    assert "trained" in captured.out and "threshold" in captured.out


def test_score_model_at_another_size_resizes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Images of another size than the model's input are resized (noted), not refused."""
    model = make_model(tmp_path / "m", size=32)
    images = _images(tmp_path / "imgs", 2, size=64)
    assert main(["score", str(images), "--model", str(model)]) == 0
    captured = capsys.readouterr()
    assert "resized 2 image(s) to the model input 32x32" in captured.err
    assert len([ln for ln in captured.out.splitlines() if ln.endswith(("accept", "reject"))]) == 2


def test_score_with_nothing_readable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only unreadable or missing files: exit 2."""
    model = make_model(tmp_path / "m")
    (tmp_path / "x.png").write_bytes(b"nope")
    _usage_error(capsys, ["score", str(tmp_path / "x.png"), str(tmp_path / "y.png"), "--model", str(model)],
                 "could be read")


def test_calibrate_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Out-of-range rate, missing inputs, mismatched method, empty folder, broken model: exit 2 each."""
    model = str(make_model(tmp_path / "m"))
    good = str(_images(tmp_path / "good", 3))
    (tmp_path / "empty").mkdir()
    _usage_error(capsys, ["calibrate", "--model", model, "--good", good, "--target-false-reject", "5"],
                 "between 0 and 1")
    _usage_error(capsys, ["calibrate", "--model", model], "give --good")
    _usage_error(capsys, ["calibrate", "--model", model, "--defect", good], "--defect needs --good")
    _usage_error(capsys, ["calibrate", "--model", model, "--good", good, "--method", "best-f1"],
                 "needs --good and --defect")
    _usage_error(capsys, ["calibrate", "--model", model, "--good", str(tmp_path / "empty")], "no readable images")
    _usage_error(capsys, ["calibrate", "--model", model, "--unlabelled", good], "at least 10")
    _usage_error(capsys, ["calibrate", "--model", model, "--threshold", "-1"], "positive")
    (tmp_path / "m" / "weights.pt").write_bytes(b"")
    _usage_error(capsys, ["calibrate", "--model", model, "--good", good], "weights.pt")


def test_evaluate_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model directory that is not a model, or a missing defect folder: exit 2."""
    good = str(_images(tmp_path / "good", 2))
    (tmp_path / "notmodel").mkdir()
    _usage_error(capsys, ["evaluate", "--model", str(tmp_path / "notmodel"), "--good", good, "--defect", good,
                          "--report", str(tmp_path / "r")], "not an inspector model")
    model = str(make_model(tmp_path / "m"))
    _usage_error(capsys, ["evaluate", "--model", model, "--good", good, "--defect", str(tmp_path / "none"),
                          "--report", str(tmp_path / "r")], "no such folder")


def test_help_texts() -> None:
    """Each command has --help (argparse exits 0 after printing it)."""
    for command in ("train", "calibrate", "evaluate", "score"):
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0


def test_colour_images_train_a_colour_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Colour images give a 3-channel model with channels auto."""
    folder = tmp_path / "c"
    folder.mkdir()
    renderer = PartRenderer(width=48, height=48, channels=3, seed=0, defect_rate=0.0)
    for i in range(4):
        cv2.imwrite(str(folder / f"c{i}.png"), renderer.render_part(None).image)
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "m"), *FAST]) == 0
    assert json.loads((tmp_path / "m" / "model.json").read_text())["input"]["channels"] == 3
    capsys.readouterr()
    gray = tmp_path / "g.png"
    cv2.imwrite(str(gray), np.full((48, 48), 128, np.uint8))
    assert main(["score", str(gray), "--model", str(tmp_path / "m")]) == 0  # gray image, colour model: converted


def test_calibrate_uses_good_subfolder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--good DIR with no images but a good/ subfolder (the synth layout) uses DIR/good and says so."""
    model = str(make_model(tmp_path / "m"))
    _images(tmp_path / "set" / "good", 3)
    assert main(["calibrate", "--model", model, "--good", str(tmp_path / "set"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "good/ subfolder" in err
    assert json.loads((tmp_path / "m" / "model.json").read_text())["calibration"]["count"] == 3


def test_train_pads_images_of_mixed_aspects_and_records_it(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Good images of different aspects are padded, not stretched: train says so and records `input.fit`,
    which score then applies (its heatmap covers the original image); --fit stretch overrides."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i, (h, w) in enumerate([(40, 80), (80, 40), (60, 60), (48, 96)]):
        renderer = PartRenderer(width=w, height=h, seed=i, defect_rate=0.0)
        cv2.imwrite(str(folder / f"p{i}.png"), renderer.render_part(None).image)
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "m"), *FAST]) == 0
    err = capsys.readouterr().err
    assert "aspects (width/height) range from 0.50 to 2.00" in err and "padded" in err
    assert json.loads((tmp_path / "m" / "model.json").read_text())["input"]["fit"] == "pad"
    heatmaps = tmp_path / "h"
    assert main(["score", str(folder / "p3.png"), "--model", str(tmp_path / "m"), "--heatmap", str(heatmaps)]) == 0
    art = load_artifact(tmp_path / "m")
    seen = load_files([folder / "p3.png"], 32, 32, 1, fit="pad")
    full = score_artifact(art, seen.images, torch.device("cpu"), keep_maps=True).errors[0]
    vmax = heat_scale(art.meta.score.reduction, art.meta.threshold.value)
    expected = overlay(cv2.imread(str(folder / "p3.png")), unfit(full, 48, 96, "pad"), vmax)  # the image's own map
    wrong = overlay(cv2.imread(str(folder / "p3.png")), full, vmax)  # margins included
    written = cv2.imread(str(heatmaps / "p3_heatmap.png")).astype(int)
    assert written.shape == (48, 96, 3) and np.abs(written - expected).max() <= 2 < np.abs(written - wrong).max()
    assert "(padded, aspect kept)" in capsys.readouterr().err
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "s"), "--fit", "stretch", *FAST]) == 0
    assert "padded" not in capsys.readouterr().err
    assert json.loads((tmp_path / "s" / "model.json").read_text())["input"]["fit"] == "stretch"


def test_train_stretches_images_of_different_contrasts_and_records_it(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Good images lit differently (contrasts from 50 to 230 grey levels) are stretched to the full range: train
    says so and records `input.contrast`, which score then applies; --contrast none overrides."""
    folder = tmp_path / "lit"
    folder.mkdir()
    for i, gain in enumerate([0.2, 0.5, 0.7, 0.9]):
        part = PartRenderer(width=32, height=32, seed=i, defect_rate=0.0).render_part(None).image
        cv2.imwrite(str(folder / f"p{i}.png"), (part.astype(np.float32) * gain + 10).round().astype(np.uint8))
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "m"), *FAST]) == 0
    err = capsys.readouterr().err
    assert "contrasts (1st to 99th percentile) span from" in err and "stretched to the full range" in err
    assert json.loads((tmp_path / "m" / "model.json").read_text())["input"]["contrast"] == "stretch"
    assert main(["score", str(folder / "p0.png"), "--model", str(tmp_path / "m")]) == 0
    out = capsys.readouterr()
    art = load_artifact(tmp_path / "m")
    scores = {c: score_artifact(art, load_files([folder / "p0.png"], 32, 32, 1, contrast=c).images,
                                torch.device("cpu")).scores["score"][0] for c in ("stretch", "none")}
    printed = float(out.out.splitlines()[0].split()[1])  # "PATH  SCORE  VERDICT"
    assert abs(printed - scores["stretch"]) <= 1e-5 * abs(scores["stretch"]) < abs(printed - scores["none"])
    assert "grey levels stretched" in out.err
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "n"), "--contrast", "none", *FAST]) == 0
    assert "stretched" not in capsys.readouterr().err
    assert json.loads((tmp_path / "n" / "model.json").read_text())["input"]["contrast"] == "none"

"""draem's coarser views (scales): the map they make, and the choice training makes from good images alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from inspector.artifact import load_artifact
from inspector.cli_train import _defects_line, _scales_line
from inspector.model import Draem, build_model
from inspector.scales import QUIETER
from inspector.train import TrainSettings, fit, load_split

HP = {"recon_width": 8, "seg_width": 8, "recon_depth": 2, "seg_depth": 2}  # step 8: fold 2, two stages
SIZE = 64


def test_scales_average_the_maps_of_resized_inputs() -> None:
    """scales [1, 0.75, 0.5] map x to the mean of its own map and the maps of x resized (area) to 48 and 32 px,
    each resized back (bilinear); a factor whose size is no multiple of the model's step is rounded to one."""
    torch.manual_seed(0)
    one = cast(Draem, build_model("draem", 1, SIZE, SIZE, **HP).eval())
    three = cast(Draem, build_model("draem", 1, SIZE, SIZE, scales=[1, 0.75, 0.5], **HP).eval())
    odd = cast(Draem, build_model("draem", 1, SIZE, SIZE, scales=[1, 0.7], **HP).eval())
    three.load_state_dict(one.state_dict())
    odd.load_state_dict(one.state_dict())
    x = torch.rand(2, 1, SIZE, SIZE)

    def back(side: int) -> torch.Tensor:
        small = one(F.interpolate(x, size=(side, side), mode="area"))
        return F.interpolate(small, size=(SIZE, SIZE), mode="bilinear", align_corners=False)

    with torch.no_grad():
        torch.testing.assert_close(three(x), (one(x) + back(48) + back(32)) / 3, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(odd(x), (one(x) + back(48)) / 2, rtol=1e-5, atol=1e-6)  # 44.8 px -> 48
        assert not torch.allclose(three(x), one(x))  # the coarser views do differ


@pytest.mark.parametrize("scales", [[0.5], [1, 1], [1, 0], [1, 1.5], []])
def test_scales_must_start_at_full_size_and_shrink(scales: list[float]) -> None:
    with pytest.raises(ValueError, match="scales must be 1 followed by distinct factors"):
        build_model("draem", 1, SIZE, SIZE, scales=scales, **HP)


def test_a_model_with_scales_traces_in_bfloat16() -> None:
    """The worker's TorchScript path takes a three-scale draem in bf16, without falling back to eager."""
    from inspector.worker import trace

    torch.manual_seed(0)
    net = build_model("draem", 1, SIZE, SIZE, scales=[1, 0.75, 0.5], **HP).eval()
    x = torch.rand(4, 1, SIZE, SIZE)
    with torch.no_grad():
        want = net(x)
    bf = net.to(torch.bfloat16)
    traced = trace(bf, x.to(torch.bfloat16), None)
    assert traced is not bf
    with torch.no_grad():
        got = traced(x.to(torch.bfloat16))
    assert got.dtype == torch.float32 and got.shape == (4, 1, SIZE, SIZE)
    assert float((got - want).abs().max()) < 0.05


def _noisy_plates(folder: Path, count: int) -> None:
    """Flat plates of one grey level each under camera noise: a coarser view averages the noise away."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        plate = rng.normal(100 + 50 * rng.random(), 6.0, (SIZE, SIZE))
        cv2.imwrite(str(folder / f"p{i:03d}.png"), np.clip(plate, 0, 255).astype(np.uint8))


def _fine_boards(folder: Path, count: int) -> None:
    """Binary boards of one-pixel tracks on a two-pixel pitch: structure that a coarser view turns to grey."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        board = np.zeros((SIZE, SIZE), np.uint8)
        board[:, int(rng.integers(2))::2] = 255  # vertical tracks
        y0, y1 = sorted(int(v) for v in rng.integers(0, SIZE, 2))
        board[y0:y1 + 1, :] = 255 * (np.arange(SIZE) % 2 == int(rng.integers(2)))[None]  # a band of crossings
        cv2.imwrite(str(folder / f"b{i:03d}.png"), board)


def _trained(root: Path, make: object, defect_size: str = "auto") -> Path:
    if not (root / "good").exists():
        make(root / "good", 40)  # type: ignore[operator]
    settings = TrainSettings(family="draem", height=SIZE, width=SIZE, hparams=HP,
                             epochs=30, batch_size=8, device="cpu", lr=3e-3,
                             val_fraction=0.25, max_minutes=None, precision="fp32", min_steps=240,  # 120 steps
                             defect_size=defect_size)
    fit(load_split(root / "good", settings), settings, root / f"model_{defect_size}")
    return root / f"model_{defect_size}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A model trained on noisy plates and one on fine boards, the defaults otherwise (a few seconds each)."""
    root = tmp_path_factory.mktemp("scales")
    return {"plates": _trained(root / "plates", _noisy_plates), "fine": _trained(root / "fine", _fine_boards)}


def test_training_keeps_coarser_views_for_noisy_plates_and_not_for_fine_boards(trained: dict[str, Path]) -> None:
    """scales auto: the plates' held-out maps are clearly quieter at half size than at full size (0.49-0.55 times
    with 1 or 2 threads; 0.49-0.89 over three draws of plates), so that view is kept; the fine boards' are louder
    there (5x), so that model keeps the full size alone. model.json records the choice, the loudness it came from
    and the scales the model loads with, and the training summary says how loud the view was and how to undo the
    choice."""
    plates, fine = load_artifact(trained["plates"]), load_artifact(trained["fine"])
    for art, want in ((plates, [1.0, 0.5]), (fine, [1.0])):
        evidence = art.meta.training["scales"]
        assert evidence["chosen"] == want == art.meta.hparams["scales"], evidence
        assert cast(Draem, art.module).scales == want
        loud = evidence["mean_max"]
        assert set(loud) == {"1.0", "0.5"} and (loud["0.5"] <= QUIETER * loud["1.0"]) == (0.5 in want), loud
        line = _scales_line(want, evidence)  # what `inspector train` prints
        assert f"{loud['0.5'] / loud['1.0']:.2f}x as loud" in line
        assert ("--scales 1 for the full size alone" if 0.5 in want else "--scales 1,0.5 to force") in line


def test_defect_size_auto_grows_the_defects_where_the_part_looks_the_same_at_half_size(
        trained: dict[str, Path], tmp_path: Path) -> None:
    """defect_size auto asks the held-out good images after min_steps / 6 steps (40 of these 120), with the rule of
    the coarser view applied to the mean of readings at steps 32, 36 and 40: the plates look the same at half
    size, so training starts again with defects up to the image's size, and gives the very model that
    defect_size image gives; the fine boards do not, so theirs stay sized to the crop. model.json records the
    step, the readings, their mean and the choice, and the training summary says it and how to override it. A
    training that ends before the step keeps crop-sized defects and says why."""
    for name, want in (("plates", "image"), ("fine", "crop")):
        art = load_artifact(trained[name])
        chosen = art.meta.training["defect_size"]
        assert chosen["chosen"] == want and chosen["at_step"] == 40, chosen
        loud, readings = chosen["mean_max"], chosen["readings"]
        assert list(readings) == ["32", "36", "40"], readings  # 0.8, 0.9 and 1 times the step, averaged
        for factor in ("1.0", "0.5"):
            assert loud[factor] == pytest.approx(np.mean([r[factor] for r in readings.values()]), abs=1e-3)
        assert (loud["0.5"] <= QUIETER * loud["1.0"]) == (want == "image"), loud
        line = _defects_line(chosen)
        assert f"{loud['0.5'] / loud['1.0']:.2f}x as loud" in line
        assert ("--defect-size crop" if want == "image" else "--defect-size image") in line
        assert art.meta.training["stopped_by"] == "epochs" and len(art.meta.training["history"]) == 30
    image = load_artifact(_trained(trained["plates"].parent, _noisy_plates, "image")).meta
    assert image.weights_sha256 == load_artifact(trained["plates"]).meta.weights_sha256
    assert "defect_size" not in image.training  # as set: nothing asked
    _noisy_plates(tmp_path / "short" / "good", 12)
    settings = TrainSettings(family="draem", height=SIZE, width=SIZE, hparams=HP, epochs=2,
                             batch_size=8, device="cpu", val_fraction=0.25,
                             max_minutes=None)  # 2 steps, before step 500
    meta = fit(load_split(tmp_path / "short" / "good", settings), settings, tmp_path / "short" / "m").artifact.meta
    assert meta.training["defect_size"]["chosen"] == "crop" and meta.training["defect_size"]["at_step"] == 500
    assert "not asked" in _defects_line(meta.training["defect_size"])


def test_cli_scales_are_recorded_and_bad_ones_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--scales 1,0.5` is taken as given (no choice recorded, the summary says so); `--scales 0.5`, `--scales x`
    and scales for an autoencoder are usage errors that say why, before any image is read."""
    from inspector.cli import EXIT_USAGE, main

    good = tmp_path / "good"
    _noisy_plates(good, 8)
    hp = [arg for kv in HP.items() for arg in ("--hparam", f"{kv[0]}={kv[1]}")]
    model = tmp_path / "m"
    assert main(["train", "--data", str(good), "--out", str(model), "--family", "draem", "--size", "32",
                 "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--quiet", "--scales", "1,0.5", *hp]) == 0
    meta = json.loads((model / "model.json").read_text())
    assert meta["hparams"]["scales"] == [1.0, 0.5] and "scales" not in meta["training"]
    assert meta["training"]["settings"]["scales"] == [1.0, 0.5]
    out = capsys.readouterr().out
    assert "scales    1, 0.5 (as set)" in out
    assert "defects   crop-sized (auto: training ended before step 500, so the good images were not asked)" in out
    settings = ["--data", str(good), "--out", str(tmp_path / "m2")]
    for extra, says in ((["--scales", "0.5"], "1 followed by"), (["--scales", "x"], "--scales must be"),
                        (["--scales", "1,0.5", "--family", "conv-ae"], "scales apply to family draem")):
        assert main(["train", *settings, *extra]) == EXIT_USAGE
        assert says in capsys.readouterr().err

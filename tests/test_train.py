"""Training, calibration and evaluation of a tiny real model on generated images, and the artifact it writes."""

from __future__ import annotations

import io
import json
import math
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from benchmarks.quality import held_out_mask, scoring_threads
from inspector import calibrate, dataset
from inspector.artifact import ArtifactError, load_artifact
from inspector.cli import main
from inspector.inference import run, score_artifact, to_tensor
from inspector.preprocess import choose_contrast, choose_fit, contrast_levels, prepare, resize, stretch_contrast, unfit
from inspector.progress import Progress
from inspector.synth import PartRenderer
from inspector.train import (
    CLOCK_EPOCH,
    Augment,
    TrainSettings,
    _batches,
    _budget_binds,
    _deadline,
    _train,
    augment,
    epochs_for,
    fit,
    hparams_for,
    load_split,
    steps_per_epoch,
)

SIZE = 32  # model input; images are rendered at 64 and resized, as the daemon does
HP = {"base_width": 8, "depth": 3, "latent": 16}


def _good_images(folder: Path, count: int, seed: int) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    renderer = PartRenderer(width=64, height=64, channels=1, seed=seed, defect_rate=0.0)
    images = [renderer.render_part(None).image for _ in range(count)]
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"good_{i:03d}.png"), image)
    return images


def _clearly_defective(image: np.ndarray) -> np.ndarray:
    """A good part with a large bright patch and a dark gash painted on its face."""
    out = image.copy()
    out[14:30, 34:50] = 255
    out[36:40, 12:44] = 0
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny model trained for a few seconds on 48 generated good parts, plus test folders."""
    root = tmp_path_factory.mktemp("train")
    _good_images(root / "data" / "good", 48, seed=0)
    fresh = _good_images(root / "test" / "good", 12, seed=1)
    (root / "test" / "defect").mkdir(parents=True)
    for i, image in enumerate(fresh[:8]):
        cv2.imwrite(str(root / "test" / "defect" / f"defect_{i:03d}.png"), _clearly_defective(image))
    settings = TrainSettings(family="conv-ae", height=SIZE, width=SIZE, hparams=HP, epochs=25, batch_size=8,
                             device="cpu", val_fraction=0.25)
    split = load_split(root / "data", settings)
    fit(split, settings, root / "model")
    return {"root": root, "model": root / "model", "good": root / "test" / "good", "defect": root / "test" / "defect"}


def _copy(model: Path, dest: Path) -> Path:
    shutil.copytree(model, dest)
    return dest


def test_artifact_describes_the_training(trained: dict[str, Path]) -> None:
    """model.json records family, input, score, threshold, calibration, data summary and training settings."""
    art = load_artifact(trained["model"])
    meta = art.meta
    assert meta.family == "conv-ae" and meta.hparams == HP
    assert (meta.input.height, meta.input.width, meta.input.channels) == (SIZE, SIZE, 1)
    assert meta.threshold.method == "good_quantile" and meta.threshold.value > 0
    assert meta.calibration is not None and meta.calibration.count == 48  # all good images: 12 held out checked it
    assert meta.threshold.details["calibrated_on"] == "48 good training images (36 trained on, 12 held out)"
    assert meta.threshold.details["held_out_count"] == 12 and meta.threshold.details["held_out_check_p"] >= 0.05
    assert meta.data["count"] == 48 and meta.data["train_count"] == 36 and len(meta.data["content_hash"]) == 64
    assert meta.data["folder"].endswith("good")  # DIR/good was used
    assert meta.training["settings"]["epochs"] == 25 and meta.training["best_epoch"] >= 1
    assert meta.training["history"][-1]["val_loss"] > 0
    assert meta.training["settings"]["precision"] == "auto" and meta.training["precision"] == "fp32"  # an AE


def test_defective_scores_above_and_good_below_the_threshold(trained: dict[str, Path]) -> None:
    """A clearly defective generated image scores above the threshold; typical good ones below."""
    art = load_artifact(trained["model"])
    good = dataset.load_folder(trained["good"], SIZE, SIZE, 1)
    defect = dataset.load_folder(trained["defect"], SIZE, SIZE, 1)
    sg = score_artifact(art, good.images, torch.device("cpu")).scores["score"]
    sd = score_artifact(art, defect.images, torch.device("cpu")).scores["score"]
    threshold = art.meta.threshold.value
    assert np.all(sd >= threshold), (sd, threshold)
    assert np.median(sg) < threshold and np.mean(sg < threshold) >= 0.75, (sg, threshold)


def test_same_command_gives_the_same_weights(tmp_path: Path) -> None:
    """Training twice with the same settings on the CPU writes identical weights."""
    _good_images(tmp_path / "data", 12, seed=3)
    settings = TrainSettings(family="conv-ae", height=SIZE, width=SIZE, hparams=HP, epochs=2, batch_size=4,
                             device="cpu")
    split = load_split(tmp_path / "data", settings)
    a = fit(split, settings, tmp_path / "a").artifact.meta.weights_sha256
    b = fit(load_split(tmp_path / "data", settings), settings, tmp_path / "b").artifact.meta.weights_sha256
    assert a == b
    other = settings.model_copy(update={"seed": 1})
    c = fit(load_split(tmp_path / "data", other), other, tmp_path / "c").artifact.meta.weights_sha256
    assert c != a


def test_threshold_from_held_out_sets_it_on_the_held_out_slice_alone(tmp_path: Path) -> None:
    """threshold_from "held-out": the threshold and the stored good-score statistics come from the held-out images
    only, and are their good quantile."""
    _good_images(tmp_path / "data", 12, seed=6)
    settings = TrainSettings(family="conv-ae", height=SIZE, width=SIZE, hparams=HP, epochs=2, batch_size=4,
                             device="cpu", val_fraction=0.25, threshold_from="held-out")
    result = fit(load_split(tmp_path / "data", settings), settings, tmp_path / "m")
    meta = result.artifact.meta
    assert meta.calibration is not None and meta.calibration.count == 3
    assert meta.threshold.details["calibrated_on"] == "3 held-out training images"
    assert meta.threshold.value == calibrate.good_quantile(result.val_scores, 0.01).value


def test_time_budget_stops_training(tmp_path: Path) -> None:
    """With --max-minutes the loop stops early, keeps the best checkpoint and records why."""
    _good_images(tmp_path / "data", 8, seed=4)
    settings = TrainSettings(family="conv-ae", height=SIZE, width=SIZE, hparams=HP, epochs=10_000, batch_size=4,
                             device="cpu", max_minutes=0.02)
    result = fit(load_split(tmp_path / "data", settings), settings, tmp_path / "m")
    assert result.stopped == "time budget" and result.epochs_run < 10_000
    training = result.artifact.meta.training
    assert training["deterministic"] is False and training["clocked_schedule"] is True
    seconds = [h["seconds"] for h in training["history"]]
    assert seconds == sorted(seconds) and seconds[-1] <= training["seconds"]


def test_training_stops_in_time_to_score_the_trained_on_images(tmp_path: Path) -> None:
    """The images scored after training for the threshold count in the budget: the loop stops that many images'
    validation time before the deadline. With far more of them than the budget can score, it stops in the second
    epoch; with none, the same budget runs every epoch."""
    _good_images(tmp_path / "data", 12, seed=7)
    settings = TrainSettings(family="conv-ae", height=SIZE, width=SIZE, hparams=HP, epochs=4, batch_size=4,
                             device="cpu")
    split = load_split(tmp_path / "data", settings)
    hp, cpu = hparams_for(settings), torch.device("cpu")
    deadline = time.monotonic() + 600
    every = _train(split, settings, hp, cpu, deadline, torch.float32, None, None)
    assert every.stopped == "epochs" and every.epochs_run == 4
    squeezed = _train(split, settings, hp, cpu, deadline, torch.float32, None, None, after=10**9)
    assert squeezed.stopped == "time budget" and 1 < squeezed.epochs_run < 2


def test_draem_takes_two_views_unless_its_segmenter_views_are_asked_for() -> None:
    """draem's default is the frame and its mirror image (docs/quality.md, row 118); asking for the segmenter's
    views alone gives one whole-model view, since the two do not go together; both given are kept as given."""
    def hp(**given: int) -> dict[str, object]:
        return hparams_for(TrainSettings(family="draem", hparams=given))
    assert (hp()["views"], hp()["seg_views"]) == (2, 1)
    assert (hp(seg_views=2)["views"], hp(seg_views=2)["seg_views"]) == (1, 2)
    assert hp(views=1)["views"] == 1 and hp(views=4, seg_views=1)["views"] == 4
    assert (hp(views=2, seg_views=2)["views"], hp(views=2, seg_views=2)["seg_views"]) == (2, 2)  # refused later


def test_the_clock_decides_on_the_second_epochs_pace() -> None:
    """Whether the budget binds is judged from the second epoch's pace, not the first's: the first also holds
    the setup and the kernels' warm-up. On magnetic_tile the first epoch took 7.4 s and the second 5.4 s, with
    525 s of the budget left after it: judged on the first, the decision (and so the model) flipped from run to
    run; on the second, 68 epochs fit with a margin of 1.4."""
    assert CLOCK_EPOCH == 2
    assert not _budget_binds(68, 5.4, 525.0)  # 367 s of epochs left: fits, the schedule ignores the clock
    assert _budget_binds(68, 7.8, 525.0)  # 530 s: the decay follows the clock to end at the deadline
    assert not _budget_binds(0, 100.0, 1.0)  # the last epoch is done


def test_time_budget_counts_from_when_the_images_started_being_read(tmp_path: Path) -> None:
    """`inspector train` starts the budget before reading the images (3,000 images of 5 megapixels take minutes
    to read), so the whole command stays within it; training still gets a quarter of it, however long the
    reading took."""
    assert _deadline(None, 100.0, 0.0) == math.inf
    assert _deadline(2, 100.0, None) == 220.0  # from the start of training
    assert _deadline(2, 100.0, 40.0) == 160.0  # reading took a minute: one minute left
    assert _deadline(2, 100.0, -1000.0) == 130.0  # reading took longer than the budget: a quarter of it
    _good_images(tmp_path / "data", 8, seed=4)
    settings = TrainSettings(family="conv-ae", height=SIZE, width=SIZE, hparams=HP, epochs=10_000, batch_size=4,
                             device="cpu", max_minutes=0.05)  # 3 s
    split = load_split(tmp_path / "data", settings)
    result = fit(split, settings, tmp_path / "m", budget_started=time.monotonic() - 2.9)  # 0.1 s left: 0.75 s
    assert result.stopped == "time budget"
    assert 0.75 <= result.artifact.meta.training["seconds"] < 2.0


def test_auto_epochs_give_a_small_set_at_least_min_steps(tmp_path: Path) -> None:
    """epochs auto: 40 passes over a large set, and over a small one as many as `min_steps` steps need (150
    images got 360 steps from 40 epochs; docs/quality.md row 53); a number of epochs is kept as given."""
    default = TrainSettings()
    assert default.epochs == "auto" and default.min_steps == 3000
    assert epochs_for(default, steps_per_epoch(2700, 16)) == 40  # 169 steps per epoch
    assert epochs_for(default, steps_per_epoch(900, 16)) == 53  # deeppcb: 57 steps per epoch
    assert epochs_for(default, steps_per_epoch(135, 16)) == 334  # 9 steps per epoch
    assert epochs_for(default.model_copy(update={"epochs": 7}), 9) == 7
    for n in range(1, 40):  # steps_per_epoch counts the batches the training loop cuts
        for size in (1, 4, 16):
            assert steps_per_epoch(n, size) == len(list(_batches(n, size, torch.Generator().manual_seed(n))))
    _good_images(tmp_path / "data", 10, seed=5)
    settings = TrainSettings(family="conv-ae", height=SIZE, width=SIZE, hparams=HP, batch_size=4, device="cpu",
                             min_steps=120)
    result = fit(load_split(tmp_path / "data", settings), settings, tmp_path / "m")
    training = result.artifact.meta.training  # 9 training images: batches of 4 and 5, 2 steps per epoch
    assert training["settings"]["epochs"] == "auto" and training["epochs"] == 60
    assert result.epochs_run == 60 and len(training["history"]) == 60 and result.stopped == "epochs"


def test_calibrate_commands_write_the_threshold(trained: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """calibrate with good only, good + defect, unlabelled, and a manual value: each writes its method."""
    model = _copy(trained["model"], tmp_path / "m")
    good, defect = str(trained["good"]), str(trained["defect"])
    assert main(["calibrate", "--model", str(model), "--good", good, "--quiet", "--target-false-reject", "0.1"]) == 0
    meta = json.loads((model / "model.json").read_text())
    assert meta["threshold"]["method"] == "good_quantile" and meta["calibration"]["count"] == 12
    assert main(["calibrate", "--model", str(model), "--good", good, "--defect", defect, "--quiet"]) == 0
    meta = json.loads((model / "model.json").read_text())
    assert meta["threshold"]["method"] == "best_f1" and meta["threshold"]["details"]["f1"] > 0.8
    assert main(["calibrate", "--model", str(model), "--good", good, "--defect", defect, "--quiet",
                 "--method", "target-false-reject", "--target-false-reject", "0.2"]) == 0
    assert json.loads((model / "model.json").read_text())["threshold"]["method"] == "target_false_reject"
    mixed = tmp_path / "mixed"
    shutil.copytree(trained["good"], mixed)
    for p in sorted(trained["defect"].iterdir())[:2]:
        shutil.copy(p, mixed / p.name)
    assert main(["calibrate", "--model", str(model), "--unlabelled", str(mixed), "--quiet"]) == 0
    meta = json.loads((model / "model.json").read_text())
    assert meta["threshold"]["method"] == "two_modes" and meta["threshold"]["details"]["n"] == 14
    assert main(["calibrate", "--model", str(model), "--threshold", "0.5"]) == 0
    threshold = json.loads((model / "model.json").read_text())["threshold"]
    assert (threshold["value"], threshold["method"]) == (0.5, "manual")
    load_artifact(model)  # still a valid artifact
    assert "threshold" in capsys.readouterr().out


def test_evaluate_writes_a_sane_report(trained: dict[str, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """evaluate prints the table and writes report.json and a self-contained report.html with sane numbers."""
    out = tmp_path / "report"
    code = main(["evaluate", "--model", str(trained["model"]), "--good", str(trained["good"]), "--defect",
                 str(trained["defect"]), "--report", str(out), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "AUROC" in printed and "miss rate" in printed
    report = json.loads((out / "report.json").read_text())
    m = report["metrics"]
    assert m["n_good"] == 12 and m["n_defect"] == 8
    assert m["auroc"] > 0.9 and m["average_precision"] > 0.8
    assert 0 <= m["best_f1"] <= 1 and m["at_threshold"]["miss"] == 0
    assert len(report["scores"]["good"]) == 12
    page = (out / "report.html").read_text()
    assert page.count("<svg") == 2 and "data:image/png;base64," in page and "threshold" in page
    assert "src=\"http" not in page  # self-contained


def test_score_prints_verdicts_and_writes_heatmaps(trained: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """score prints one line per image with its verdict and writes one overlay per image."""
    defect = sorted(trained["defect"].iterdir())[0]
    good = sorted(trained["good"].iterdir())[0]
    code = main(["score", str(defect), str(good), "--model", str(trained["model"]), "--heatmap", str(tmp_path / "h")])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(str(defect)) and " reject" in lines[0]
    heat = cv2.imread(str(tmp_path / "h" / f"{defect.stem}_heatmap.png"))
    assert heat is not None and heat.shape == (64, 64, 3)  # drawn over the original image
    assert len(list((tmp_path / "h").iterdir())) == 2


def test_quality_benchmark_finds_the_held_out_images_or_says_why_not(trained: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    """`benchmarks/quality.py --trained` marks the model's held-out images in the folder it was trained on, and
    stops with a clear message on copies of it under other names."""
    art = load_artifact(trained["model"])
    folder = trained["root"] / "data" / "good"
    paths = sorted(folder.iterdir())
    mask = held_out_mask(art, paths, folder)
    assert mask.sum() == 12 and {p.name for p in np.asarray(paths)[mask]} == set(art.meta.data["held_out_files"])
    renamed = [tmp_path / f"{p.stem}.webp" for p in paths]
    with pytest.raises(SystemExit, match=r"12 of the 12 held-out files .* are not there"):
        held_out_mask(art, renamed, tmp_path)


def test_quality_benchmark_scores_with_the_threads_training_is_given() -> None:
    """Side-by-side benchmarks on a GPU host (each `-- --threads 3`) must not each score on every core: five
    such runs on 16 cores, each scoring with torch's 16 threads, stalled in scoring for over 4 minutes after
    107-148 s of training (docs/quality.md row 101)."""
    assert scoring_threads(["--seed", "1", "--threads", "3"]) == 3
    assert scoring_threads(["--threads=2"]) == 2
    assert scoring_threads(["--seed", "1"]) is None


def test_artifact_round_trip(trained: dict[str, Path], tmp_path: Path) -> None:
    """A loaded artifact re-saved and re-loaded has the same weights, metadata and outputs."""
    from inspector.artifact import save_artifact

    art = load_artifact(trained["model"])
    meta = art.meta.model_dump(exclude={"format", "format_version", "inspector_version", "weights_sha256"})
    again = save_artifact(tmp_path / "copy", art.module, meta)
    assert again.meta.weights_sha256 == art.meta.weights_sha256
    assert again.meta.model_dump(exclude={"name"}) == art.meta.model_dump(exclude={"name"})
    x = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE), dtype=np.uint8)
    red = {"s": art.reduction()}
    np.testing.assert_array_equal(run(art.module, x, red, torch.device("cpu")).scores["s"],
                                  run(again.module, x, red, torch.device("cpu")).scores["s"])


def test_broken_artifacts_are_rejected_clearly(trained: dict[str, Path], tmp_path: Path) -> None:
    """Missing weights, truncated weights, weights that do not fit, and non-model JSON: one clear ArtifactError."""
    missing = _copy(trained["model"], tmp_path / "missing")
    (missing / "weights.pt").unlink()
    with pytest.raises(ArtifactError, match="weights.pt: missing"):
        load_artifact(missing)

    truncated = _copy(trained["model"], tmp_path / "truncated")
    data = (truncated / "weights.pt").read_bytes()
    (truncated / "weights.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated"):
        load_artifact(truncated)

    misfit = _copy(trained["model"], tmp_path / "misfit")
    meta = json.loads((misfit / "model.json").read_text())
    meta["hparams"]["base_width"] = 4
    (misfit / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="do not fit"):
        load_artifact(misfit)

    other = tmp_path / "other"
    other.mkdir()
    (other / "model.json").write_text(json.dumps({"name": "x", "layers": [1, 2]}))
    with pytest.raises(ArtifactError, match="not an inspector model"):
        load_artifact(other)

    with pytest.raises(ArtifactError, match="does not exist"):
        load_artifact(tmp_path / "nowhere")


def test_dataset_skips_corrupt_resizes_mixed_and_hashes(tmp_path: Path) -> None:
    """Corrupt files are skipped and counted, mixed sizes resized, channels detected, the hash tracks content."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((40, 50), 100, np.uint8))
    cv2.imwrite(str(folder / "b.jpg"), np.full((64, 64, 3), 120, np.uint8))  # colour with equal channels
    (folder / "c.png").write_bytes(b"not a png at all")
    warnings: list[str] = []
    data = dataset.load_folder(folder, 32, 32, "auto", warn=warnings.append)
    assert len(data) == 2 and [p.name for p in data.skipped] == ["c.png"] and "c.png" in warnings[0]
    assert data.channels == 1 and data.images.shape == (2, 32, 32) and data.images.dtype == np.uint8
    assert data.resized == 2 and data.sizes == {(50, 40), (64, 64)}
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[..., 2] = 200
    cv2.imwrite(str(folder / "d.png"), colour)
    data2 = dataset.load_folder(folder, 32, 32, "auto", warn=warnings.append)
    assert data2.channels == 3 and data2.images.shape == (3, 32, 32, 3)
    assert data2.content_hash != data.content_hash
    assert dataset.load_folder(folder, 32, 32, "auto", warn=warnings.append).content_hash == data2.content_hash
    assert dataset.load_folder(folder, 32, 32, 1, warn=warnings.append).images.shape == (3, 32, 32)


def test_reading_threads_keep_the_files_order_and_what_one_thread_reads(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Files are read, decoded and resized on several threads (twice as fast on two cores), with no more than a
    few ahead of the one being collected; the images, their order, the skips, the warnings, the contrast choice
    and the hash are those of one thread."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(23):
        h, w = rng.integers(20, 90, 2)
        cv2.imwrite(str(folder / f"{i:02d}.png"), rng.integers(0, 60 + 8 * i, (h, w), dtype=np.uint8))
    (folder / "07b.png").write_bytes(b"broken")
    runs = []
    for threads in (1, 4):
        monkeypatch.setattr(dataset, "READ_THREADS", threads)
        warnings: list[str] = []
        data = dataset.load_folder(folder, 32, 32, "auto", warn=warnings.append, fit="auto", contrast="auto")
        runs.append((data, warnings))
    (one, one_warnings), (four, four_warnings) = runs
    assert [p.name for p in four.paths] == [f"{i:02d}.png" for i in range(23)] == [p.name for p in one.paths]
    assert np.array_equal(four.images, one.images) and four.content_hash == one.content_hash
    assert four_warnings == one_warnings and [p.name for p in four.skipped] == ["07b.png"]
    assert (four.fit, four.contrast, four.spans, four.sizes) == (one.fit, one.contrast, one.spans, one.sizes)
    assert four.fit == "pad" and four.contrast == "stretch"


def test_pad_fit_keeps_the_aspect_and_reflects_the_margins() -> None:
    """fit "pad" shrinks a 40x100 image to 32x13 inside a 32x32 input, so a disc stays round (stretching
    makes it an ellipse), mirrors the image's edges into the margins, writes into a given buffer, and `unfit`
    finds the image again in a map at the input size."""
    image = np.zeros((40, 100), np.uint8)
    cv2.circle(image, (50, 20), 12, 255, -1)
    stretched = resize(image, 32, 32, "stretch")
    padded = resize(image, 32, 32, "pad")
    inner = padded[9:22]  # 40 * 32 / 100 = 12.8 -> 13 rows, centred: 9 above, 10 below
    assert padded.shape == stretched.shape == (32, 32)

    def extent(img: np.ndarray) -> tuple[int, int]:
        ys, xs = np.nonzero(img > 127)
        return int(np.ptp(ys)) + 1, int(np.ptp(xs)) + 1

    h, w = extent(inner)
    assert abs(h - w) <= 1  # round
    h, w = extent(stretched)
    assert h >= 2 * w - 2  # 2.5x taller than wide, give or take the rounding of a small disc
    np.testing.assert_array_equal(padded[8], inner[1])  # reflected about the inner image's first row
    np.testing.assert_array_equal(padded[22], inner[-2])
    np.testing.assert_array_equal(unfit(padded, 40, 100, "pad"), inner)  # a map's part that shows the image
    assert unfit(stretched, 40, 100, "stretch").shape == (32, 32)
    buffer = np.empty((32, 32), np.uint8)
    assert prepare(image, None, 32, 32, 1, out=buffer, fit="pad") is buffer
    np.testing.assert_array_equal(buffer, padded)
    with pytest.raises(ValueError, match="unknown fit"):
        resize(image, 32, 32, "crop")  # type: ignore[arg-type]


def test_large_fractional_shrinks_take_two_steps_close_to_one() -> None:
    """Below a 3x shrink, or at a whole factor, frames are resized exactly as OpenCV's one-step area resize
    (so models trained before the two-step resize see the same pixels); a large fractional shrink (a 5 MP
    sensor to 256) first shrinks by the whole part, within a grey level or two of the one-step result on average."""
    rng = np.random.default_rng(0)

    def smooth(h: int, w: int) -> np.ndarray:
        small = rng.random((h // 64, w // 64)).astype(np.float32)
        return (cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1) * 255).astype(np.uint8)

    for h, w in [(640, 640), (700, 500), (1024, 1280), (2048, 2560)]:  # 2.5x, 2.7x/1.95x, 4x/5x, 8x/10x
        image = smooth(h, w)
        np.testing.assert_array_equal(resize(image, 256, 256), cv2.resize(image, (256, 256),
                                                                           interpolation=cv2.INTER_AREA))
    image = smooth(2048, 2448)  # 8x and 9.56x
    one_step = cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA).astype(int)
    two_step = resize(image, 256, 256)
    assert not np.array_equal(two_step, one_step)  # the two-step path was taken
    assert np.abs(two_step - one_step).mean() < 1.0 and np.abs(two_step - one_step).max() <= 4
    padded = resize(image, 256, 256, "pad")  # 2448x2048 -> 256x214 (9x first, 5 rows dropped), margins reflected
    one_step = cv2.resize(image, (256, 214), interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(unfit(padded, 2048, 2448, "pad") - one_step).mean() < 2.5  # 1.8: a 9x box, then 1.06x


def test_auto_fit_pads_only_images_of_different_aspects(tmp_path: Path) -> None:
    """load_folder(fit="auto") stretches images that share one aspect (one camera), and pads when their
    aspects differ, with the very pixels an explicit fit gives."""
    rng = np.random.default_rng(0)
    same, mixed = tmp_path / "same", tmp_path / "mixed"
    for folder, shapes in ((same, [(40, 60), (80, 120)]), (mixed, [(40, 60), (60, 40), (50, 50)])):
        folder.mkdir()
        for i, shape in enumerate(shapes):
            cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, shape, dtype=np.uint8))
    auto = dataset.load_folder(same, 32, 32, 1, fit="auto")
    assert auto.fit == "stretch"
    np.testing.assert_array_equal(auto.images, dataset.load_folder(same, 32, 32, 1).images)
    auto = dataset.load_folder(mixed, 32, 32, 1, fit="auto")
    assert auto.fit == "pad"
    np.testing.assert_array_equal(auto.images, dataset.load_folder(mixed, 32, 32, 1, fit="pad").images)
    assert not np.array_equal(auto.images, dataset.load_folder(mixed, 32, 32, 1).images)
    assert choose_fit([1.5, 1.5]) == "stretch" and choose_fit([1.0, 1.04]) == "stretch"
    assert choose_fit([0.4, 2.7]) == "pad" and choose_fit([]) == "stretch"


def test_contrast_stretch_spans_the_full_range_and_leaves_blank_images_alone() -> None:
    """stretch_contrast maps an image's 1st..99th percentile grey levels to 0..255 (the tails clipped, the order
    of grey levels kept), leaves binary and blank images as they are, and prepare stretches a copy, never
    the caller's frame."""
    rng = np.random.default_rng(0)
    dim = rng.integers(40, 121, (64, 64), dtype=np.uint8)  # grey levels 40..120
    lo, hi = contrast_levels(dim)
    assert 40 <= lo <= 42 and 118 <= hi <= 120
    out = stretch_contrast(dim.copy())
    assert out.min() == 0 and out.max() == 255
    assert (out == 0).mean() <= 0.03 and (out == 255).mean() <= 0.03  # only the 1 % tails (and ties) clipped
    order = np.argsort(dim.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order].astype(int)) >= 0)  # a brighter pixel never ends darker
    binary = (rng.random((64, 64)) < 0.3).astype(np.uint8) * 255  # a binarized board: already 0..255
    np.testing.assert_array_equal(stretch_contrast(binary.copy()), binary)
    blank = np.full((64, 64), 90, np.uint8)
    blank[0, :3] = 95  # a few levels of noise: not stretched into a full-range pattern
    np.testing.assert_array_equal(stretch_contrast(blank.copy()), blank)
    colour = np.dstack([dim, dim // 2 + 10, dim])
    assert stretch_contrast(colour.copy()).max() == 255
    wide = np.repeat(dim, 2, axis=1)
    view = wide[:, ::2]  # a strided view, as a region of interest can be
    assert stretch_contrast(view) is view
    np.testing.assert_array_equal(view, out)
    frame = dim.copy()
    prepared = prepare(frame, None, 64, 64, 1, contrast="stretch")
    np.testing.assert_array_equal(frame, dim)
    np.testing.assert_array_equal(prepared, out)
    buffer = np.zeros((32, 32), np.uint8)
    assert prepare(frame, None, 32, 32, 1, out=buffer, contrast="stretch") is buffer
    assert buffer.min() == 0 and buffer.max() == 255
    np.testing.assert_array_equal(buffer, stretch_contrast(prepare(frame, None, 32, 32, 1)))


def test_auto_contrast_stretches_only_images_whose_contrasts_differ(tmp_path: Path) -> None:
    """load_folder(contrast="auto") keeps the grey levels of images lit alike and stretches them, with the very
    pixels an explicit "stretch" gives, when their contrasts differ."""
    rng = np.random.default_rng(0)
    alike, varied = tmp_path / "alike", tmp_path / "varied"
    for folder, spans in ((alike, [100, 100, 104]), (varied, [40, 100, 200])):
        folder.mkdir()
        for i, span in enumerate(spans):
            cv2.imwrite(str(folder / f"{i}.png"), (30 + rng.random((32, 32)) * span).astype(np.uint8))
    auto = dataset.load_folder(alike, 32, 32, 1, contrast="auto")
    assert auto.contrast == "none"
    np.testing.assert_array_equal(auto.images, dataset.load_folder(alike, 32, 32, 1).images)
    auto = dataset.load_folder(varied, 32, 32, 1, contrast="auto")
    assert auto.contrast == "stretch" and auto.spans[0] < 45 and auto.spans[1] > 190
    np.testing.assert_array_equal(auto.images, dataset.load_folder(varied, 32, 32, 1, contrast="stretch").images)
    assert not np.array_equal(auto.images, dataset.load_folder(varied, 32, 32, 1).images)
    assert choose_contrast([255] * 40 + [0]) == "none" and choose_contrast([]) == "none"  # one blank frame
    assert choose_contrast([60] * 10 + [200] * 10) == "stretch"


def test_training_folder_prefers_good_subfolder(tmp_path: Path) -> None:
    """DIR/good is used when present, and the note says so."""
    assert dataset.training_folder(tmp_path) == (tmp_path, None)
    (tmp_path / "good").mkdir()
    folder, note = dataset.training_folder(tmp_path)
    assert folder == tmp_path / "good" and note and "good/" in note


def test_augment_keeps_shape_range_and_is_seeded() -> None:
    """Augmentation keeps (B, C, H, W) in [0, 1] and is reproducible from the generator's seed."""
    x = to_tensor(np.random.default_rng(0).integers(0, 256, (4, 32, 32), dtype=np.uint8), torch.device("cpu"))
    a = augment(x, Augment(), torch.Generator().manual_seed(0))
    b = augment(x, Augment(), torch.Generator().manual_seed(0))
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, b) and not torch.equal(a, x)


def test_augment_flip_mirrors_whole_images_in_all_four_ways() -> None:
    """With `flip` and no other jitter each image comes back as itself or one of its three mirror images,
    and over a batch all four occur."""
    x = to_tensor(np.random.default_rng(0).integers(0, 256, (64, 8, 12), dtype=np.uint8), torch.device("cpu"))
    out = augment(x, Augment(shift=0, brightness=0, contrast=0, flip=True), torch.Generator().manual_seed(0))
    seen = set()
    for i in range(len(x)):
        kinds = [dims for dims in ((), (2,), (1,), (1, 2))
                 if torch.allclose(out[i], x[i].flip(dims) if dims else x[i], atol=1e-6)]
        assert len(kinds) == 1, f"image {i} is not a mirror image of its input"
        seen.add(kinds[0])
    assert seen == {(), (2,), (1,), (1, 2)}
    still = augment(x, Augment(shift=0, brightness=0, contrast=0), torch.Generator().manual_seed(0))
    assert torch.allclose(still, x, atol=1e-6)  # no flips unless asked


def test_progress_prints_about_every_tenth_off_a_terminal() -> None:
    """Off a terminal the bar writes a line per ~10% of the work, never more."""
    stream = io.StringIO()
    with Progress(100, "work", stream=stream) as bar:
        for _ in range(100):
            bar.update()
    lines = stream.getvalue().splitlines()
    assert 10 <= len(lines) <= 11 and lines[-1].startswith("work [") and "100/100" in lines[-1]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_train_and_score_on_cuda(tmp_path: Path) -> None:
    """Training and offline scoring run on CUDA, and the CUDA-trained artifact scores alike on the CPU."""
    _good_images(tmp_path / "data", 12, seed=5)
    settings = TrainSettings(family="conv-ae", height=SIZE, width=SIZE, hparams=HP, epochs=2, batch_size=4,
                             device="cuda")
    result = fit(load_split(tmp_path / "data", settings), settings, tmp_path / "m")
    assert result.artifact.meta.training["device"].startswith("cuda")
    images = dataset.load_folder(tmp_path / "data", SIZE, SIZE, 1).images
    gpu = score_artifact(load_artifact(tmp_path / "m"), images, torch.device("cuda"), precision="fp32").scores["score"]
    cpu = score_artifact(load_artifact(tmp_path / "m"), images, torch.device("cpu"), precision="fp32").scores["score"]
    np.testing.assert_allclose(gpu, cpu, rtol=2e-2, atol=1e-5)  # TF32 convolutions on CUDA

"""The patchcore family: pretrained features, the coreset bank, training, the artifact and the daemon's tracing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import structlog
import torch

from inspector import calibrate, evaluate, patchcore
from inspector.artifact import load_artifact
from inspector.backbone import LiteTrunk, block_stride, load_pretrained, pretrained_file
from inspector.cli import main
from inspector.device import precision_name, resolve_dtype
from inspector.inference import score_artifact
from inspector.model import ANOMALY_MAP, build_model
from inspector.patchcore import build_bank, coreset, radii, whitening
from inspector.train import (
    TrainSettings,
    _fit_one,
    _left_out_scores,
    _question_scorer,
    fit,
    load_split,
    mean_scale,
    score_for,
)
from inspector.worker import Scorer, trace
from tests.test_draem import SIZE, _paint_defects, _parts


@pytest.fixture(scope="module")
def patchcore_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A patchcore model fitted on generated good parts (a bank smaller than their patches)."""
    root = tmp_path_factory.mktemp("patchcore")
    _parts(root / "data" / "good", 48, seed=0)
    settings = TrainSettings(family="patchcore", height=SIZE, width=SIZE, hparams={"bank": 200}, device="cpu",
                             val_fraction=0.25, max_minutes=None)
    fit(load_split(root / "data", settings), settings, root / "model")
    return root / "model"


def test_patchcore_fitted_on_good_parts_separates_generated_defects(patchcore_model: Path, tmp_path: Path) -> None:
    """No gradient step: the bank of good patches alone scores generated defective parts above good ones, and the
    threshold set on the good images rejects most of them."""
    art = load_artifact(patchcore_model)
    assert art.meta.family == "patchcore" and art.meta.output == ANOMALY_MAP
    assert art.meta.score.reduction == "map_topk_or_mean"
    params = art.meta.score.params
    assert params["top_percent"] == 100.0 * 9 / 16  # 3x3 cells of the 4x4 grid: one patch's share
    assert params["mean_gain"] > 0.0, params  # the whole map's mean, brought to that scale on the held-out images
    assert art.meta.hparams["bank"] == 200 and art.meta.training["stopped_by"] == "bank"
    assert art.meta.hparams["density"] == 8 and float(art.module.radius.min()) > 0.0  # type: ignore[union-attr]
    transform = art.module.transform  # type: ignore[union-attr]
    assert art.meta.hparams["whiten"] == 0.5 and not torch.allclose(transform, torch.eye(len(transform)))
    assert art.meta.training["history"][0]["patches"] == 36 * 16  # 36 training parts, a 4x4 grid each at 64 px
    good = _parts(tmp_path / "good", 16, seed=1)
    bad = _paint_defects(_parts(tmp_path / "bad", 16, seed=2), seed=3)
    cpu = torch.device("cpu")
    sg, sd = score_artifact(art, good, cpu).scores["score"], score_artifact(art, bad, cpu).scores["score"]
    assert evaluate.auroc(sg, sd) >= 0.9, (sg, sd)
    assert np.mean(sd >= art.meta.threshold.value) >= 0.75, (sd, art.meta.threshold.value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_daemon_scores_as_training_calibrated(patchcore_model: Path, dtype: torch.dtype) -> None:
    """On the CPU the worker runs patchcore as it is, its trunk fused (not a trace of it unfused), padding each
    batch to a compiled size; its scores are the offline tools' and training's to the last bit, in fp32 and bf16."""
    art = load_artifact(patchcore_model)
    images = _parts(patchcore_model.parent / f"daemon-{dtype}", 5, seed=4)
    offline = score_artifact(art, images, torch.device("cpu"), batch_size=32, precision=precision_name(dtype))
    scorer = Scorer(load_artifact(patchcore_model), art.reduction(), art.meta.threshold.value, torch.device("cpu"),
                    dtype, 4, jit=True)
    assert scorer.fused and not scorer.traced and scorer.buckets == [1, 2, 3, 4]
    scorer.warm_up()
    daemon = []
    for batch in (images[:3], images[3:]):  # 3 and 2 frames: padded to no size, scored at their own
        scorer.host_np[:len(batch)] = batch
        daemon += scorer.scores(len(batch))
    np.testing.assert_array_equal(np.array(daemon), offline.scores["score"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_patchcore_traces_as_the_daemon_runs_it(patchcore_model: Path, dtype: torch.dtype) -> None:
    """The worker's TorchScript tracing (its CUDA path) works (no eager fallback), in fp32 and bf16, and the map is
    in [0, 1)."""
    module = load_artifact(patchcore_model).module.to(dtype)
    x = torch.rand(2, 1, SIZE, SIZE).to(dtype)
    traced = trace(module, x, structlog.get_logger())
    assert isinstance(traced, torch.jit.ScriptModule)
    with torch.inference_mode():
        out = traced(x)
    assert out.shape == (2, 1, SIZE, SIZE) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) < 1.0


def test_train_command_fits_patchcore_and_says_what_it_did(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`inspector train --family patchcore` reports the bank, not epochs; the threshold comes from the held-out and
    the trained-on images, these scored without their own patches in the bank; bad layers exit 2."""
    _parts(tmp_path / "data", 24, seed=0)
    out = tmp_path / "m"
    common = ["train", "--data", str(tmp_path / "data"), "--size", str(SIZE), "--family", "patchcore", "--quiet"]
    assert main([*common, "--out", str(out), "--hparam", "bank=50", "--hparam", "layers=7,10"]) == 0
    printed = capsys.readouterr().out
    assert "a bank of 50 good patches" in printed and "epoch" not in printed, printed
    # one patch: 3x3 cells of the 4x4 grid; 2 held-out images are too few to scale the whole map's mean by
    assert "score     map_topk_or_mean (top_percent 56.25, mean_gain 0, mean_shift 0);" in printed, printed
    meta = load_artifact(out).meta
    assert meta.hparams["layers"] == "7,10" and meta.hparams["bank"] == 50
    assert meta.threshold.details["calibrated_on"] == "24 good training images (22 trained on, 2 held out)"
    assert "without its own patches in the bank" in meta.threshold.details["trained_on_scored"]
    assert "threshold" in printed and "24 good training images" in printed
    assert main([*common, "--out", str(tmp_path / "bad"), "--hparam", "layers=ten"]) == 2
    assert "block numbers such as 10,14" in capsys.readouterr().err


def test_distances_are_those_to_the_nearest_bank_vector() -> None:
    """The map's distances are each patch's Euclidean distance to its nearest bank vector (torch.cdist's), in fp32
    exactly, and in bf16 (the nearest vector chosen by a product in bf16, as the daemon runs it on a CPU with fast
    bf16, its distance then measured in float32) within half a percent of the fp32 ones from the same features, and
    never below them."""
    gen = torch.Generator().manual_seed(0)
    model = build_model("patchcore", 1, SIZE, SIZE, bank=300).eval()
    load_pretrained(model.trunk)
    model.bank = torch.randn(300, model.dims, generator=gen)
    x = torch.rand(3, 1, SIZE, SIZE, generator=gen)
    with torch.no_grad():
        f = model.features(x)
        patches = f.permute(0, 2, 3, 1).reshape(3, -1, model.dims)
        expected = torch.cdist(patches, model.bank[None].expand(3, -1, -1)).min(-1).values.reshape(3, 1, *model.grid)
        torch.testing.assert_close(model.nearest(f), expected, rtol=1e-4, atol=1e-4)
        half = build_model("patchcore", 1, SIZE, SIZE, bank=300).eval().to(torch.bfloat16)
        half.bank = model.bank.to(torch.bfloat16)
        half.features = lambda _: f  # type: ignore[method-assign]  # the same features: the product's rounding alone
        ref = torch.cdist(patches, half.bank.float()[None].expand(3, -1, -1)).min(-1).values.reshape(3, 1, *model.grid)
        got = half.distances(x)
        torch.testing.assert_close(got, ref, rtol=5e-3, atol=1e-3)
        assert bool((got >= ref - 1e-4).all())  # the exact distance to the bank vector the bf16 product chose


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_search_in_blocks_gives_the_whole_searchs_distances(dtype: torch.dtype,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The nearest-bank search runs `SEARCH_ROWS` patches at a time (a batch's table against a large bank would not
    fit the cache): blocks of 7 patches, the last one short, give the whole search's distances to the last bit, with
    and without the training images' own vectors left out (`exclude`), in fp32 and bf16."""
    gen = torch.Generator().manual_seed(1)
    model = build_model("patchcore", 1, SIZE, SIZE, bank=200, density=2).eval().to(dtype)
    model.bank = torch.randn(200, model.dims, generator=gen).to(dtype)
    model.radius = (torch.rand(200, generator=gen) + 0.5).to(dtype)
    model.bank_owner = torch.arange(200) % 3
    f = torch.randn(3, model.dims, *model.grid, generator=gen).to(dtype)
    assert 3 * model.grid[0] * model.grid[1] % 7  # a short last block
    with torch.no_grad():
        whole = [model.nearest(f), model.nearest(f, torch.tensor([0, 1, 2]))]
        monkeypatch.setattr(patchcore, "SEARCH_ROWS", 7)
        blocks = [model.nearest(f), model.nearest(f, torch.tensor([0, 1, 2]))]
    for a, b in zip(whole, blocks, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(whole[0], whole[1])  # leaving an image's own vectors out changes its distances


def test_density_divides_each_distance_by_its_nearest_bank_vectors_radius() -> None:
    """With `density` n, a patch's distance is divided by the radius of its nearest bank vector: that vector's
    distance to its n-th nearest training patch (itself not counted). So the same step away from a tight cluster
    of good patches reads louder than from a loose one. Without it (models from before), plain distances, and no
    radius in the saved state."""
    gen = torch.Generator().manual_seed(0)
    tight = 0.01 * torch.randn(50, 4, generator=gen)
    loose = torch.tensor([10.0, 0.0, 0.0, 0.0]) + torch.randn(50, 4, generator=gen)
    vectors = torch.cat([tight, loose])
    bank = vectors[[0, 50]]
    r = radii(bank, vectors, 3)
    brute = torch.cdist(bank, vectors).sort(dim=1).values[:, 3]  # index 0: the bank vector itself
    torch.testing.assert_close(r, brute, rtol=1e-4, atol=1e-4)
    assert float(r[1]) > 20 * float(r[0])
    model = build_model("patchcore", 1, SIZE, SIZE, bank=300, density=2).eval()
    plain = build_model("patchcore", 1, SIZE, SIZE, bank=300).eval()
    assert "radius" in model.state_dict() and "radius" not in plain.state_dict()
    load_pretrained(model.trunk)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "radius"})
    model.bank = plain.bank = torch.randn(300, model.dims, generator=gen)
    model.radius = torch.rand(300, generator=gen) + 0.5
    x = torch.rand(2, 1, SIZE, SIZE, generator=gen)
    with torch.no_grad():
        f = model.features(x)
        patches = f.permute(0, 2, 3, 1).reshape(2, -1, model.dims)
        d = torch.cdist(patches, model.bank[None].expand(2, -1, -1))
        nearest = d.min(-1)
        expected = (nearest.values / model.radius[nearest.indices]).reshape(2, 1, *model.grid)
        torch.testing.assert_close(model.nearest(f), expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(plain.distances(x), nearest.values.reshape(2, 1, *model.grid), rtol=1e-4,
                                   atol=1e-4)
    with pytest.raises(ValueError, match="density"):
        build_model("patchcore", 1, SIZE, SIZE, density=-1)


def test_whiten_measures_distances_in_the_spread_of_good_patches() -> None:
    """`whitening` maps vectors so that their covariance, shrunk toward its mean variance by 1 - strength, becomes
    that mean variance times the identity (strength 1: every direction equally spread; 0: the identity map). A model
    with `whiten` measures each patch's distance to the bank after that map, and keeps the map in its saved state;
    one without has no map there. `build_bank` fits the map on the training patches and fills the bank with
    mapped ones, so a training image's own patches lie at (almost) no distance."""
    gen = torch.Generator().manual_seed(0)
    spread = torch.tensor([5.0, 1.0, 0.2, 0.05])
    vectors = torch.randn(20000, 4, generator=gen) * spread + 3.0
    level = float((spread**2).mean())
    full = vectors @ whitening(vectors, 1.0)
    torch.testing.assert_close(torch.cov(full.t()), level * torch.eye(4), rtol=0.05, atol=0.05 * level)
    half = torch.cov((vectors @ whitening(vectors, 0.5)).t())  # C_w = C / 2 + level I / 2, so level C / C_w
    torch.testing.assert_close(half, torch.diag(level * spread**2 / (0.5 * spread**2 + 0.5 * level)), rtol=0.05,
                               atol=0.05 * level)
    torch.testing.assert_close(whitening(vectors, 0.0), torch.eye(4), rtol=1e-4, atol=1e-4)
    model = build_model("patchcore", 1, SIZE, SIZE, bank=100, whiten=0.5).eval()
    plain = build_model("patchcore", 1, SIZE, SIZE, bank=100).eval()
    assert "transform" in model.state_dict() and "transform" not in plain.state_dict()
    load_pretrained(model.trunk)
    model.bank = torch.randn(100, model.dims, generator=gen)
    model.transform = torch.randn(model.dims, model.dims, generator=gen) / model.dims**0.5
    x = torch.rand(2, 1, SIZE, SIZE, generator=gen)
    with torch.no_grad():
        patches = model.features(x).permute(0, 2, 3, 1).reshape(2, -1, model.dims) @ model.transform
        expected_d = torch.cdist(patches, model.bank[None].expand(2, -1, -1)).min(-1).values.reshape(2, 1, *model.grid)
        torch.testing.assert_close(model.distances(x), expected_d, rtol=1e-4, atol=1e-4)
        images = (torch.rand(6, 1, SIZE, SIZE, generator=gen) * 255).to(torch.uint8)
        build_bank(model, images, images, 10**6, 4)  # every patch kept
        assert not torch.allclose(model.transform, torch.eye(model.dims))
        assert float(model.distances(images.float() / 255).max()) < 1e-2 * float(model.bank.norm(dim=1).median())
    with pytest.raises(ValueError, match="whiten"):
        build_model("patchcore", 1, SIZE, SIZE, whiten=1.5)


def test_trained_on_images_are_scored_without_their_own_patches_for_the_threshold(tmp_path: Path) -> None:
    """A bank holds its training images' own patches, so they would read as perfectly good. For the threshold each is
    scored with the bank vectors taken from it left out (`exclude`): with every patch kept, its distances are those
    to the other images' patches (cdist). Training pools those scores, moved to the held-out images' median
    (`calibrate.to_median`), with the held-out ones, and the threshold rejects about the target share of them."""
    gen = torch.Generator().manual_seed(0)
    model = build_model("patchcore", 1, SIZE, SIZE, bank=0, density=0).eval()
    load_pretrained(model.trunk)
    images = (torch.rand(5, 1, SIZE, SIZE, generator=gen) * 255).to(torch.uint8)
    build_bank(model, images, images, 10**6, 2)  # every patch of the 5 images is a bank vector
    cells = model.grid[0] * model.grid[1]
    assert model.bank_owner.tolist() == [i // cells for i in range(5 * cells)]
    x = images.float() / 255
    with torch.no_grad():
        own = model.distances(x)
        left_out = model.distances(x, torch.arange(5))
        patches = model.features(x).permute(0, 2, 3, 1).reshape(5, cells, model.dims)
    assert float(own.max()) < 1e-2 * float(left_out.min())
    for i in range(5):
        others = torch.cat([patches[j] for j in range(5) if j != i])
        expected = torch.cdist(patches[i], others).min(-1).values.reshape(1, *model.grid)
        torch.testing.assert_close(left_out[i], expected, rtol=1e-3, atol=1e-3)
    shifted, shift = calibrate.to_median(np.array([1.0, 2.0, 9.0]), np.array([0.0, 0.5, 1.0]))
    assert shift == -1.5 and shifted.tolist() == [-0.5, 0.5, 7.5]

    _parts(tmp_path / "data" / "good", 60, seed=0)
    settings = TrainSettings(family="patchcore", height=SIZE, width=SIZE, hparams={"bank": 200}, device="cpu",
                             val_fraction=0.2, max_minutes=None)
    split = load_split(tmp_path / "data", settings)
    fitted = _fit_one(split, settings, tmp_path / "m")
    th = fitted.meta["threshold"]
    assert th.details["calibrated_on"] == "60 good training images (48 trained on, 12 held out)"
    train_images, held = split.data.images[split.train_idx], fitted.val_scores
    dtype = resolve_dtype("auto", torch.device("cpu"), ANOMALY_MAP)
    scoring = (fitted.meta["score"]["reduction"], fitted.meta["score"]["params"])
    left_out = _left_out_scores(fitted.model, settings, dtype, train_images, scoring)
    assert float(np.median(fitted.score(train_images))) < float(np.median(left_out))  # in the bank: too quiet
    pooled, _ = calibrate.to_median(left_out, held)
    assert th.value == calibrate.all_good_quantile(held, pooled, 0.01)[0].value
    assert np.count_nonzero(np.concatenate([held, pooled]) >= th.value) == 0  # floor(1 % of 60): none rejected


def test_the_family_question_asks_patchcore_with_its_plain_distances(tmp_path: Path) -> None:
    """`--family auto` asks its question of patchcore's plain distances: the scores of the same bank fitted with
    density 0, its scale and score fitted afresh, not the density-weighted scores that the kept model gives."""
    _parts(tmp_path / "data" / "good", 48, seed=0)
    common = {"family": "patchcore", "height": SIZE, "width": SIZE, "device": "cpu", "val_fraction": 0.25,
              "max_minutes": None}
    weighted = TrainSettings(**common, hparams={"bank": 200})
    plain = TrainSettings(**common, hparams={"bank": 200, "density": 0})
    split = load_split(tmp_path / "data", weighted)
    fw, fp = _fit_one(split, weighted, tmp_path / "w"), _fit_one(split, plain, tmp_path / "p")
    images = _parts(tmp_path / "probe", 8, seed=5)
    held_out = split.data.images[split.val_idx]
    np.testing.assert_allclose(_question_scorer(fw, weighted, held_out)(images), fp.score(images), rtol=1e-4)
    assert not np.allclose(fw.score(images), fp.score(images), rtol=1e-3)
    assert _question_scorer(fp, plain, held_out) is fp.score


def test_patchcore_scores_the_mean_over_one_patchs_footprint_unless_told_otherwise() -> None:
    """The default score reads the mean of the map's top share that one patch vector describes (3x3 cells of the
    16x16 grid at 256x256: 2,304 of 65,536 pixels), or the whole map's mean (`map_topk_or_mean`); a reduction or
    parameters given are kept; other families unchanged."""
    at = {"family": "patchcore", "height": 256, "width": 256}
    both = "map_topk_or_mean"
    assert score_for(TrainSettings(**at)) == (both, {"top_percent": 3.515625})
    assert score_for(TrainSettings(**at, hparams={"pool": 5})) == (both, {"top_percent": 100.0 * 25 / 256})
    assert score_for(TrainSettings(**at, reduction="map_max")) == ("map_max", {})
    assert score_for(TrainSettings(**at, reduction_params={"top_percent": 1.0})) == (both, {"top_percent": 1.0})
    assert score_for(TrainSettings(family="draem")) == ("map_peaks", {"window": 65, "margin": 32, "unique_radius": 3})


def test_the_whole_maps_mean_is_scaled_to_the_top_shares_spread_on_good_images() -> None:
    """mean_scale gives the good images' whole-map means the centre and spread of their top-share means, so a
    reading counts by how far it lies above its own good images; with no spread, or fewer than ten images, to scale
    by, the top share alone."""
    rng = np.random.default_rng(0)
    top, mean = rng.normal(0.5, 0.01, 50), rng.normal(0.2, 0.002, 50)
    fitted = mean_scale(top, mean)
    scaled = mean * fitted["mean_gain"] + fitted["mean_shift"]
    assert scaled.mean() == pytest.approx(top.mean()) and scaled.std() == pytest.approx(top.std())
    assert mean_scale(top, np.full(50, 0.2)) == {"mean_gain": 0.0, "mean_shift": 0.0}
    assert mean_scale(top[:9], mean[:9]) == {"mean_gain": 0.0, "mean_shift": 0.0}  # too few for two spreads
    assert mean_scale(top[:10], mean[:10])["mean_gain"] > 0.0


def test_coreset_takes_the_farthest_vectors_first() -> None:
    """From three tight clusters, three picks take one vector of each; asking for all returns all."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0] * 8, [10.0] * 8, [-10.0] + [10.0] * 7])
    vectors = torch.cat([c + 0.01 * torch.randn(50, 8, generator=gen) for c in centres])
    picked = coreset(vectors, 3)
    assert sorted(int(i) // 50 for i in picked) == [0, 1, 2]
    assert torch.equal(coreset(vectors, 500), torch.arange(150))


def test_trunk_loads_the_packaged_imagenet_weights() -> None:
    """Every tensor of the trunk comes from the installed weights' file, and its taps have the strides they should."""
    trunk = LiteTrunk([4, 10, 14])
    load_pretrained(trunk)
    state = torch.load(pretrained_file(), map_location="cpu", weights_only=True)
    for name, tensor in trunk.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    with torch.no_grad():
        shapes = [tuple(t.shape) for t in trunk(torch.zeros(1, 3, 64, 96))]
    assert shapes == [(1, 40, 8, 12), (1, 112, 4, 6), (1, 192, 2, 3)]
    assert [block_stride(i) for i in (4, 10, 14)] == [8, 16, 32]


def test_patchcore_refuses_what_it_cannot_run() -> None:
    """Sizes the deepest tap cannot divide, even pools and unknown blocks are refused with the reason."""
    with pytest.raises(ValueError, match="divisible by 32"):
        build_model("patchcore", 1, 48, 48)
    with pytest.raises(ValueError, match="odd"):
        build_model("patchcore", 1, 64, 64, pool=2)
    with pytest.raises(ValueError, match="ascending block numbers"):
        build_model("patchcore", 1, 64, 64, layers=[14, 10])
    with pytest.raises(ValueError, match="block numbers such as"):
        build_model("patchcore", 1, 64, 64, layers="ten")
    assert build_model("patchcore", 1, 64, 64, layers="7,10").trunk.taps == [7, 10]  # as --hparam layers=7,10 gives


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.cuda
def test_patchcore_fits_on_cuda_and_its_scores_match_the_cpus(tmp_path: Path) -> None:
    """On CUDA the bank is built from fp16 features (the daemon's arithmetic there); the model still separates
    generated defects, and its fp16 CUDA scores match the CPU's fp32 ones."""
    _parts(tmp_path / "data" / "good", 48, seed=0)
    settings = TrainSettings(family="patchcore", height=SIZE, width=SIZE, hparams={"bank": 200}, device="cuda",
                             val_fraction=0.25, max_minutes=None)
    fit(load_split(tmp_path / "data", settings), settings, tmp_path / "model")
    art = load_artifact(tmp_path / "model")
    assert art.meta.threshold.details["arithmetic"] == "fp16"
    good = _parts(tmp_path / "good", 16, seed=1)
    bad = _paint_defects(_parts(tmp_path / "bad", 16, seed=2), seed=3)
    gpu = [score_artifact(art, a, torch.device("cuda")).scores["score"] for a in (good, bad)]
    cpu = [score_artifact(art, a, torch.device("cpu"), precision="fp32").scores["score"] for a in (good, bad)]
    assert evaluate.auroc(*gpu) >= 0.9, gpu
    np.testing.assert_allclose(np.concatenate(gpu), np.concatenate(cpu), rtol=2e-2, atol=2e-3)

"""The draem family: synthetic defects, the anomaly-map model, its reductions, training and artifact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import cast

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from inspector import evaluate
from inspector.artifact import Artifact, ArtifactError, load_artifact
from inspector.defects import FILLS, MIN_CHANGE, defect_batch, fill, make_defect, noise_blobs, spots, strokes
from inspector.device import fast_bf16
from inspector.inference import score_artifact
from inspector.model import ANOMALY_MAP, RECONSTRUCTION, Draem, build_model, output_kind
from inspector.repair import crop_size, focal_loss, random_crops
from inspector.scoring import (
    heat_map,
    make_reduction,
    map_max,
    map_peak_mean,
    map_peaks,
    map_peaks_uniqueness,
    map_topk,
    map_topk_or_mean,
    reduction_output,
    self_dissimilarity,
)
from inspector.synth import PartRenderer
from inspector.train import (
    TrainSettings,
    check_settings,
    fit,
    load_split,
    peak_window,
    peaks_scale,
    score_for,
    unique_radius,
    uniqueness_scale,
)

SIZE = 64
HP = {"recon_width": 8, "seg_width": 8, "recon_depth": 2, "seg_depth": 2}
EPOCHS = 80


def _texture(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A smooth random grey texture, float32 (1, H, W) in [0.2, 0.8]."""
    noise = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 3.0)
    noise = (noise - noise.min()) / max(float(np.ptp(noise)), 1e-6)
    return (0.2 + 0.6 * noise)[None]


@pytest.mark.parametrize("shape", [noise_blobs, spots, strokes])
def test_defect_shapes_are_small_non_empty_masks(shape: object) -> None:
    """Every shape generator draws a non-empty 0/1 mask covering a minority of the image."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = shape(rng, 64, 96)  # type: ignore[operator]
        assert mask.shape == (64, 96) and set(np.unique(mask)) <= {0.0, 1.0}
        assert 0 < mask.sum() < 0.5 * mask.size


@pytest.mark.parametrize("shape", [noise_blobs, spots, strokes])
def test_defect_shapes_grow_with_their_scale(shape: object) -> None:
    """A shape drawn at twice the scale covers clearly more of a 64x64 crop on average than one sized to the crop."""
    def mean_area(scale: float | None) -> float:
        rng = np.random.default_rng(3)
        return float(np.mean([shape(rng, 64, 64, scale).sum() for _ in range(60)]))  # type: ignore[operator]
    assert mean_area(128.0) > 1.5 * mean_area(None)


def test_defect_size_image_draws_scales_from_the_crop_to_the_image() -> None:
    """With `defect_size` "image" each defect on a crop is sized between the crop's side and the image's, so a batch
    of crops carries larger defects; by default (None) they are sized to the crop."""
    from inspector.train import defect_scales

    assert defect_scales("crop", (128, 128), (256, 256)) is None
    assert defect_scales("image", (128, 96), (256, 192)) == (96.0, 192.0)
    assert TrainSettings().defect_size == "auto"  # crop, until the good images are asked (tests/test_scales.py)
    images = np.random.default_rng(4).random((96, 1, 64, 64)).astype(np.float32)
    small = defect_batch(np.random.default_rng(6), images, 1.0)[1].sum()
    large = defect_batch(np.random.default_rng(6), images, 1.0, (64.0, 128.0))[1].sum()
    assert large > 1.3 * small


@pytest.mark.parametrize("kind", FILLS)
def test_each_fill_keeps_shape_and_range(kind: str) -> None:
    """Each fill gives an image of the same shape in [0, 1]."""
    rng = np.random.default_rng(1)
    image, other = _texture(rng), _texture(rng)
    out = fill(rng, image, other, kind)
    assert out.shape == image.shape and out.min() >= 0.0 and out.max() <= 1.0


def test_target_marks_exactly_the_visibly_changed_pixels() -> None:
    """Outside the target the defect changed no pixel by MIN_CHANGE or more; inside, every pixel changed that much."""
    rng = np.random.default_rng(2)
    for _ in range(50):
        image = _texture(rng)
        out, target = make_defect(rng, image, _texture(rng))
        change = np.abs(out - image).max(axis=0)
        assert np.all(change[target > 0] >= MIN_CHANGE) and np.all(change[target == 0] < MIN_CHANGE)


def test_defect_batch_paints_about_the_requested_share_in_colour_too() -> None:
    """defect_batch leaves the unpainted images untouched and paints colour images on all channels alike."""
    rng = np.random.default_rng(3)
    batch = np.stack([np.repeat(_texture(rng), 3, axis=0) for _ in range(40)])  # (40, 3, 64, 64)
    painted, masks = defect_batch(rng, batch, rate=0.5)
    changed = np.abs(painted - batch).reshape(40, -1).max(axis=1) > 0
    assert 8 <= changed.sum() <= 32
    assert np.all(masks[~changed] == 0) and np.all(painted[~changed] == batch[~changed])


def test_draem_outputs_a_full_resolution_map_in_unit_range() -> None:
    """draem maps (B, C, H, W) to (B, 1, H, W) in [0, 1]; its reconstruction has the input's shape."""
    for channels in (1, 3):
        net = build_model("draem", channels, 32, 48, **HP).eval()
        x = torch.rand(2, channels, 32, 48)
        with torch.no_grad():
            out = net(x)
            recon, logits = net.repair(x)  # type: ignore[operator]
        assert out.shape == (2, 1, 32, 48) and float(out.min()) >= 0 and float(out.max()) <= 1
        assert recon.shape == x.shape and logits.shape == (2, 1, 32, 48)
    assert output_kind("draem") == ANOMALY_MAP and output_kind("conv-ae") == RECONSTRUCTION


def _sharing_weights(*variants: dict[str, int | str]) -> list[Draem]:
    """A one-view draem, then one per variant of its hparams, all with its weights, in eval mode."""
    torch.manual_seed(0)
    one = cast(Draem, build_model("draem", 1, 32, 32, **HP).eval())
    nets = [one]
    for variant in variants:
        nets.append(cast(Draem, build_model("draem", 1, 32, 32, **variant, **HP).eval()))
        nets[-1].load_state_dict(one.state_dict())
    return nets


def test_draem_views_average_the_maps_of_flipped_inputs() -> None:
    """views=2 maps x to the mean of its own map and the flipped-back map of its mirror image; views=4 adds the
    vertical and the double flip; other counts are refused."""
    one, two, four = _sharing_weights({"views": 2}, {"views": 4})
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        m, h, v, hv = one(x), one(x.flip(3)).flip(3), one(x.flip(2)).flip(2), one(x.flip(2, 3)).flip(2, 3)
        torch.testing.assert_close(two(x), (m + h) / 2, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(four(x), (m + h + v + hv) / 4, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(two(x), m)  # the views do differ
    with pytest.raises(ValueError, match="views must be one of"):
        build_model("draem", 1, 32, 32, views=3, **HP)


def test_draem_segmenter_views_repair_once_and_segment_the_mirrored_pair() -> None:
    """seg_views=2 maps x to the mean of its own map and the flipped-back map that the segmenter gives for the
    mirrored input beside its mirrored repair (the repair of x itself, not of the mirror image); seg_views=4 adds
    the vertical and the double flip; views and seg_views together are refused."""
    one, two, four, full = _sharing_weights({"seg_views": 2}, {"seg_views": 4}, {"views": 2})
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        repaired, logits = one.repair(x)

        def seen(dims: list[int]) -> torch.Tensor:
            u, r = F.pixel_unshuffle(x.flip(dims), 2), F.pixel_unshuffle(repaired.flip(dims), 2)
            return torch.sigmoid(one.segment(u, r)).flip(dims)

        m = torch.sigmoid(logits)
        torch.testing.assert_close(two(x), (m + seen([3])) / 2, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(four(x), (m + seen([3]) + seen([2]) + seen([2, 3])) / 4, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(two(x), m)  # the views do differ
        assert not torch.allclose(two(x), full(x))  # not the two repairs of views=2
    with pytest.raises(ValueError, match="views or seg_views, not both"):
        build_model("draem", 1, 32, 32, views=2, seg_views=2, **HP)
    with pytest.raises(ValueError, match="seg_views must be one of"):
        build_model("draem", 1, 32, 32, seg_views=3, **HP)


@pytest.mark.parametrize("views", [{"views": 2}, {"seg_views": 2}])
def test_draem_traces_with_views_in_bfloat16(views: dict[str, int]) -> None:
    """The worker's TorchScript path takes a two-view draem in bf16 and returns float32 maps close to fp32's."""
    from inspector.worker import trace

    torch.manual_seed(0)
    net = build_model("draem", 1, 32, 32, **views, **HP).eval()
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        want = net(x)
    bf = net.to(torch.bfloat16)
    traced = trace(bf, x.to(torch.bfloat16), None)
    assert traced is not bf  # traced, not the eager fallback
    with torch.no_grad():
        got = traced(x.to(torch.bfloat16))
    assert got.dtype == torch.float32 and got.shape == (4, 1, 32, 32)
    assert float((got - want).abs().max()) < 0.05


def test_draem_reflect_padding_sees_the_frame_edge_as_its_inside() -> None:
    """With padding "reflect" (the recipe's default) every convolution extends its input by reflection, so a flat
    frame gets a flat map right up to its edge; with "zeros" (what a model.json without padding means) the same
    weights answer differently at the edge. An unknown padding is refused."""
    zeros, reflect = _sharing_weights({"padding": "reflect"})
    x = torch.full((2, 1, 32, 32), 0.4)
    with torch.no_grad():
        flat, edged = reflect(x), zeros(x)
    assert float(flat.max() - flat.min()) < 1e-5
    assert float(edged.max() - edged.min()) > 1e-3
    assert all(m.padding_mode == "zeros" for m in zeros.modules() if isinstance(m, torch.nn.Conv2d))
    with pytest.raises(ValueError, match="padding must be one of"):
        build_model("draem", 1, 32, 32, padding="circular", **HP)


def test_draem_conv_resize_decoder_convolves_before_it_upsamples() -> None:
    """decoder "conv-resize" runs each decoder stage's convolutions at the coarser resolution and upsamples after
    them ("resize-conv", what a model.json without it means, at the finer one), with the very same weights; so
    those convolutions see a quarter of the pixels. An unknown decoder is refused."""
    before, after = _sharing_weights({"decoder": "resize-conv"}, {"decoder": "conv-resize"})[1:]
    x = torch.rand(2, 1, 32, 32)

    def decoder_conv_inputs(net: Draem) -> list[int]:
        sizes: list[int] = []
        stages = [*net.recon.decoder, *net.seg.up]
        hooks = [s[0].register_forward_pre_hook(lambda _m, a: sizes.append(a[0].shape[-1])) for s in stages]
        with torch.no_grad():
            out = net(x)
        for h in hooks:
            h.remove()
        assert out.shape == (2, 1, 32, 32) and 0 <= float(out.min()) <= float(out.max()) <= 1
        return sizes

    # fold 2 makes 16x16; depth 2 decodes from 4 to 8 to 16 in the repair net and the segmenter alike
    assert decoder_conv_inputs(before) == [8, 16, 8, 16]
    assert decoder_conv_inputs(after) == [4, 8, 4, 8]
    with torch.no_grad():
        assert not torch.allclose(before(x), after(x))
    with pytest.raises(ValueError, match="decoder must be one of"):
        build_model("draem", 1, 32, 32, decoder="bilinear", **HP)


def test_reflect_padding_trains_through_its_own_pad_with_torchs_numbers() -> None:
    """While gradients are recorded a reflecting convolution pads through inspector's own function (a cheaper
    backward); its output and its gradients are torch's reflection padding's, at odd sizes and stride 2."""
    from inspector.model import Conv2d

    torch.manual_seed(0)
    for stride, (h, w) in ((1, (7, 9)), (2, (10, 6))):
        conv = Conv2d(3, 4, 3, stride=stride, padding=1, padding_mode="reflect").double()
        x = torch.rand(2, 3, h, w, dtype=torch.float64, requires_grad=True)
        out = conv(x)
        assert out.grad_fn is not None and type(out.grad_fn.next_functions[0][0]).__name__ == "_Reflect1Backward"
        want = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), conv.weight, conv.bias, stride)
        torch.testing.assert_close(out, want)
        g = torch.rand_like(out)
        got_grads = torch.autograd.grad(out, (x, conv.weight), g)
        want_grads = torch.autograd.grad(want, (x, conv.weight), g)
        for got_g, want_g in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(got_g, want_g)
        assert torch.autograd.gradcheck(conv, (x,))
        with torch.no_grad():  # inference: torch's own padding, the same numbers
            torch.testing.assert_close(conv(x), want.detach())


def test_draem_rejects_sizes_it_cannot_fold() -> None:
    """A size that is not a multiple of fold * 2**depth is refused with the multiple named."""
    with pytest.raises(ValueError, match="divisible by 16"):
        build_model("draem", 1, 40, 64, fold=2, recon_depth=3, seg_depth=3)


def test_map_reductions_read_the_map_and_ignore_the_input() -> None:
    """map_max and map_topk reduce the model output; the input does not matter."""
    out = torch.zeros(2, 1, 16, 16)
    out[0, 0, 3, 4] = 0.9
    out[1] = 0.2
    x = torch.rand(2, 1, 16, 16)
    assert torch.allclose(map_max(x, out), torch.tensor([0.9, 0.2]))
    assert torch.allclose(map_max(torch.zeros_like(x), out), map_max(x, out))
    assert float(map_max(x, out, sigma=1.0)[0]) < 0.9  # smoothing spreads a single hot pixel
    assert torch.allclose(map_topk(x, out, top_percent=100.0), out.flatten(1).mean(1))
    assert torch.equal(heat_map(x, out, ANOMALY_MAP), out[:, 0])
    assert reduction_output("map_max") == ANOMALY_MAP and reduction_output("topk_mean") == RECONSTRUCTION
    make_reduction("map_topk", {"top_percent": 1.0})


def test_map_topk_or_mean_takes_the_louder_of_a_hot_spot_and_a_faint_region() -> None:
    """map_topk_or_mean is map_topk by default; with a scale for the whole map's mean, a large faint region (a
    mean above the good images') outscores what its top share alone reads, and a hot spot still scores by its
    top share."""
    out = torch.full((3, 1, 16, 16), 0.2)
    out[1, 0, 2:4, 2:4] = 0.9  # a hot spot: 4 pixels
    out[2] = 0.35  # a faint region over the whole part
    x = torch.rand(3, 1, 16, 16)
    assert torch.equal(map_topk_or_mean(x, out, top_percent=2.0), map_topk(x, out, top_percent=2.0))
    scale = {"mean_gain": 4.0, "mean_shift": -0.6}  # the good images' mean 0.2 goes to their top share's 0.2
    both = make_reduction("map_topk_or_mean", {"top_percent": 2.0, **scale})(x, out)
    top = map_topk(x, out, top_percent=2.0)
    assert both[0] == pytest.approx(0.2) and both[1] == pytest.approx(float(top[1]))  # good; the spot by its top
    assert both[2] == pytest.approx(0.35 * 4.0 - 0.6) and both[2] > top[2]  # the region by its scaled mean
    assert reduction_output("map_topk_or_mean") == ANOMALY_MAP


def test_map_peaks_counts_several_weak_spots_beside_the_loudest() -> None:
    """A peak is the largest value of the square around it: a spot's shoulder is not a second peak. The mean of
    the 3 loudest peaks tells a map with three spots from one with a single spot as loud; map_peaks adds it, on
    the good images' scale, to the maximum, and is map_max without that scale."""
    out = torch.full((2, 1, 128, 128), 0.1)
    out[0, 0, 10, 10], out[0, 0, 10, 12] = 0.9, 0.8  # one spot and its shoulder, within a 33-px square
    out[1, 0, 10, 10], out[1, 0, 60, 60], out[1, 0, 110, 30] = 0.9, 0.6, 0.3  # three spots, far apart
    x = torch.rand(2, 1, 128, 128)
    for pool in (1, 4):
        peaks = map_peak_mean(x, out, window=33, pool=pool, peaks=3)
        assert peaks[0] == pytest.approx((0.9 + 0.1 + 0.1) / 3) and peaks[1] == pytest.approx((0.9 + 0.6 + 0.3) / 3)
    flat = torch.full((1, 1, 16, 16), 0.25)
    assert map_peak_mean(x[:1, :, :16, :16], flat, window=33.0, pool=4.0)[0] == pytest.approx(0.25)  # json floats
    assert torch.equal(map_peaks(x, out), map_max(x, out))
    scored = make_reduction("map_peaks", {"window": 33, "peaks_gain": 2.0, "peaks_shift": -0.5})(x, out)
    assert torch.allclose(scored, torch.tensor([0.9 + 2.0 * 1.1 / 3 - 0.5, 0.9 + 2.0 * 1.8 / 3 - 0.5]))
    assert scored[1] > scored[0] and reduction_output("map_peaks") == ANOMALY_MAP
    assert peak_window(256, 256) == 65 and peak_window(480, 640) == 121 and peak_window(32, 32) == 9


def test_map_peaks_counts_no_peak_in_the_margin_along_the_frames_edge() -> None:
    """What the frame's edge cuts (a column of printed digits) answers a little at each piece: with a margin, those
    weak peaks along the edge are not counted, while a defect inside the frame still is, and the maximum keeps the
    edge (a loud spot there still scores). Training gives the margin as half the square; a frame too small for
    the margin keeps its border."""
    out = torch.full((2, 1, 128, 128), 0.1)
    out[0, 0, 8:120:40, 3] = 0.5  # three weak spots along the left edge, 40 px apart
    out[0, 0, 64, 64] = 0.5  # and one inside
    out[1, 0, 20, 2] = 0.9  # one loud spot at the edge
    x = torch.rand(2, 1, 128, 128)
    assert map_peak_mean(x, out, window=33, pool=4, peaks=3)[0] == pytest.approx(0.5)
    inner = map_peak_mean(x, out, window=33, pool=4, peaks=3, margin=16.0)
    assert inner[0] == pytest.approx((0.5 + 0.1 + 0.1) / 3) and inner[1] == pytest.approx(0.1)
    scored = make_reduction("map_peaks", {"window": 33, "margin": 16, "peaks_gain": 1.0})(x, out)
    assert torch.allclose(scored, torch.tensor([0.5 + 0.7 / 3, 0.9 + 0.1]))
    assert map_peak_mean(x, out[:, :, :24, :24], window=33, pool=4, margin=16)[1] == pytest.approx(0.9 / 3 + 0.2 / 3)
    assert score_for(TrainSettings(family="draem", height=256, width=256)) == (
        "map_peaks", {"window": 65, "margin": 32, "unique_radius": 3})
    assert score_for(TrainSettings(family="draem", reduction_params={"window": 9})) == (
        "map_peaks", {"window": 9, "margin": 4, "unique_radius": 3})
    assert score_for(TrainSettings(family="draem", reduction_params={"margin": 0, "unique_radius": 0})) == (
        "map_peaks", {"window": 65, "margin": 0, "unique_radius": 0})


def test_self_dissimilarity_is_the_best_match_elsewhere_in_the_same_frame() -> None:
    """The mean squared difference between the square around a point and the most alike square of the same frame
    centred more than the radius from it, the frame's edge reflected: the brute-force search's figure, and 0 where
    the frame repeats the structure exactly."""
    rng = np.random.default_rng(3)
    frames = rng.random((2, 1, 20, 24)).astype(np.float32)
    ys, xs, r = np.array([[0, 7], [11, 19]]), np.array([[5, 12], [23, 0]]), 2
    got = self_dissimilarity(torch.from_numpy(frames), torch.from_numpy(ys), torch.from_numpy(xs), r)
    assert got.shape == (2, 2)
    for b in range(2):
        pad = np.pad(frames[b, 0], r, mode="reflect")  # numpy's reflect is torch's: the edge pixel not repeated
        for k in range(2):
            y, x = ys[b, k], xs[b, k]
            own = pad[y:y + 2 * r + 1, x:x + 2 * r + 1]
            best = min(float(((pad[i:i + 2 * r + 1, j:j + 2 * r + 1] - own) ** 2).mean())
                       for i in range(20) for j in range(24) if abs(i - y) > r or abs(j - x) > r)
            assert got[b, k].item() == pytest.approx(best, rel=1e-4)
    dots = torch.zeros(1, 3, 40, 40)
    dots[..., 9:12, 9:12] = dots[..., 9:12, 29:32] = 1.0  # two identical dots
    dots[..., 28:31, 20] = dots[..., 30, 20:23] = 1.0  # and one corner, unlike anything else
    at = self_dissimilarity(dots, torch.tensor([[10, 30]]), torch.tensor([[10, 20]]), 3)[0]
    assert at[0].item() == pytest.approx(0.0, abs=1e-6) and at[1].item() > 0.05


def test_map_peaks_counts_loud_spots_on_repeated_structures_less() -> None:
    """With a uniqueness gain, map_peaks adds how unlike the rest of the frame the input is where the map speaks
    (its maximum and its loudest peaks): the same map scores more over one-of-a-kind shapes than over structures
    the frame repeats; without the gain the two score alike. uniqueness_scale centres the term on good images with
    their maxima's spread, and the squares' radius follows the frame's size."""
    x = torch.zeros(2, 1, 64, 64)
    for y, c in ((10, 10), (10, 50), (40, 10), (40, 50)):  # four identical dots in the first frame
        x[0, :, y - 1:y + 2, c - 1:c + 2] = 1.0
    for y, c in ((10, 10), (10, 50), (40, 10), (40, 50)):  # four different corners in the second
        x[1, :, y - 2:y + 1, c] = 1.0
        x[1, :, y, c - 2 + (c == 50) * 2:c + 1 + (y == 40) * 2] = 1.0
    out = torch.full((2, 1, 64, 64), 0.1)
    out[:, 0, 10, 10], out[:, 0, 10, 50], out[:, 0, 40, 10], out[:, 0, 40, 50] = 0.8, 0.5, 0.4, 0.3
    params = {"window": 17, "peaks_gain": 1.0}
    plain = make_reduction("map_peaks", params)(x, out)
    assert plain[0] == plain[1]
    unique = map_peaks_uniqueness(x, out, window=17, radius=3)
    assert unique[0].item() == pytest.approx(0.0, abs=1e-6) and unique[1] > 0.02
    more = {"unique_radius": 3, "unique_gain": 2.0, "unique_shift": -0.1}
    scored = make_reduction("map_peaks", {**params, **more})(x, out)
    assert torch.allclose(scored, plain + 2.0 * unique - 0.1)
    top, reading = np.array([0.2, 0.4, 0.3, 0.5] * 5), np.array([0.01, 0.05, 0.02, 0.04] * 5)
    fitted = uniqueness_scale(top, reading)
    term = reading * fitted["unique_gain"] + fitted["unique_shift"]
    assert np.mean(term) == pytest.approx(0.0, abs=1e-9) and np.std(term) == pytest.approx(np.std(top))
    assert uniqueness_scale(top[:5], reading[:5]) == {"unique_gain": 0.0, "unique_shift": 0.0}
    assert unique_radius(256, 256) == 3 and unique_radius(480, 640) == 6 and unique_radius(64, 64) == 1


def test_the_peak_mean_is_scaled_to_the_maximums_spread_and_centred_on_good_images() -> None:
    """peaks_scale centres the good images' scaled peak means on 0 with their maxima's spread, so that a good
    image scores about its maximum; no spread, or fewer than ten images: map_max."""
    rng = np.random.default_rng(0)
    top, peaks = rng.normal(0.6, 0.05, 50), rng.normal(0.3, 0.01, 50)
    fitted = peaks_scale(top, peaks)
    scaled = peaks * fitted["peaks_gain"] + fitted["peaks_shift"]
    assert scaled.mean() == pytest.approx(0.0, abs=1e-12) and scaled.std() == pytest.approx(top.std())
    assert peaks_scale(top, np.full(50, 0.3)) == {"peaks_gain": 0.0, "peaks_shift": 0.0}
    assert peaks_scale(top[:9], peaks[:9]) == {"peaks_gain": 0.0, "peaks_shift": 0.0}


def test_crops_and_focal_loss() -> None:
    """Crops are a share of the input (a multiple of the model step); the focal loss is lower for right answers."""
    assert crop_size(256, 256, 16, 0.5) == (128, 128) and crop_size(64, 96, 16, 0.5) == (64, 64)
    assert crop_size(256, 200, 16) == (256, 192)
    x = torch.rand(3, 1, 64, 96)
    crops = random_crops(x, (32, 48), np.random.default_rng(0))
    assert crops.shape == (3, 1, 32, 48)
    target = torch.zeros(1, 1, 4, 4)
    target[0, 0, 0, 0] = 1
    right, wrong = (target * 2 - 1) * 5, (1 - target * 2) * 5
    assert focal_loss(right, target) < focal_loss(wrong, target)


def test_crops_are_windows_of_the_image_that_reach_its_borders() -> None:
    """Every crop is a window of its image; each border row and column is in about a quarter of the crops (drawn
    uniformly inside the image it would be in 1 of 33), and no row in more than 3.5 times as many."""
    n, side, crop = 4000, 64, 32
    x = torch.arange(side * side, dtype=torch.float32).view(1, 1, side, side).expand(n, 1, side, side)
    crops = random_crops(x, (crop, crop), np.random.default_rng(0))
    ys, xs = crops[:, 0, 0, 0].long() // side, crops[:, 0, 0, 0].long() % side
    assert all(torch.equal(c, x[0, :, y:y + crop, c0:c0 + crop]) for c, y, c0 in zip(crops[:50], ys, xs, strict=False))
    for origin in (ys, xs):
        covered = torch.stack([((origin <= r) & (r < origin + crop)).float().mean() for r in range(side)])
        assert 0.2 < covered[0] < 0.3 and 0.2 < covered[-1] < 0.3, covered[[0, -1]]
        assert covered.min() == min(covered[0], covered[-1]) and covered.max() < 3.5 * covered.min()


def test_a_map_reduction_does_not_fit_an_autoencoder() -> None:
    """Training settings that pair a family with a reduction for the other output kind are refused."""
    with pytest.raises(ValueError, match="reads a reconstruction"):
        check_settings(TrainSettings(height=SIZE, width=SIZE, family="draem", hparams=HP, reduction="topk_mean"))
    with pytest.raises(ValueError, match="reads a anomaly map"):
        check_settings(TrainSettings(height=SIZE, width=SIZE, family="conv-ae", reduction="map_max"))


def _parts(folder: Path, count: int, seed: int) -> np.ndarray:
    """Generated good parts, written to folder and returned (uint8 (N, H, W))."""
    folder.mkdir(parents=True, exist_ok=True)
    renderer = PartRenderer(width=SIZE, height=SIZE, channels=1, seed=seed, defect_rate=0.0)
    images = np.stack([renderer.render_part(None).image for _ in range(count)])
    for i, image in enumerate(images):
        cv2.imwrite(str(folder / f"p{i:03d}.png"), image)
    return images


def _paint_defects(images: np.ndarray, seed: int) -> np.ndarray:
    """Each part with one defect of another kind than training paints: a bright patch or a dark gash."""
    rng = np.random.default_rng(seed)
    out = images.copy()
    for i, image in enumerate(out):
        y, x = (int(v) for v in rng.integers(16, 40, 2))
        if i % 2:
            image[y:y + 8, x:x + 8] = 255
        else:
            cv2.line(image, (x, y), (x + 16, y + int(rng.integers(-6, 7))), 0, 2)
    return out


@pytest.fixture(scope="module")
def draem_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small draem trained for a few seconds on generated good parts (its default reduction)."""
    root = tmp_path_factory.mktemp("draem")
    _parts(root / "data" / "good", 48, seed=0)
    return _train(root, "fp32")


def _train(root: Path, precision: str) -> Path:
    """Train the small draem on root/data (generated good parts) into root/model."""
    settings = TrainSettings(family="draem", height=SIZE, width=SIZE, hparams=HP, epochs=EPOCHS,
                             batch_size=8, device="cpu", lr=3e-3, val_fraction=0.25, max_minutes=None,
                             precision=precision)
    fit(load_split(root / "data", settings), settings, root / "model")
    return root / "model"


def _generated_scores(art: Artifact, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Scores of 16 fresh good parts and of 16 parts with painted defects."""
    good = _parts(folder / "good", 16, seed=1)
    bad = _paint_defects(_parts(folder / "bad", 16, seed=2), seed=3)
    cpu = torch.device("cpu")
    return score_artifact(art, good, cpu).scores["score"], score_artifact(art, bad, cpu).scores["score"]


def test_bf16_training_also_separates_generated_defects(tmp_path: Path) -> None:
    """The same small model trained in bf16 mixed precision (the default where the CPU has it) records it and
    still scores generated defective parts above good ones."""
    _parts(tmp_path / "data" / "good", 48, seed=0)
    art = load_artifact(_train(tmp_path, "bf16"))
    assert art.meta.training["precision"] == "bf16"
    sg, sd = _generated_scores(art, tmp_path)
    assert evaluate.auroc(sg, sd) >= 0.9, (sg, sd)


def test_draem_trained_for_seconds_separates_generated_defects(draem_model: Path, tmp_path: Path) -> None:
    """Trained on good parts only, the default family scores generated defective parts above good ones."""
    art = load_artifact(draem_model)
    assert art.meta.family == "draem" and art.meta.output == ANOMALY_MAP and art.meta.score.reduction == "map_peaks"
    params = art.meta.score.params  # the square for 64x64 frames; the scale from the 12 held-out good parts
    assert params["window"] == 17 and params["margin"] == 8 and params["peaks_gain"] > 0, params
    assert params["unique_radius"] == 1 and params["unique_gain"] > 0, params  # row 140
    assert art.meta.hparams["views"] == 2  # the frame and its mirror image (quality.md, row 118)
    assert art.meta.hparams["padding"] == "reflect"  # the frame's edge seen as its inside (quality.md, 71 and 73)
    assert art.meta.hparams["decoder"] == "conv-resize"  # half the arithmetic (quality.md, row 90)
    assert art.meta.training["precision"] == "fp32"
    sg, sd = _generated_scores(art, tmp_path)
    # 0.97-1.0 with 1-16 torch threads here, 0.93 on a 16-core machine with torch 2.11; one epoch gives 0.66
    assert evaluate.auroc(sg, sd) >= 0.9, (sg, sd)
    assert np.mean(sd >= art.meta.threshold.value) >= 0.75, (sd, art.meta.threshold.value)


def test_draem_heatmaps_are_the_map_and_the_repair_is_shown(draem_model: Path) -> None:
    """keep_maps returns the anomaly map as the heatmap and the model's repair as the reconstruction; the score
    is the model's reduction of that map."""
    art = load_artifact(draem_model)
    images = np.full((2, SIZE, SIZE), 128, np.uint8)
    scored = score_artifact(art, images, torch.device("cpu"), keep_maps=True)
    assert scored.errors is not None and scored.recon is not None
    assert scored.errors.shape == (2, SIZE, SIZE) and scored.recon.shape == (2, SIZE, SIZE)
    reduce = make_reduction(art.meta.score.reduction, art.meta.score.params)
    shown = torch.from_numpy(scored.errors.astype(np.float32)).unsqueeze(1)
    assert np.allclose(reduce(shown, shown).numpy(), scored.scores["score"], atol=1e-5)


def test_views_can_be_set_on_a_trained_model(draem_model: Path, tmp_path: Path) -> None:
    """hparams.views edited in model.json loads the same weights as a one-view model (docs/training.md); the
    default two views are the mean of its map and the flipped-back map of the mirror image."""
    model = Path(shutil.copytree(draem_model, tmp_path / "m"))
    meta = json.loads((model / "model.json").read_text())
    meta["hparams"]["views"] = 1
    (model / "model.json").write_text(json.dumps(meta))
    one, two = load_artifact(model).module, load_artifact(draem_model).module
    x = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(two(x), (one(x) + one(x.flip(3)).flip(3)) / 2, rtol=1e-5, atol=1e-6)


def test_artifact_output_must_fit_family_and_reduction(draem_model: Path, tmp_path: Path) -> None:
    """model.json says the output kind; a reconstruction reduction on a draem model is refused on load."""
    model = Path(shutil.copytree(draem_model, tmp_path / "m"))
    meta = json.loads((model / "model.json").read_text())
    meta["score"]["reduction"], meta["score"]["params"] = "topk_mean", {}
    (model / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="do not fit"):
        load_artifact(model)


def test_cli_default_family_trains_scores_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`inspector train` with no --family trains draem; score --heatmap and evaluate --report work on it."""
    from inspector.cli import main

    good = tmp_path / "good"
    _parts(good, 12, seed=4)
    bad = tmp_path / "bad"
    bad.mkdir()
    for i, image in enumerate(_paint_defects(_parts(tmp_path / "fresh", 4, seed=5), seed=6)):
        cv2.imwrite(str(bad / f"d{i}.png"), image)
    hp = [arg for kv in HP.items() for arg in ("--hparam", f"{kv[0]}={kv[1]}")]
    model = tmp_path / "m"
    assert main(["train", "--data", str(good), "--out", str(model), "--family", "draem", "--size", "32",
                 "--epochs", "2", "--batch-size", "4", "--device", "cpu", "--quiet", *hp]) == 0
    meta = json.loads((model / "model.json").read_text())
    assert meta["family"] == "draem" and meta["output"] == ANOMALY_MAP and meta["score"]["reduction"] == "map_peaks"
    assert len(meta["data"]["held_out_files"]) == meta["data"]["held_out_count"] == 1
    assert meta["training"]["precision"] == ("bf16" if fast_bf16(torch.device("cpu")) else "fp32")  # auto
    assert main(["score", str(bad), "--model", str(model), "--heatmap", str(tmp_path / "heat"), "--quiet"]) == 0
    assert len(list((tmp_path / "heat").glob("*_heatmap.png"))) == 4
    assert main(["evaluate", "--model", str(model), "--good", str(good), "--defect", str(bad), "--report",
                 str(tmp_path / "report"), "--quiet"]) == 0
    assert (tmp_path / "report" / "report.html").is_file()
    capsys.readouterr()


def test_cli_flip_crop_and_defect_size_are_recorded_and_a_bad_crop_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--flip`, `--crop` and `--defect-size` reach the training settings in model.json; a crop outside (0, 1] is a
    usage error that names the setting, before any image is read."""
    from inspector.cli import EXIT_USAGE, main

    good = tmp_path / "good"
    _parts(good, 8, seed=7)
    hp = [arg for kv in HP.items() for arg in ("--hparam", f"{kv[0]}={kv[1]}")]
    model = tmp_path / "m"
    assert main(["train", "--data", str(good), "--out", str(model), "--family", "draem", "--size", "32",
                 "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--quiet", "--flip", "--crop", "1",
                 "--defect-size", "image", *hp]) == 0
    training = json.loads((model / "model.json").read_text())["training"]
    settings = training["settings"]
    assert settings["augment"]["flip"] is True and settings["crop"] == 1.0 and settings["defect_size"] == "image"
    assert "defect_size" not in training  # as set: nothing was chosen
    capsys.readouterr()
    args = ["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "m2"), "--crop", "0"]
    assert main(args) == EXIT_USAGE
    assert "crop" in capsys.readouterr().err


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_offline_scores_are_the_daemons_in_the_same_arithmetic(draem_model: Path, tmp_path: Path,
                                                               precision: str) -> None:
    """`score_artifact` (calibrate, evaluate, score) in a given precision gives the scores the daemon's worker gives
    in it, leaves the model itself in fp32, and training records the arithmetic its threshold was set in."""
    from inspector.device import resolve_dtype
    from inspector.worker import Scorer

    art = load_artifact(draem_model)
    images = _paint_defects(_parts(tmp_path / "p", 8, seed=11), seed=12)
    cpu = torch.device("cpu")
    dtype = resolve_dtype(precision, cpu, ANOMALY_MAP)
    offline = score_artifact(art, images, cpu, precision=precision).scores["score"]
    assert all(p.dtype == torch.float32 for p in art.module.parameters())
    worker = Scorer(load_artifact(draem_model), make_reduction(art.meta.score.reduction, art.meta.score.params), 0.5,
                    cpu, dtype, max_batch=8)
    worker.host_np[:] = images
    np.testing.assert_allclose(offline, worker.scores(8), atol=2e-3 if precision == "bf16" else 1e-5)
    if precision == "bf16":  # and not the fp32 scores: the arithmetic does reach the forward pass
        assert np.abs(offline - score_artifact(art, images, cpu, precision="fp32").scores["score"]).max() > 0
    auto = "bf16" if fast_bf16(cpu) else "fp32"
    assert art.meta.threshold.details["arithmetic"] == auto


def test_draem_training_within_its_time_budget_is_deterministic(tmp_path: Path) -> None:
    """With the default time budget, which this run does not reach, two trainings give identical weights: the
    clock enters the learning-rate schedule only when the budget binds (it did at every step before)."""
    _parts(tmp_path / "data" / "good", 12, seed=13)
    settings = TrainSettings(family="draem", height=SIZE, width=SIZE, hparams=HP, epochs=3,
                             batch_size=4, device="cpu", val_fraction=0.25)
    a = fit(load_split(tmp_path / "data", settings), settings, tmp_path / "a").artifact.meta
    b = fit(load_split(tmp_path / "data", settings), settings, tmp_path / "b").artifact.meta
    assert a.training["clocked_schedule"] is False and a.training["deterministic"] is True
    assert a.weights_sha256 == b.weights_sha256

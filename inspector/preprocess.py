"""Frame -> model input: region of interest, colour conversion, resize, contrast. Shared by the daemon and
training.

A frame whose aspect differs from the input's is either stretched to the input size, or, with fit "pad",
resized to fit inside it with its aspect kept and the rest filled by reflecting its edges. With contrast
"stretch" each resized frame's grey levels are then stretched so that its 1st to 99th percentiles span 0-255.
The model artifact says which (`InputSpec.fit`, `InputSpec.contrast`), so training, calibration and the daemon
prepare every frame alike.
"""

from __future__ import annotations

from typing import Iterable, Literal, TypedDict

import cv2
import numpy as np

Fit = Literal["stretch", "pad"]
FITS: tuple[Fit, ...] = ("stretch", "pad")
ASPECT_SPREAD = 1.05  # images whose aspects differ by more than this ratio are fitted with padding by "auto"
# From this shrink factor on, a resize whose factor is not a whole number first shrinks by the whole part of it:
# OpenCV's area resize is several times slower for a fractional factor (8.8 ms against 1.4 ms for a
# 2448x2048 frame to 256x256, benchmarks/preprocess_speed.py). Below it, frames are resized in one step.
TWO_STEP_SHRINK = 3

Contrast = Literal["none", "stretch"]
CONTRAST_PERCENTILES = (1.0, 99.0)  # the grey levels that "stretch" maps to 0 and 255
MIN_CONTRAST = 8  # an image whose percentiles are closer than this many grey levels is left as it is (blank)
CONTRAST_SPREAD = 1.25  # "auto" stretches when the images' contrasts (5th to 95th percentile) differ by more


class Preparation(TypedDict):
    """How a model's images are prepared beyond size and channels (`InputSpec.preparation()`)."""

    fit: Fit
    contrast: Contrast


def crop(image: np.ndarray, roi: tuple[int, int, int, int] | None) -> np.ndarray:
    """The region of interest [x, y, w, h] of an image, clipped to it; a view, no copy."""
    if roi is None:
        return image
    x, y, w, h = roi
    view = image[y : y + h, x : x + w]
    if view.size == 0:
        raise ValueError(f"region of interest {list(roi)} lies outside the {image.shape[1]}x{image.shape[0]} image")
    return view


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Convert a uint8 image to 1 (gray, (H, W)) or 3 (BGR, (H, W, 3)) channels."""
    if image.dtype != np.uint8:
        image = _to_uint8(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if channels == 1:
        if image.ndim == 2:
            return image
        code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        return cv2.cvtColor(image, code)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


def prepare(image: np.ndarray, roi: tuple[int, int, int, int] | None, height: int, width: int, channels: int,
            out: np.ndarray | None = None, fit: Fit = "stretch", contrast: Contrast = "none") -> np.ndarray:
    """Crop, convert and resize one image to uint8 (height, width) or (height, width, 3), into `out` if given,
    then stretch its contrast if asked."""
    resized = resize(to_channels(crop(image, roi), channels), height, width, fit, out)
    if contrast != "stretch":
        return resized
    if out is None and np.shares_memory(resized, image):  # already the input's size: stretch a copy
        resized = resized.copy()
    return stretch_contrast(resized)


def contrast_levels(image: np.ndarray) -> tuple[int, int]:
    """The grey levels at the image's 1st and 99th percentiles (all channels together), from its histogram."""
    counts = np.bincount(image.ravel(), minlength=256).cumsum()
    lo, hi = (int(np.searchsorted(counts, counts[-1] * q / 100.0)) for q in CONTRAST_PERCENTILES)
    return lo, hi


def stretch_contrast(image: np.ndarray) -> np.ndarray:
    """A uint8 image with its 1st..99th percentile grey levels stretched to 0..255 (the tails clipped), in place;
    an image of less than MIN_CONTRAST levels between them (blank, flat) is left as it is."""
    lo, hi = contrast_levels(image)
    if hi - lo >= MIN_CONTRAST and (lo, hi) != (0, 255):
        lut = np.clip((np.arange(256) - lo) * (255.0 / (hi - lo)), 0, 255).round().astype(np.uint8)
        if image.flags.c_contiguous:
            cv2.LUT(image, lut, dst=image)
        else:  # a view (a region of interest): OpenCV cannot write into every layout
            np.take(lut, image, out=image)
    return image


def choose_contrast(spans: Iterable[int]) -> Contrast:
    """The contrast "auto" picks from the images' spans (99th minus 1st percentile grey level): stretch when they
    differ (lighting or exposure that varies between good parts), else none (one lighting: the grey levels
    themselves are part of what is normal)."""
    values = np.asarray(list(spans), np.float64)
    if values.size == 0:
        return "none"
    low, high = np.percentile(values, (5, 95))
    return "stretch" if high > CONTRAST_SPREAD * max(low, MIN_CONTRAST) else "none"


def resize(image: np.ndarray, height: int, width: int, fit: Fit = "stretch",
           out: np.ndarray | None = None, interpolation: int | None = None) -> np.ndarray:
    """An image (any dtype OpenCV resizes) at (height, width): stretched, or with fit "pad" shrunk or grown to
    fit inside with its aspect kept, centred, the margins its edges reflected. Into `out` if given."""
    h, w = image.shape[:2]
    top, left, inner_h, inner_w = inner_box(h, w, height, width, fit)
    if (inner_h, inner_w) == (h, w):
        inner = image
    else:
        shrinking = h > inner_h or w > inner_w
        interp = interpolation if interpolation is not None else cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        if interp == cv2.INTER_AREA:
            image = _whole_shrink(image, inner_h, inner_w)
        direct = out is not None and (inner_h, inner_w) == (height, width)
        inner = cv2.resize(image, (inner_w, inner_h), dst=out if direct else None, interpolation=interp)
    if (inner_h, inner_w) != (height, width):
        border = cv2.BORDER_REFLECT_101 if min(inner_h, inner_w) > 1 else cv2.BORDER_REPLICATE
        return cv2.copyMakeBorder(inner, top, height - inner_h - top, left, width - inner_w - left, border,
                                  dst=out)
    if out is not None and inner is not out:
        np.copyto(out, inner)
        return out
    return inner


def _whole_shrink(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The first step of a large area shrink to (height, width) whose factor is not whole: the image shrunk by
    the whole part k of the factor, after dropping the fewer than k rows and columns that keep it from dividing
    exactly, half on each side. Otherwise the image itself."""
    h, w = image.shape[:2]
    k = int(min(h / height, w / width))
    if k < TWO_STEP_SHRINK or (h % height == 0 and w % width == 0):
        return image
    top, left = (h % k) // 2, (w % k) // 2
    h, w = h - h % k, w - w % k
    return cv2.resize(image[top:top + h, left:left + w], (w // k, h // k), interpolation=cv2.INTER_AREA)


def inner_box(h: int, w: int, height: int, width: int, fit: Fit) -> tuple[int, int, int, int]:
    """Where an (h, w) image lies in the (height, width) input once fitted: (top, left, inner height, width)."""
    if fit == "stretch":
        return 0, 0, height, width
    if fit != "pad":
        raise ValueError(f"unknown fit {fit!r}; known: {', '.join(FITS)}")
    k = min(height / h, width / w)
    inner_h, inner_w = min(height, max(1, round(h * k))), min(width, max(1, round(w * k)))
    return (height - inner_h) // 2, (width - inner_w) // 2, inner_h, inner_w


def unfit(values: np.ndarray, h: int, w: int, fit: Fit) -> np.ndarray:
    """The part of a map at the input size (an anomaly map, a heatmap) that shows an (h, w) image fitted with
    `fit`: the whole map when stretched, the inner box without the reflected margins when padded. A view."""
    top, left, inner_h, inner_w = inner_box(h, w, values.shape[0], values.shape[1], fit)
    return values[top:top + inner_h, left:left + inner_w]


def choose_fit(aspects: Iterable[float]) -> Fit:
    """The fit "auto" picks from the images' aspects (width / height): pad when they differ (crops of
    different shapes, whose texture stretching would distort by different amounts), else stretch (one camera,
    one aspect: every pixel of the input is used)."""
    values = list(aspects)
    return "pad" if values and max(values) / min(values) > ASPECT_SPREAD else "stretch"


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        return np.clip(image * 255.0, 0, 255).astype(np.uint8)
    return np.clip(image, 0, 255).astype(np.uint8)

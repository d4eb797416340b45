"""Frame -> model input: region of interest, colour conversion, resize. Shared by the daemon and training."""

from __future__ import annotations

import cv2
import numpy as np


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
            out: np.ndarray | None = None) -> np.ndarray:
    """Crop, convert and resize one image to uint8 (height, width) or (height, width, 3), into `out` if given."""
    image = to_channels(crop(image, roi), channels)
    if image.shape[0] == height and image.shape[1] == width:
        if out is None:
            return image
        np.copyto(out, image)
        return out
    shrinking = image.shape[0] > height or image.shape[1] > width
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    if out is None:
        return cv2.resize(image, (width, height), interpolation=interp)
    cv2.resize(image, (width, height), dst=out, interpolation=interp)
    return out


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        return np.clip(image * 255.0, 0, 255).astype(np.uint8)
    return np.clip(image, 0, 255).astype(np.uint8)

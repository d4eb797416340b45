"""Synthetic defects made from good images themselves, for training a model to find what does not belong.

A defect is a shape (noise-shaped blobs, small spots, thin strokes) filled with something foreign to that
place: the texture of another place or image (cut and paste), inverted or shifted intensity, a flat grey, a
blurred or displaced copy. The target mask marks the pixels the defect visibly changed. Nothing here knows a
data set: shapes and fills are drawn at random, scaled to the image size. Used by training only.
"""

from __future__ import annotations

import cv2
import numpy as np

MIN_CHANGE = 0.04  # a pixel counts as defective when the defect changed it by at least this (0..1 scale)
SHAPES = ("blobs", "spots", "strokes")
FILLS = ("paste", "invert", "flat", "shift", "blur", "displace")


def noise_blobs(rng: np.random.Generator, h: int, w: int, scale: float | None = None) -> np.ndarray:
    """Blobs of random size from thresholded smooth noise (Perlin-like), at least one pixel: float (H, W).
    Sized to `scale` px (default: the shorter side); a larger scale makes larger blobs covering more of it."""
    cell = rng.uniform(2.0, max(3.0, (scale or min(h, w)) / 3.0))  # noise feature size in pixels
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    noise = cv2.resize(rng.standard_normal((gh, gw)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    keep = rng.uniform(0.003, 0.08)  # share of the image covered
    if scale:
        keep = min(0.5, keep * scale * scale / (h * w))
    mask = (noise >= np.quantile(noise, 1.0 - keep)).astype(np.float32)
    if rng.random() < 0.7:  # keep one region only: a single local defect
        n, labels = cv2.connectedComponents(mask.astype(np.uint8))
        if n > 1:
            mask = (labels == rng.integers(1, n)).astype(np.float32)
    return mask


def spots(rng: np.random.Generator, h: int, w: int, scale: float | None = None) -> np.ndarray:
    """One to four small ellipses (pin-holes, blow-holes, specks), sized to `scale` px (default: the shorter
    side): float (H, W)."""
    mask = np.zeros((h, w), np.float32)
    scale = scale or min(h, w)
    for _ in range(int(rng.integers(1, 5))):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (max(1, int(rng.uniform(0.004, 0.04) * scale)), max(1, int(rng.uniform(0.004, 0.04) * scale)))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
    return mask


def strokes(rng: np.random.Generator, h: int, w: int, scale: float | None = None) -> np.ndarray:
    """One to three thin random polylines (cracks, scratches, shorts, opens), sized to `scale` px (default: the
    shorter side): float (H, W)."""
    mask = np.zeros((h, w), np.float32)
    scale = scale or min(h, w)
    for _ in range(int(rng.integers(1, 4))):
        p = np.array([rng.uniform(0, w), rng.uniform(0, h)])
        heading = rng.uniform(0, 2 * np.pi)
        points = [p.copy()]
        for _ in range(int(rng.integers(1, 6))):
            heading += rng.normal(0, 0.6)
            p = p + rng.uniform(0.02, 0.12) * scale * np.array([np.cos(heading), np.sin(heading)])
            points.append(p.copy())
        thickness = int(rng.integers(1, max(2, int(scale) // 64) + 1))
        cv2.polylines(mask, [np.round(points).astype(np.int32)], False, 1.0, thickness)
    return mask


def fill(rng: np.random.Generator, image: np.ndarray, other: np.ndarray, kind: str) -> np.ndarray:
    """What the defect region shows instead of `image` (float (C, H, W) in [0, 1])."""
    _, h, w = image.shape
    if kind == "paste":  # texture from a random place of another image (or this one)
        src = other if rng.random() < 0.7 else image
        dy, dx = int(rng.integers(0, h)), int(rng.integers(0, w))
        out = np.roll(src, (dy, dx), axis=(1, 2))
        return out[:, :, ::-1].copy() if rng.random() < 0.5 else out
    if kind == "invert":
        return 1.0 - image
    if kind == "flat":
        return np.full_like(image, rng.uniform(0.0, 1.0))
    if kind == "shift":  # darker or brighter, with a smooth ramp across it
        ramp = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :] * rng.uniform(-0.2, 0.2)
        return np.clip(image + rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 0.5) + ramp, 0.0, 1.0)
    if kind == "blur":
        sigma = rng.uniform(1.0, 4.0)
        return np.stack([cv2.GaussianBlur(c, (0, 0), sigma) for c in image])
    if kind == "displace":  # the image's own structure moved by a few pixels (spurs, bites, misplacements)
        d = max(2, min(h, w) // 32)
        return np.roll(image, (int(rng.integers(-d, d + 1)), int(rng.integers(-d, d + 1))), axis=(1, 2))
    raise ValueError(f"unknown defect fill {kind!r}; known: {', '.join(FILLS)}")


def make_defect(rng: np.random.Generator, image: np.ndarray, other: np.ndarray,
                scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A defective copy of `image` (float32 (C, H, W), [0, 1]) and its target mask (float32 (H, W)), the shape
    sized to `scale` px (default: the image's shorter side)."""
    _, h, w = image.shape
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    mask = {"blobs": noise_blobs, "spots": spots, "strokes": strokes}[shape](rng, h, w, scale)
    kind = FILLS[int(rng.integers(len(FILLS)))]
    opacity = rng.uniform(0.3, 1.0) if rng.random() < 0.5 else 1.0
    soft = cv2.GaussianBlur(mask, (0, 0), 0.7) if rng.random() < 0.5 else mask
    alpha = np.clip(soft * opacity, 0.0, 1.0)[None]  # (1, H, W)
    out = image * (1.0 - alpha) + fill(rng, image, other, kind) * alpha
    target = (np.abs(out - image).max(axis=0) >= MIN_CHANGE).astype(np.float32)  # what visibly changed
    return out.astype(np.float32), target


def defect_batch(rng: np.random.Generator, images: np.ndarray, rate: float = 0.5,
                 scales: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Defective copies of a batch (float (B, C, H, W)) for a `rate` share of it, and target masks (B, H, W).
    Each defect is sized to a scale drawn uniformly from `scales` (px), else to the images' shorter side."""
    out = images.astype(np.float32, copy=True)
    masks = np.zeros((len(out), *out.shape[2:]), np.float32)
    for i in range(len(images)):
        if rng.random() < rate:
            other = images[int(rng.integers(len(images)))]
            scale = rng.uniform(*scales) if scales else None
            out[i], masks[i] = make_defect(rng, images[i], other, scale)
    return out, masks

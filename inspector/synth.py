"""Synthetic top-view images of a machined flange, with ground-truth defect masks."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

DEFECT_KINDS: tuple[str, ...] = ("scratch", "crack", "hole", "dent", "stain", "missing")

_PART_TINT = np.array([0.90, 0.97, 1.06], np.float32)  # BGR: warm grey metal
_BELT_TINT = np.array([1.00, 1.06, 0.88], np.float32)  # BGR: dark green-grey conveyor belt
_STAIN_TINT = np.array([1.40, 1.00, 0.65], np.float32)  # darkens blue most: brownish oil
_FACE_BANDS = ((0.23, 0.37), (0.47, 0.56), (0.76, 0.84))  # solid bands, radius / part radius
_LIGHT = (-0.6, -0.8)  # in-plane direction towards the lamp for dent shading
_Painter = Callable[[np.ndarray, np.ndarray, "_Scene", np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class SynthPart:
    """One rendered part: image, label, defect kind and ground-truth mask."""

    image: np.ndarray
    label: str
    defect: str | None
    mask: np.ndarray


@dataclass(frozen=True)
class _Scene:
    """Per-part pose, lighting and noise parameters (everything except the defect)."""

    matrix: np.ndarray
    center: tuple[float, float]
    radius: float
    gain: float
    gradient: tuple[float, float]
    belt_offset: int
    noise_sigma: float
    seed: int


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    """Hermite step from 0 at e0 to 1 at e1."""
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _ring(r: np.ndarray, r0: float, width: float) -> np.ndarray:
    """Gaussian ring profile centred on r0."""
    return np.exp(-0.5 * ((r - r0) / width) ** 2)


def _blurred_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise rescaled to unit standard deviation."""
    noise = cv2.GaussianBlur(rng.standard_normal(shape).astype(np.float32), (0, 0), sigma)
    return noise / max(float(noise.std()), 1e-6)


def _canonical_part(w: int, h: int, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Centred, unrotated part as (H, W, 3) float32 planes: shade, alpha, shadow."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = x - (w - 1) / 2, y - (h - 1) / 2
    d = np.hypot(dx, dy)
    r, theta = d / radius, np.arctan2(dy, dx)
    px = 1.0 / radius
    marks = np.sin(2 * np.pi * d / max(3.0, radius / 30) + 0.8 * _blurred_noise(rng, (h, w), 3.0))
    cast = _blurred_noise(rng, (h, w), max(1.0, radius / 45))
    shade = np.where(r < 0.42, 172 + 5 * marks + 6 * np.cos(2 * theta), 146 + 7 * marks + 10 * np.cos(2 * theta))
    shade = np.where(r > 0.89, 118 + 14 * cast - 40 * _smoothstep(0.95, 1.0, r), shade)
    shade += 45 * _ring(r, 0.185, max(0.012, px)) + 40 * _ring(r, 0.405, max(0.008, px))
    shade -= 55 * _ring(r, 0.43, max(0.012, px)) + 50 * _ring(r, 0.875, max(0.012, px))
    disc = np.clip(radius - d + 0.5, 0, 1)
    alpha = disc * np.clip(d - 0.17 * radius + 0.5, 0, 1)
    hole_r = 0.065 * radius
    for k in range(6):
        a = k * np.pi / 3
        dh = np.hypot(dx - 0.66 * radius * math.cos(a), dy - 0.66 * radius * math.sin(a))
        alpha *= np.clip(dh - hole_r + 0.5, 0, 1)
        shade += 45 * _ring(dh, hole_r + 0.02 * radius, max(0.015 * radius, 1.0))
    shadow = cv2.GaussianBlur(disc, (0, 0), 0.05 * radius)
    return np.dstack([shade, alpha, shadow]).astype(np.float32)


def _belt(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """Conveyor belt texture twice the image height, so it can scroll."""
    y = np.arange(2 * h, dtype=np.float32)[:, None]
    ribs = 3.0 * np.sin(2 * np.pi * y / 7.0)
    return (42 + 5 * _blurred_noise(rng, (2 * h, w), 1.5) + ribs).astype(np.float32)


def _stroke(shape: tuple[int, int], lines: list[np.ndarray], thickness: int) -> np.ndarray:
    """Antialiased polylines as a float32 coverage map in [0, 1]."""
    canvas = np.zeros(shape, np.uint8)
    pts = [np.round(p * 16).astype(np.int32).reshape(-1, 1, 2) for p in lines]
    cv2.polylines(canvas, pts, False, 255, thickness, cv2.LINE_AA, shift=4)
    return canvas.astype(np.float32) / 255.0


def _check_int(name: str, value: int, low: int) -> None:
    """Raise ValueError unless value is an int >= low."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _validate(width: int, height: int, channels: int, defect_rate: float, kinds: Sequence[str]) -> None:
    """Validate renderer arguments, naming the offending one."""
    _check_int("width", width, 32)
    _check_int("height", height, 32)
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if not isinstance(defect_rate, (int, float)) or not 0.0 <= defect_rate <= 1.0:
        raise ValueError(f"defect_rate must be in [0, 1], got {defect_rate!r}")
    if isinstance(kinds, str) or len(kinds) == 0 or any(k not in DEFECT_KINDS for k in kinds):
        raise ValueError(f"kinds must be a non-empty subset of {DEFECT_KINDS}, got {kinds!r}")


class PartRenderer:
    """Renders synthetic parts with a set rate of defects; deterministic for a given seed."""

    def __init__(self, width: int = 256, height: int = 256, channels: int = 1, seed: int = 0,
                 defect_rate: float = 0.1, kinds: Sequence[str] = DEFECT_KINDS) -> None:
        _validate(width, height, channels, defect_rate, kinds)
        self.width, self.height, self.channels = int(width), int(height), int(channels)
        self.defect_rate, self.kinds = float(defect_rate), tuple(kinds)
        self._rng = np.random.default_rng(seed)
        self._size = min(self.width, self.height)
        self._radius = 0.38 * self._size
        self._canon = _canonical_part(self.width, self.height, self._radius, self._rng)
        colour = channels == 3
        belt = _belt(self.width, self.height, self._rng)[..., None]
        self._belt = belt * _BELT_TINT if colour else belt
        self._tint = _PART_TINT if colour else np.ones(1, np.float32)
        self._stain_tint = _STAIN_TINT if colour else np.ones(1, np.float32)
        self._blotch = _blurred_noise(self._rng, (2 * self.height, 2 * self.width), 0.02 * self._size)
        self._xs = np.arange(self.width, dtype=np.float32)
        self._ys = np.arange(self.height, dtype=np.float32)
        self._xn = (self._xs / self.width - 0.5)[None, :]
        self._yn = (self._ys / self.height - 0.5)[:, None]
        self._painters: dict[str, _Painter] = {
            "scratch": self._scratch, "crack": self._crack, "hole": self._hole,
            "dent": self._dent, "stain": self._stain, "missing": self._missing}

    def render(self) -> SynthPart:
        """Next part: defect with probability defect_rate, kind uniformly among kinds."""
        is_defect = self._rng.random() < self.defect_rate
        kind = self.kinds[int(self._rng.integers(len(self.kinds)))] if is_defect else None
        return self.render_part(kind)

    def render_part(self, defect: str | None) -> SynthPart:
        """Next part with a forced defect kind (None renders a good part)."""
        self._check_defect(defect)
        return self._compose(self._sample_scene(), defect)

    def _render_pair(self, defect: str) -> tuple[SynthPart, SynthPart]:
        """Same pose, lighting and noise rendered good and with the defect (for tests)."""
        self._check_defect(defect)
        scene = self._sample_scene()
        return self._compose(scene, None), self._compose(scene, defect)

    @staticmethod
    def _check_defect(defect: str | None) -> None:
        """Raise ValueError for an unknown defect kind."""
        if defect is not None and defect not in DEFECT_KINDS:
            raise ValueError(f"defect must be None or one of {DEFECT_KINDS}, got {defect!r}")

    def _sample_scene(self) -> _Scene:
        """Draw pose, lighting and noise parameters for one part."""
        rng = self._rng
        angle, scale = rng.uniform(0.0, 360.0), rng.uniform(0.97, 1.03)
        tx, ty = rng.uniform(-0.03, 0.03, 2) * (self.width, self.height)
        cx, cy = (self.width - 1) / 2, (self.height - 1) / 2
        matrix = cv2.getRotationMatrix2D((cx, cy), angle, scale)
        matrix[:, 2] += (tx, ty)
        phi, slope = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.12)
        return _Scene(matrix=matrix, center=(cx + tx, cy + ty), radius=self._radius * scale,
                      gain=rng.uniform(0.9, 1.1), gradient=(slope * math.cos(phi), slope * math.sin(phi)),
                      belt_offset=int(rng.integers(self.height)), noise_sigma=rng.uniform(2.0, 4.0),
                      seed=int(rng.integers(2**63)))

    def _compose(self, sc: _Scene, defect: str | None) -> SynthPart:
        """Warp the canonical part into pose, paint the defect, light, add noise, quantise."""
        h, w = self.height, self.width
        warped = cv2.warpAffine(self._canon, sc.matrix, (w, h), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        part = warped[..., :1] * self._tint
        alpha = warped[..., 1].copy()
        mask = np.zeros((h, w), bool)
        if defect is not None:
            raw = self._painters[defect](part, alpha, sc, np.random.default_rng([sc.seed, 1]))
            mask = raw & (warped[..., 1] > 0.5)
        belt = self._belt[sc.belt_offset:sc.belt_offset + h] * (1 - 0.4 * warped[..., 2:3])
        img = belt + alpha[..., None] * (part - belt)
        light = sc.gain * (1 + sc.gradient[0] * self._xn + sc.gradient[1] * self._yn)
        img *= light[..., None]
        noise = np.random.default_rng([sc.seed, 0]).standard_normal(img.shape, np.float32)
        img += sc.noise_sigma * noise + 0.5
        image = np.clip(img, 0, 255).astype(np.uint8)
        image = image[..., 0] if self.channels == 1 else image
        return SynthPart(image=image, label="good" if defect is None else "defect", defect=defect, mask=mask)

    def _face_point(self, sc: _Scene, rng: np.random.Generator) -> np.ndarray:
        """Random point on a solid band of the part face, in image coordinates."""
        lo, hi = _FACE_BANDS[int(rng.integers(len(_FACE_BANDS)))]
        r, a = rng.uniform(lo, hi) * sc.radius, rng.uniform(0, 2 * np.pi)
        return np.array([sc.center[0] + r * math.cos(a), sc.center[1] + r * math.sin(a)])

    def _roi(self, c: np.ndarray, half: float) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
        """Bounding box around c (clipped to the image) with local x/y offsets from c."""
        x0, x1 = max(int(c[0] - half), 0), min(int(c[0] + half) + 2, self.width)
        y0, y1 = max(int(c[1] - half), 0), min(int(c[1] + half) + 2, self.height)
        return (slice(y0, y1), slice(x0, x1)), self._xs[None, x0:x1] - c[0], self._ys[y0:y1, None] - c[1]

    def _thickness(self, rng: np.random.Generator) -> int:
        """Line thickness in pixels, growing with image size."""
        return max(1, int(round(self._size / 256 * rng.uniform(1.0, 2.0))))

    def _scratch(self, part: np.ndarray, alpha: np.ndarray, sc: _Scene, rng: np.random.Generator) -> np.ndarray:
        """Thin, slightly curved bright or dark line."""
        length = rng.uniform(0.15, 0.35) * 2 * sc.radius
        a = rng.uniform(0, 2 * np.pi)
        d, n = np.array([math.cos(a), math.sin(a)]), np.array([-math.sin(a), math.cos(a)])
        t = np.linspace(0.0, 1.0, 24)[:, None]
        start = self._face_point(sc, rng)
        pts = start + (t - 0.5) * length * d + 4 * t * (1 - t) * rng.uniform(-0.1, 0.1) * length * n
        cover = _stroke(alpha.shape, [pts], self._thickness(rng))
        part += (rng.choice([-1.0, 1.0]) * rng.uniform(50, 95) * cover)[..., None] * self._tint
        return cover > 0.3

    def _crack(self, part: np.ndarray, alpha: np.ndarray, sc: _Scene, rng: np.random.Generator) -> np.ndarray:
        """Jagged dark polyline with one or two branches."""
        start = self._face_point(sc, rng)
        main = self._jagged(start, rng.uniform(0, 2 * np.pi), int(rng.integers(9, 16)), sc, rng)
        lines = [main]
        for _ in range(int(rng.integers(1, 3))):
            fork = int(rng.integers(2, len(main) - 2))
            heading = math.atan2(*(main[fork + 1] - main[fork])[::-1])
            heading += rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.1)
            lines.append(self._jagged(main[fork], heading, int(rng.integers(3, 7)), sc, rng))
        cover = _stroke(alpha.shape, lines, max(1, round(self._size / 256)))
        part *= (1 - rng.uniform(0.55, 0.85) * cover)[..., None]
        return cover > 0.3

    @staticmethod
    def _jagged(start: np.ndarray, heading: float, steps: int, sc: _Scene, rng: np.random.Generator) -> np.ndarray:
        """Zig-zag polyline that keeps a slowly drifting overall heading."""
        pts = [start]
        for _ in range(steps):
            heading += rng.normal(0, 0.12)
            a = heading + rng.uniform(-0.8, 0.8)
            step = 0.035 * sc.radius * rng.uniform(0.6, 1.4)
            pts.append(pts[-1] + step * np.array([math.cos(a), math.sin(a)]))
        return np.array(pts)

    def _hole(self, part: np.ndarray, alpha: np.ndarray, sc: _Scene, rng: np.random.Generator) -> np.ndarray:
        """Dark round pit with a slightly raised bright rim."""
        rr = rng.uniform(0.02, 0.05) * self._size
        roi, dx, dy = self._roi(self._face_point(sc, rng), 1.6 * rr)
        q = np.sqrt(dx * dx + dy * dy) / rr
        factor = 1 - rng.uniform(0.55, 0.8) * (1 - _smoothstep(0.85, 1.05, q)) * (1 - 0.35 * q * q)
        rim = rng.uniform(25, 45) * _ring(q, 1.15, 0.15)
        part[roi] = part[roi] * factor[..., None] + rim[..., None] * self._tint
        return self._full_mask(roi, q < 1.4)

    def _dent(self, part: np.ndarray, alpha: np.ndarray, sc: _Scene, rng: np.random.Generator) -> np.ndarray:
        """Smooth elliptical depression or bump that changes the local shading."""
        s, aspect, phi = rng.uniform(0.035, 0.07) * self._size, rng.uniform(0.6, 1.0), rng.uniform(0, np.pi)
        roi, dx, dy = self._roi(self._face_point(sc, rng), 3 * s)
        u = (dx * math.cos(phi) + dy * math.sin(phi)) / s
        v = (dy * math.cos(phi) - dx * math.sin(phi)) / (s * aspect)
        bump = np.exp(-0.5 * (u * u + v * v))
        gy, gx = np.gradient(bump)
        shading = rng.choice([-1.0, 1.0]) * rng.uniform(70, 120) * s * (gx * _LIGHT[0] + gy * _LIGHT[1])
        part[roi] = part[roi] * (1 - 0.15 * bump)[..., None] + shading[..., None] * self._tint
        return self._full_mask(roi, bump > 0.2)

    def _stain(self, part: np.ndarray, alpha: np.ndarray, sc: _Scene, rng: np.random.Generator) -> np.ndarray:
        """Irregular, lower-contrast darker blob (brownish in colour), like oil."""
        s = rng.uniform(0.05, 0.09) * self._size
        roi, dx, dy = self._roi(self._face_point(sc, rng), 2.5 * s)
        field = np.zeros(np.broadcast_shapes(dx.shape, dy.shape), np.float32)
        for _ in range(int(rng.integers(3, 6))):
            ox, oy = rng.normal(0, 0.6 * s, 2)
            field += np.exp(-((dx - ox) ** 2 + (dy - oy) ** 2) / (2 * (s * rng.uniform(0.4, 0.9)) ** 2))
        oy, ox = rng.integers(self.height), rng.integers(self.width)
        field += 0.3 * self._blotch[oy:oy + field.shape[0], ox:ox + field.shape[1]]
        blob = _smoothstep(0.45, 0.75, field)
        part[roi] *= 1 - rng.uniform(0.18, 0.38) * blob[..., None] * self._stain_tint
        return self._full_mask(roi, blob > 0.3)

    def _missing(self, part: np.ndarray, alpha: np.ndarray, sc: _Scene, rng: np.random.Generator) -> np.ndarray:
        """Chunk broken off the outer edge, showing the belt behind."""
        rc, a = rng.uniform(0.15, 0.26) * sc.radius, rng.uniform(0, 2 * np.pi)
        dist = sc.radius + rng.uniform(-0.1, 0.2) * rc
        cc = np.array([sc.center[0] + dist * math.cos(a), sc.center[1] + dist * math.sin(a)])
        angles = np.sort(rng.uniform(0, 2 * np.pi, 14))
        radii = rc * rng.uniform(0.7, 1.15, 14)
        poly = cc + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        canvas = np.zeros(alpha.shape, np.uint8)
        cv2.fillPoly(canvas, [np.round(poly * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
        chip = canvas.astype(np.float32) / 255.0
        edge = np.clip(cv2.GaussianBlur(chip, (0, 0), 1.2) - chip, 0, 1)
        part *= (1 - 0.8 * edge)[..., None]
        raw = (chip > 0.5) & (alpha > 0.5)
        alpha *= 1 - chip
        return raw

    def _full_mask(self, roi: tuple[slice, slice], local: np.ndarray) -> np.ndarray:
        """Embed an ROI mask into a full-frame boolean mask."""
        mask = np.zeros((self.height, self.width), bool)
        mask[roi] = local
        return mask


def write_dataset(out: Path, count: int, defect_rate: float, seed: int = 0, width: int = 256,
                  height: int = 256, channels: int = 1, ext: str = "png") -> dict[str, int]:
    """Write count parts to out/good, out/defect and defect masks to out/ground_truth; return counts."""
    _check_int("count", count, 1)
    ext = str(ext).lstrip(".").lower()
    if not ext.isalnum():
        raise ValueError(f"ext must be an image extension such as 'png', got {ext!r}")
    renderer = PartRenderer(width, height, channels, seed, defect_rate)
    out = Path(out)
    for sub in ("good", "defect", "ground_truth"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    counts = {"good": 0, "defect": 0}
    for i in range(count):
        part = renderer.render()
        if part.defect is None:
            _imwrite(out / "good" / f"part_{i:05d}.{ext}", part.image)
        else:
            _imwrite(out / "defect" / f"part_{i:05d}_{part.defect}.{ext}", part.image)
            _imwrite(out / "ground_truth" / f"part_{i:05d}_{part.defect}.png", part.mask.astype(np.uint8) * 255)
        counts[part.label] += 1
    return counts


def _imwrite(path: Path, image: np.ndarray) -> None:
    """Write an image, raising ValueError if OpenCV cannot encode it."""
    if not cv2.imwrite(str(path), image):
        raise ValueError(f"ext: OpenCV could not write {path}")

"""Loading a folder of images for training, calibration, evaluation and scoring.

Every image goes through the daemon's own preprocessing (`preprocess`: crop, convert, resize). Images of any size are
accepted and resized to the requested input size (so a folder of mixed sizes is fine, and so is a model
trained at one size scoring images of another), stretched or padded as `fit` says (with "auto", padded when
their aspects differ, `preprocess.choose_fit`); the result reports how many were resized and the fit used.
Unreadable files are skipped with a warning and counted, never fatal. Files are decoded and resized on up to
`READ_THREADS` threads, and collected in their order, so the result is the one a single thread gives.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal, Sequence, TypeVar

import numpy as np

from .images import decode_image, list_images, read_bytes
from .preprocess import (
    Contrast,
    Fit,
    choose_contrast,
    choose_fit,
    contrast_levels,
    crop,
    resize,
    stretch_contrast,
    to_channels,
)
from .progress import Progress

Channels = Literal[1, 3, "auto"]
Warn = Callable[[str], None]
_log = logging.getLogger(__name__)
READ_THREADS = min(4, os.cpu_count() or 1)  # decoding and resizing release the GIL: files are read in parallel
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Read:
    """One file as a reading thread left it: its bytes, and the prepared image or why there is none."""

    data: bytes  # empty when the file could not be read
    error: str | None  # the warning when the file is skipped
    shape: tuple[int, int] = (0, 0)  # original (height, width)
    aspect: float = 1.0  # width / height of the region used
    out: dict[Fit, np.ndarray] = field(default_factory=dict)  # prepared to the input size, per fit
    one: bool = True  # grayscale
    span: int = 0  # 99th minus 1st percentile grey level (contrast "auto" only)


def _in_order(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], ahead: int) -> Iterator[R]:
    """fn over items on the pool, results in order, at most `ahead` running or waiting (bounded memory)."""
    pending: deque[Future[R]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) > ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


@dataclass
class ImageSet:
    """Images prepared to one size: uint8 (N, H, W) for grayscale or (N, H, W, 3) BGR."""

    folder: Path | None
    paths: list[Path]
    images: np.ndarray
    channels: int
    skipped: list[Path] = field(default_factory=list)  # unreadable files
    resized: int = 0  # images whose size differed from the input size
    sizes: set[tuple[int, int]] = field(default_factory=set)  # distinct original (width, height)
    content_hash: str = ""  # sha256 over relative names and bytes of the images read
    fit: Fit = "stretch"  # how images of another aspect than the input's were fitted to it
    contrast: Contrast = "none"  # whether each image's grey levels were stretched to the full range
    spans: tuple[int, int] = (0, 0)  # with contrast "auto": the smallest and largest 1st-to-99th percentile span

    def __len__(self) -> int:
        return len(self.paths)

    def summary(self) -> str:
        """One line: how many images were read, skipped and resized."""
        parts = [f"{len(self)} images"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} unreadable skipped")
        if self.resized:
            sizes = "mixed sizes" if len(self.sizes) > 1 else "size {}x{}".format(*next(iter(self.sizes)))
            parts.append(f"{self.resized} resized from {sizes}")
        return ", ".join(parts)


def training_folder(folder: Path) -> tuple[Path, str | None]:
    """The folder to train on: DIR/good when it exists (with a note saying so), else DIR."""
    folder = Path(folder)
    good = folder / "good"
    if good.is_dir():
        return good, f"{folder} has a good/ subfolder: training on {good} only"
    return folder, None


def is_gray(image: np.ndarray) -> bool:
    """True for a single-channel image or a colour image whose channels are all equal."""
    if image.ndim == 2:
        return True
    return bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2]))


def load_folder(folder: Path, height: int, width: int, channels: Channels = "auto",
                roi: tuple[int, int, int, int] | None = None, warn: Warn | None = None,
                progress: bool = False, recursive: bool = False, fit: Fit | Literal["auto"] = "stretch",
                contrast: Contrast | Literal["auto"] = "none") -> ImageSet:
    """Read and prepare every image of a folder; raises FileNotFoundError if the folder does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    result = load_files(list_images(folder, recursive=recursive), height, width, channels, roi, warn,
                        progress, root=folder, fit=fit, contrast=contrast)
    result.folder = folder
    return result


def load_files(paths: Sequence[Path], height: int, width: int, channels: Channels = "auto",
               roi: tuple[int, int, int, int] | None = None, warn: Warn | None = None,
               progress: bool = False, root: Path | None = None,
               fit: Fit | Literal["auto"] = "stretch", contrast: Contrast | Literal["auto"] = "none") -> ImageSet:
    """Read and prepare image files in the given order, skipping (and counting) unreadable ones.

    channels "auto" gives 1 when every image is grayscale (or colour with equal channels), else 3. fit "auto"
    prepares each image both ways while reading, and keeps the padded ones when the aspects differ. contrast
    "auto" stretches every image's grey levels (`preprocess.stretch_contrast`) when the images' contrasts differ.
    """
    warn = warn or _log.warning
    digest = hashlib.sha256()
    kept: list[Path] = []
    fits: tuple[Fit, ...] = ("stretch", "pad") if fit == "auto" else (fit,)
    prepared: dict[Fit, list[np.ndarray]] = {f: [] for f in fits}
    aspects: set[float] = set()
    spans: list[int] = []  # 99th minus 1st percentile grey level of each prepared image
    gray: list[bool] = []
    skipped: list[Path] = []
    sizes: set[tuple[int, int]] = set()
    resized = 0

    def read(path: Path) -> _Read:  # runs on the reading threads
        data = read_bytes(path) or b""
        image = decode_image(data)
        if image is None:
            return _Read(data, f"skipping unreadable image {path}")
        try:
            one = is_gray(image) if channels == "auto" else channels == 1
            region = to_channels(crop(image, roi), 1 if one else 3)  # cropped and converted once
            out = {f: resize(region, height, width, f) for f in fits}
        except ValueError as exc:  # region of interest outside this image
            return _Read(data, f"skipping image {path}: {exc}")
        lo, hi = contrast_levels(out[fits[0]]) if contrast == "auto" else (0, 0)
        return _Read(data, None, image.shape[:2], region.shape[1] / region.shape[0], out, one, hi - lo)

    with Progress(len(paths), "reading images", enabled=progress) as bar, \
            ThreadPoolExecutor(READ_THREADS, thread_name_prefix="read") as pool:
        for path, got in zip(paths, _in_order(pool, read, paths, 2 * READ_THREADS), strict=True):
            bar.update()
            if got.error is not None:
                skipped.append(Path(path))
                warn(got.error)
                continue
            h, w = got.shape
            sizes.add((w, h))
            resized += (h, w) != (height, width) if roi is None else (roi[3], roi[2]) != (height, width)
            name = Path(path).relative_to(root).as_posix() if root is not None else Path(path).name
            digest.update(name.encode("utf-8") + b"\0")
            digest.update(got.data)
            kept.append(Path(path))
            for f in fits:
                prepared[f].append(got.out[f])
            aspects.add(got.aspect)
            if contrast == "auto":  # only the choice reads them; stretch_contrast reads its own
                spans.append(got.span)
            gray.append(got.one)
    chosen: Fit = choose_fit(aspects) if fit == "auto" else fit
    kept_images = prepared.pop(chosen)
    prepared.clear()  # the other fit's copies, when both were made
    chosen_contrast: Contrast = choose_contrast(spans) if contrast == "auto" else contrast
    if chosen_contrast == "stretch":
        kept_images = [stretch_contrast(p) for p in kept_images]
    n_channels = (1 if all(gray) else 3) if channels == "auto" else int(channels)
    if n_channels == 3:
        kept_images = [to_channels(p, 3) if g else p for p, g in zip(kept_images, gray, strict=True)]
    shape = (height, width) if n_channels == 1 else (height, width, 3)
    images = np.stack(kept_images) if kept_images else np.zeros((0, *shape), np.uint8)
    return ImageSet(folder=root, paths=kept, images=images, channels=n_channels, skipped=skipped,
                    resized=int(resized), sizes=sizes, content_hash=digest.hexdigest(), fit=chosen,
                    contrast=chosen_contrast, spans=(min(spans), max(spans)) if spans else (0, 0))

"""Finding and reading image files in folders (replay capture, training, evaluation)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm"})
LABELS = ("good", "defect")


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in a folder, sorted by name (hidden files skipped)."""
    pattern = "**/*" if recursive else "*"
    return sorted(
        p for p in Path(folder).glob(pattern)
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def list_labelled(folder: Path) -> list[tuple[Path, str | None]]:
    """Images of a folder with their labels: from good/ and defect/ when it has them, else unlabelled."""
    folder = Path(folder)
    if any((folder / label).is_dir() for label in LABELS):
        items = [(p, label) for label in LABELS for p in list_images(folder / label, recursive=True)]
        return sorted(items, key=lambda item: item[0].name)
    return [(p, None) for p in list_images(folder)]


def read_bytes(path: Path) -> bytes | None:
    """A file's bytes; None when it is not a readable file."""
    try:
        return Path(path).read_bytes() if Path(path).is_file() else None
    except OSError:
        return None


def decode_image(data: bytes | None) -> np.ndarray | None:
    """Decode an image file's bytes to uint8 gray (H, W) or BGR (H, W, 3); None when they are not an image."""
    if not data:
        return None
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        return None
    if image.dtype != np.uint8:
        image = (image // 256).astype(np.uint8) if image.dtype == np.uint16 else np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return image


def read_image(path: Path) -> np.ndarray | None:
    """Read an image as uint8 gray (H, W) or BGR (H, W, 3); None when unreadable."""
    return decode_image(read_bytes(path))

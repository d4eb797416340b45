"""Camera back-ends, keyed on the config's source `type`."""

from __future__ import annotations

from typing import Callable

from ..config import OpenCVSource, ReplaySource, SyntheticSource
from ..types import FrameSource
from .opencv import OpenCVCamera
from .replay import ReplayCamera
from .synthetic import SyntheticCamera

SOURCES: dict[str, Callable[..., FrameSource]] = {
    "synthetic": SyntheticCamera,
    "replay": ReplayCamera,
    "opencv": OpenCVCamera,
}


def make_source(cfg: SyntheticSource | ReplaySource | OpenCVSource) -> FrameSource:
    """Build the back-end for a source config (opens nothing)."""
    return SOURCES[cfg.type](cfg)

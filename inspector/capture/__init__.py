"""Camera back-ends, keyed on the config's source `type`."""

from __future__ import annotations

from typing import Any, Callable

from ..types import FrameSource
from .opencv import OpenCVCamera
from .replay import ReplayCamera
from .synthetic import SyntheticCamera


def _aravis(cfg: Any) -> FrameSource:
    from .aravis import AravisCamera  # needs PyGObject and Aravis: imported only when configured

    return AravisCamera(cfg)


def _pylon(cfg: Any) -> FrameSource:
    from .pylon import PylonCamera  # needs pypylon: imported only when configured

    return PylonCamera(cfg)


SOURCES: dict[str, Callable[..., FrameSource]] = {
    "synthetic": SyntheticCamera,
    "replay": ReplayCamera,
    "opencv": OpenCVCamera,
    "aravis": _aravis,
    "pylon": _pylon,
}


def make_source(cfg: Any) -> FrameSource:
    """Build the back-end for a source config (opens nothing)."""
    return SOURCES[cfg.type](cfg)

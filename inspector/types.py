"""The records that flow down the line (Frame, Verdict) and the Protocols its parts implement."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

ACCEPT = "accept"
REJECT = "reject"

# Reasons a verdict carries.
OK = "ok"  # inspected, score below threshold
ANOMALY = "anomaly"  # inspected, score at or above threshold
NOT_INSPECTED = "not_inspected"  # dropped by the buffer or left over at shutdown
DEADLINE = "deadline"  # could not be published within deadline_ms of capture
ERROR = "error"  # inference failed for this frame


@dataclass(slots=True)
class Frame:
    """One captured image and where it came from."""

    camera: str
    seq: int  # per-camera sequence number, from 0, never reused
    image: np.ndarray  # uint8 (H, W) or (H, W, 3) BGR
    t_capture: float  # time.monotonic() at capture
    wall_time: float  # time.time() at capture (Unix seconds)
    part_id: int | None = None  # trigger / encoder count where the source gives one
    label: str | None = None  # known label ("good" / "defect") where the source knows it
    camera_time: int | None = None  # the camera's own timestamp of the frame (its clock ticks), where it gives one


@dataclass(slots=True, frozen=True)
class Evidence:
    """What a verdict is archived with: the frame as captured and, when it was inspected, its anomaly heatmap."""

    image: np.ndarray  # uint8 (H, W) or (H, W, 3) BGR, the frame as captured (before ROI and resizing)
    heatmap: np.ndarray | None  # float32 (h, w) anomaly map at the model's input size (inside the ROI); None
    # when the part was not inspected


@dataclass(slots=True)
class Verdict:
    """The decision for one frame, as published."""

    camera: str
    seq: int
    part_id: int | None
    t_capture: float
    wall_time: float
    verdict: str  # ACCEPT or REJECT
    reason: str  # OK, ANOMALY, NOT_INSPECTED, DEADLINE, ERROR
    score: float | None
    threshold: float | None
    model: str | None
    label: str | None
    evidence: Evidence | None = None  # attached only when the archive wants this verdict (see Archive.wants)
    camera_time: int | None = None  # the camera's own timestamp of the frame, where it gives one


@dataclass(slots=True)
class Grab:
    """What a source returns for one frame; the capture thread adds seq and timestamps."""

    image: np.ndarray
    part_id: int | None = None
    label: str | None = None
    camera_time: int | None = None  # the camera's timestamp: ns through Aravis, the camera's ticks through pylon


class FrameLost(Exception):
    """A frame the camera sent arrived unusable (incomplete, corrupt): a part that gets the fail-safe verdict."""

    def __init__(self, message: str, part_id: int | None = None, reason: str = "incomplete") -> None:
        super().__init__(message)
        self.part_id = part_id  # the part id the frame would have had
        self.reason = reason  # the drop reason counted in inspector_frames_dropped


class SourceClosed(Exception):
    """A finite source (a replay run once) has delivered all its frames."""


class NoFrame(Exception):
    """The camera is healthy but no frame came within its timeout (a triggered camera on an idle line)."""


@runtime_checkable
class FrameSource(Protocol):
    """A camera back-end: opened, read frame by frame, closed; may be reopened after a failure."""

    interval_s: float  # pacing between frames the capture thread keeps (0: as fast as read returns)

    def open(self) -> None:
        """Connect to the camera; raises OSError (or a subclass) when it cannot."""

    def read(self) -> Grab:
        """Return the next frame; raises OSError on failure, NoFrame when a healthy triggered camera saw no part
        within its timeout, FrameLost when a frame arrived unusable, SourceClosed at the end of a finite source."""

    def close(self) -> None:
        """Release the camera; safe to call twice or after a failed open."""

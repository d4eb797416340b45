"""The bounded ring between a camera and its worker. `put` never blocks the camera."""

from __future__ import annotations

import threading
import time

from .types import Frame


class FrameRing:
    """A fixed-size ring of frames for one camera; when full, the policy picks the frame that is dropped.

    Rings that feed one worker share its Condition, so the worker sleeps until any of them has a frame.
    """

    def __init__(self, camera: str, capacity: int, policy: str, cond: threading.Condition) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if policy not in ("drop_oldest", "drop_newest"):
            raise ValueError(f"unknown drop policy {policy!r}")
        self.camera = camera
        self.capacity = capacity
        self.policy = policy
        self.cond = cond
        self._slots: list[Frame | None] = [None] * capacity  # preallocated; never grows
        self._head = 0
        self._len = 0

    def put(self, frame: Frame) -> Frame | None:
        """Add a frame; return the frame dropped to make room (possibly this one), or None."""
        with self.cond:
            dropped: Frame | None = None
            if self._len == self.capacity:
                if self.policy == "drop_newest":
                    return frame
                dropped = self._slots[self._head]
                self._slots[self._head] = None
                self._head = (self._head + 1) % self.capacity
                self._len -= 1
            self._slots[(self._head + self._len) % self.capacity] = frame
            self._len += 1
            self.cond.notify()
            return dropped

    def pop(self) -> Frame | None:
        """Remove and return the oldest frame, or None; the caller holds `cond`."""
        if self._len == 0:
            return None
        frame = self._slots[self._head]
        self._slots[self._head] = None
        self._head = (self._head + 1) % self.capacity
        self._len -= 1
        return frame

    def __len__(self) -> int:
        return self._len

    def drain(self) -> list[Frame]:
        """Remove and return every frame held, oldest first."""
        with self.cond:
            out = []
            while (frame := self.pop()) is not None:
                out.append(frame)
            return out


def collect(rings: list[FrameRing], cond: threading.Condition, max_batch: int, max_wait_s: float,
            idle_timeout_s: float, start: int = 0) -> list[Frame]:
    """Take up to max_batch frames, one camera at a time in turn, waiting at most max_wait_s after the first.

    Returns [] when no frame arrived within idle_timeout_s, so the caller can check its stop flag.
    """
    batch: list[Frame] = []
    n = len(rings)
    with cond:
        if not any(len(r) for r in rings):
            cond.wait(idle_timeout_s)
        fill_by: float | None = None
        while True:
            took = True
            while took and len(batch) < max_batch:
                took = False
                for i in range(n):
                    frame = rings[(start + i) % n].pop()
                    if frame is not None:
                        batch.append(frame)
                        took = True
                        if len(batch) >= max_batch:
                            break
            if not batch or len(batch) >= max_batch:
                return batch
            now = time.monotonic()
            if fill_by is None:
                fill_by = now + max_wait_s
            if now >= fill_by:
                return batch
            cond.wait(fill_by - now)

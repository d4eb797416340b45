"""The capture thread of one camera: open, read, stamp, put into the ring; reconnect with back-off, forever."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np

from ..buffer import FrameRing
from ..config import CameraConfig
from ..types import Frame, FrameLost, FrameSource, NoFrame, SourceClosed

UP, DOWN, STALLED, FINISHED, STARTING = "up", "down", "stalled", "finished", "starting"


class Camera:
    """Runs a camera's capture thread; a stalled thread is abandoned and replaced by a fresh one.

    `put` into the ring never blocks, so a slow worker never slows the camera; a frame dropped by the ring is
    handed to `on_drop` so that it gets a verdict. So is a frame the source reports lost (FrameLost: it arrived
    incomplete or corrupt): it is numbered like any other and dropped with the source's reason, never inspected.
    """

    def __init__(self, cfg: CameraConfig, make_source: Callable[[], FrameSource], ring: FrameRing,
                 on_drop: Callable[[Frame, str], None], on_state: Callable[[str, str, str], None],
                 captured: Any, reconnects: Any, stop: threading.Event) -> None:
        self.cfg = cfg
        self.state = STARTING
        self.last_progress = time.monotonic()
        self._make_source = make_source
        self._ring = ring
        self._on_drop = on_drop
        self._on_state = on_state
        self._captured = captured  # prometheus counter child
        self._reconnects = reconnects
        self._stop = stop
        self._lock = threading.Lock()
        self._seq = 0
        self._gen = 0
        self._threads: list[threading.Thread] = []

    @property
    def frames(self) -> int:
        """Frames captured so far (the next seq)."""
        return self._seq

    def start(self) -> None:
        """Start the capture thread."""
        self._spawn()

    def check_stall(self, now: float) -> bool:
        """Replace the capture thread if it is stuck; True when it did.

        Stuck: streaming but no frame for stall_timeout_s, or inside open() (which stamps no progress) for
        stall_timeout_s beyond the longest back-off wait.
        """
        if self.state == FINISHED:
            return False
        limit = self.cfg.stall_timeout_s + (0.0 if self.state == UP else self.cfg.reconnect_max_s)
        if now - self.last_progress <= limit:
            return False
        self._set_state(self._gen, STALLED, f"no frame for {now - self.last_progress:.1f} s")
        self._reconnects.inc()
        self._spawn()
        return True

    def alive(self) -> bool:
        """True while the capture thread runs (retrying a camera that is down counts), or the source finished."""
        return self.state == FINISHED or bool(self._threads and self._threads[-1].is_alive())

    def join(self, timeout: float) -> bool:
        """Wait for the current capture thread to end; True when it did (abandoned ones are daemons)."""
        if self._threads:
            self._threads[-1].join(timeout)
            return not self._threads[-1].is_alive()
        return True

    def _spawn(self) -> None:
        with self._lock:
            self._gen += 1
            gen = self._gen
        self.last_progress = time.monotonic()
        thread = threading.Thread(target=self._run, args=(gen, self._make_source()), daemon=True,
                                  name=f"capture-{self.cfg.id}-{gen}")
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _current(self, gen: int) -> bool:
        return gen == self._gen and not self._stop.is_set()

    def _set_state(self, gen: int, state: str, detail: str = "") -> None:
        if gen == self._gen and state != self.state:
            old, self.state = self.state, state
            self._on_state(old, state, detail)

    def _run(self, gen: int, source: FrameSource) -> None:
        backoff = self.cfg.reconnect_min_s
        first = True
        while self._current(gen):
            if not first:
                self._reconnects.inc()
            first = False
            try:
                source.open()
            except Exception as exc:  # any back-end failure: keep retrying
                self._set_state(gen, DOWN, f"open failed: {exc}")
                self.last_progress = time.monotonic()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.cfg.reconnect_max_s)
                continue
            backoff = self.cfg.reconnect_min_s
            self._set_state(gen, UP, "opened")
            self.last_progress = time.monotonic()
            try:
                self._stream(gen, source)
            except SourceClosed:
                self._set_state(gen, FINISHED, "source finished")
                return
            except Exception as exc:
                self._set_state(gen, DOWN, f"read failed: {exc}")
                self._stop.wait(backoff)
            finally:
                source.close()

    def _stream(self, gen: int, source: FrameSource) -> None:
        interval = source.interval_s
        due = time.monotonic()
        while self._current(gen):
            if interval:
                delay = due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                due = max(due + interval, time.monotonic() - interval)
            try:
                grab = source.read()
            except NoFrame:  # idle line: the driver answered, so this is progress, not a stall
                self.last_progress = time.monotonic()
                continue
            except FrameLost as lost:  # a part the camera saw but that cannot be inspected: fail-safe verdict
                frame = self._number(gen, _LOST, lost.part_id)
                if frame is None:
                    return
                self._captured.inc()  # every part the camera saw is counted, and gets exactly one verdict
                self._on_drop(frame, lost.reason)
                continue
            frame = self._number(gen, grab.image, grab.part_id, grab.label, grab.camera_time)
            if frame is None:
                return  # abandoned as stalled while blocked in read: this frame is not ours to number
            self._captured.inc()
            dropped = self._ring.put(frame)
            if dropped is not None:
                self._on_drop(dropped, "buffer_full")

    def _number(self, gen: int, image: np.ndarray, part_id: int | None, label: str | None = None,
                camera_time: int | None = None) -> Frame | None:
        """The next Frame of this camera (seq, host timestamps), or None when this thread has been abandoned."""
        now = time.monotonic()
        with self._lock:
            if gen != self._gen:
                return None
            seq = self._seq
            self._seq += 1
        self.last_progress = now
        return Frame(self.cfg.id, seq, image, now, time.time(), part_id, label, camera_time)


_LOST = np.zeros((0, 0), np.uint8)  # the image of a frame that arrived unusable: there is none

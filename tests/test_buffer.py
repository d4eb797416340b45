"""The ring buffer: bounded, never blocks, drops by policy and says which frame it dropped; batching."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from inspector.buffer import FrameRing, collect
from inspector.types import Frame

IMG = np.zeros((2, 2), np.uint8)


def frame(cam: str, seq: int) -> Frame:
    return Frame(cam, seq, IMG, time.monotonic(), time.time())


def test_fifo_until_full_then_drop_oldest() -> None:
    ring = FrameRing("a", 3, "drop_oldest", threading.Condition())
    assert [ring.put(frame("a", i)) for i in range(3)] == [None, None, None]
    dropped = ring.put(frame("a", 3))
    assert dropped is not None and dropped.seq == 0
    assert len(ring) == 3
    assert [f.seq for f in ring.drain()] == [1, 2, 3]
    assert len(ring) == 0


def test_drop_newest_keeps_what_is_held() -> None:
    ring = FrameRing("a", 2, "drop_newest", threading.Condition())
    ring.put(frame("a", 0))
    ring.put(frame("a", 1))
    dropped = ring.put(frame("a", 2))
    assert dropped is not None and dropped.seq == 2
    assert [f.seq for f in ring.drain()] == [0, 1]


def test_put_never_blocks_and_memory_is_bounded() -> None:
    ring = FrameRing("a", 4, "drop_oldest", threading.Condition())
    t0 = time.perf_counter()
    drops = sum(ring.put(frame("a", i)) is not None for i in range(10_000))
    assert drops == 10_000 - 4
    assert len(ring._slots) == 4  # preallocated, never grows
    assert time.perf_counter() - t0 < 5


def test_collect_takes_cameras_in_turn_up_to_max_batch() -> None:
    cond = threading.Condition()
    a, b = FrameRing("a", 8, "drop_oldest", cond), FrameRing("b", 8, "drop_oldest", cond)
    for i in range(4):
        a.put(frame("a", i))
        b.put(frame("b", i))
    batch = collect([a, b], cond, 6, 0.0, 0.1)
    assert [(f.camera, f.seq) for f in batch] == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]


def test_collect_waits_at_most_max_wait_after_first_frame() -> None:
    cond = threading.Condition()
    ring = FrameRing("a", 8, "drop_oldest", cond)
    ring.put(frame("a", 0))
    t0 = time.monotonic()
    batch = collect([ring], cond, 8, 0.05, 1.0)
    waited = time.monotonic() - t0
    assert len(batch) == 1 and 0.04 <= waited < 0.5


def test_collect_wakes_on_put_from_another_thread() -> None:
    cond = threading.Condition()
    ring = FrameRing("a", 8, "drop_oldest", cond)
    threading.Timer(0.05, lambda: [ring.put(frame("a", i)) for i in range(2)]).start()
    batch = collect([ring], cond, 2, 0.5, 2.0)
    assert [f.seq for f in batch] == [0, 1]


def test_collect_returns_empty_after_idle_timeout() -> None:
    cond = threading.Condition()
    assert collect([FrameRing("a", 2, "drop_oldest", cond)], cond, 4, 0.0, 0.05) == []


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        FrameRing("a", 0, "drop_oldest", threading.Condition())
    with pytest.raises(ValueError):
        FrameRing("a", 2, "random", threading.Condition())


def test_burst_log_logs_first_then_once_per_interval_with_counts() -> None:
    """Frame-rate events (drops, bad ROIs, failing models) cost one log line per camera per interval."""
    from structlog.testing import capture_logs

    from inspector.logs import BurstLog, get_logger

    with capture_logs() as lines:
        burst = BurstLog(get_logger("test"), interval_s=0.2)
        for _ in range(50):
            burst("warning", "frames dropped", "cam1", reason="buffer_full")
        burst("warning", "frames dropped", "cam2", reason="buffer_full")
        first = [(e["event"], e["camera"], e["count"], e["log_level"]) for e in lines]
        time.sleep(0.25)
        burst("warning", "frames dropped", "cam1", reason="buffer_full")
    assert first == [("frames dropped", "cam1", 1, "warning"), ("frames dropped", "cam2", 1, "warning")]
    assert lines[-1]["count"] == 50 and lines[-1]["reason"] == "buffer_full"  # 49 held back + this one

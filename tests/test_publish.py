"""The wire format, heartbeats, and a publisher that never blocks on slow or absent subscribers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import zmq

from inspector.config import PublisherConfig
from inspector.logs import get_logger
from inspector.publish import MAX_RAW_PENDING, Publisher, heartbeat_payload, verdict_payload, verdict_topic
from inspector.types import Evidence, Verdict

from .conftest import make_model, run_cli, write_config


def verdict(seq: int, t_capture: float | None = None, reason: str = "ok") -> Verdict:
    return Verdict("cam1", seq, seq + 100, time.monotonic() if t_capture is None else t_capture, 1.8e9,
                   "accept", reason, 0.01, 0.02, "demo/abc", "good")


def test_wire_format_fields() -> None:
    v = verdict(7)
    assert verdict_topic(v) == b"accept.cam1"
    payload = json.loads(verdict_payload(v, 12.3456))
    assert payload == {"schema": 1, "camera": "cam1", "seq": 7, "part_id": 107, "captured_at": 1.8e9,
                       "verdict": "accept", "reason": "ok", "score": 0.01, "threshold": 0.02, "latency_ms": 12.346,
                       "model": "demo/abc", "label": "good", "camera_time": None}
    beat = json.loads(heartbeat_payload(3.5, {"cam1": 7, "cam2": None}, {"cam1": True}))
    assert beat["uptime_s"] == 3.5 and beat["schema"] == 1
    assert beat["cameras"] == {"cam1": {"last_seq": 7, "up": True}, "cam2": {"last_seq": None, "up": False}}


def make_publisher(endpoint: str, deadline_ms: float = 1000.0, sndhwm: int = 10) -> tuple[Publisher, list]:
    recorded: list = []
    pub = Publisher(PublisherConfig(endpoint=endpoint, sndhwm=sndhwm, heartbeat_s=0.05, linger_ms=0), ["cam1"],
                    deadline_ms, "reject", lambda v, lat: recorded.append((v, lat)), lambda: {"cam1": True},
                    get_logger("test"), time.monotonic())
    pub.bind()
    return pub, recorded


def test_slow_subscriber_never_blocks(tmp_path: Path) -> None:
    """A subscriber that never reads, with tiny high-water marks: 20 000 verdicts still go through at once."""
    pub, recorded = make_publisher(f"ipc://{tmp_path}/p.ipc")
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 1)
    sub.setsockopt_string(zmq.SUBSCRIBE, "")
    sub.connect(f"ipc://{tmp_path}/p.ipc")
    assert pub.wait_for_subscribers(1, 5.0, __import__("threading").Event()) == 1
    pub.start()
    t0 = time.monotonic()
    for i in range(0, 20_000, 100):
        pub.submit([verdict(s) for s in range(i, i + 100)])
    while len(recorded) < 20_000 and time.monotonic() - t0 < 20:
        time.sleep(0.01)
    elapsed = time.monotonic() - t0
    pub.close(2.0)
    sub.close(0)
    assert len(recorded) == 20_000
    assert elapsed < 15, f"publishing to a stuck subscriber took {elapsed:.1f} s"


def test_pending_verdicts_are_bounded_and_overflow_counted(tmp_path: Path) -> None:
    """If the publisher falls behind, at most max_pending verdicts wait; the rest are handed to `overflow`."""
    lost: list = []
    pub = Publisher(PublisherConfig(endpoint=f"ipc://{tmp_path}/p.ipc", max_pending=100), ["cam1"], 1000.0,
                    "reject", lambda v, lat: None, lambda: {}, get_logger("test"), time.monotonic(), lost.append)
    pub.bind()
    for i in range(0, 1000, 30):
        pub.submit([verdict(s) for s in range(i, min(i + 30, 1000))])
    assert pub._pending == 100 and len(lost) == 900
    assert [v.seq for v in lost][:3] == [100, 101, 102]
    pub.start()
    end = time.monotonic() + 5
    while pub._pending and time.monotonic() < end:
        time.sleep(0.01)
    assert pub._pending == 0
    pub.submit([verdict(1000)])
    assert len(lost) == 900
    assert pub.close(2.0)


def test_late_verdict_becomes_fail_safe_deadline(tmp_path: Path) -> None:
    pub, recorded = make_publisher(f"ipc://{tmp_path}/p.ipc", deadline_ms=50)
    pub.start()
    pub.submit([verdict(0, t_capture=time.monotonic() - 1.0), verdict(1)])
    end = time.monotonic() + 5
    while len(recorded) < 2 and time.monotonic() < end:
        time.sleep(0.01)
    pub.close(2.0)
    late, fresh = recorded[0][0], recorded[1][0]
    assert (late.verdict, late.reason, late.score) == ("reject", "deadline", None)
    assert (fresh.verdict, fresh.reason) == ("accept", "ok")


def test_listen_cli_prints_verdicts(tmp_path: Path, line_factory) -> None:
    """`inspector listen` against a running daemon prints verdict lines and stops after --count."""
    model = make_model(tmp_path / "m")
    cams = (f'[[cameras]]\nid = "cam1"\nmodel = "{model}"\n'
            'source = { type = "synthetic", fps = 30, width = 64, height = 64, defect_rate = 0.5 }\n')
    cfg = write_config(tmp_path / "c.toml", cams, publisher={"endpoint": f"ipc://{tmp_path}/pub.ipc",
                       "wait_for_subscribers": 1}, metrics={"enabled": False})
    line = line_factory(cfg).start()
    out = run_cli("listen", "--endpoint", f"ipc://{tmp_path}/pub.ipc", "--count", "5", "--timeout", "30",
                  "--no-heartbeat")
    line.stop()
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 5
    assert all(ln.split()[0] in ("ACCEPT", "REJECT") and "cam1 seq=" in ln and "score=" in ln for ln in lines)


def test_on_published_gets_the_message_of_verdicts_with_evidence(tmp_path: Path) -> None:
    """The archive hook: called after sending, with the payload as sent (a late one as its deadline reject)."""
    handed: list = []
    pub = Publisher(PublisherConfig(endpoint=f"ipc://{tmp_path}/p.ipc", heartbeat_s=0.05, linger_ms=0), ["cam1"],
                    50.0, "reject", lambda v, lat: None, lambda: {}, get_logger("test"), time.monotonic(),
                    on_published=lambda v, msg: handed.append((v.seq, msg)))
    pub.bind()
    pub.start()
    image = np.zeros((4, 4), np.uint8)
    late = verdict(1, t_capture=time.monotonic() - 1.0)
    late.evidence = Evidence(image, None)
    fresh = verdict(2)
    fresh.evidence = Evidence(image, None)
    pub.submit([verdict(0), late, fresh])
    end = time.monotonic() + 5
    while len(handed) < 2 and time.monotonic() < end:
        time.sleep(0.01)
    pub.close(2.0)
    assert [seq for seq, _ in handed] == [1, 2]
    assert (handed[0][1]["verdict"], handed[0][1]["reason"], handed[0][1]["score"]) == ("reject", "deadline", None)
    assert handed[1][1] == json.loads(verdict_payload(fresh, handed[1][1]["latency_ms"]))


def test_submit_raw_sends_on_the_publisher_thread_and_is_bounded(tmp_path: Path) -> None:
    """Image messages reach an `image.` subscriber and never a `reject.` one; past MAX_RAW_PENDING, or after
    close, submit_raw refuses without blocking."""
    pub, _ = make_publisher(f"ipc://{tmp_path}/p.ipc", sndhwm=1000)
    ctx = zmq.Context.instance()
    subs = {}
    for prefix in ("image.", "reject."):
        subs[prefix] = ctx.socket(zmq.SUB)
        subs[prefix].setsockopt_string(zmq.SUBSCRIBE, prefix)
        subs[prefix].connect(f"ipc://{tmp_path}/p.ipc")
    assert pub.wait_for_subscribers(2, 5.0, __import__("threading").Event()) == 2
    taken = [pub.submit_raw([b"image.reject.cam1", b"{}", b"frame%d" % i, b""]) for i in range(MAX_RAW_PENDING + 5)]
    assert taken == [True] * MAX_RAW_PENDING + [False] * 5  # the thread is not started yet: nothing drains
    pub.start()
    got = []
    while len(got) < MAX_RAW_PENDING and subs["image."].poll(5000):
        got.append(subs["image."].recv_multipart())
    assert got[0] == [b"image.reject.cam1", b"{}", b"frame0", b""] and len(got) == MAX_RAW_PENDING
    assert pub.submit_raw([b"image.reject.cam1", b"{}", b"again", b""])
    assert subs["image."].poll(5000) and subs["image."].recv_multipart()[2] == b"again"
    pub.close(2.0)
    assert not pub.submit_raw([b"image.reject.cam1", b"{}", b"late", b""])
    assert not subs["reject."].poll(100)
    for sub in subs.values():
        sub.close(0)

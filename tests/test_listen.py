"""`inspector listen`: gaps, silence, model changes, and `--save DIR` writing the images a daemon publishes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import zmq

from inspector.listen import Monitor

from .conftest import REPO, camera, make_model, sections, write_config


def v(seq: int, cam: str = "cam1", model: str = "m/1") -> dict:
    return {"camera": cam, "seq": seq, "model": model}


def beat(last_seq: int | None, sent_at: float = 1000.0, uptime: float = 10.0) -> dict:
    return {"sent_at": sent_at, "uptime_s": uptime, "cameras": {"cam1": {"last_seq": last_seq, "up": True}}}


def test_monitor_reports_a_gap_only_after_the_grace() -> None:
    """Out-of-order arrivals within the grace are no gap; what stays missing is reported once, as ranges."""
    m = Monitor(0.0, gap_grace_s=1.0, heartbeat_timeout_s=100)
    for seq in (5, 6, 9, 8):  # 7 lost; 8 arrives after 9
        assert m.verdict(v(seq), 0.1) == []
    assert m.tick(0.5) == []
    assert m.tick(1.2) == [{"event": "gap", "camera": "cam1", "first": 7, "last": 7, "count": 1}]
    assert m.tick(5.0) == []
    assert m.verdict(v(7), 5.1) == [{"event": "late", "camera": "cam1", "seq": 7}]
    assert m.heartbeat(beat(12), 6.0) == []  # 10..12 published but not received
    assert m.verdict(v(10), 6.1) == []
    assert m.tick(7.5) == [{"event": "gap", "camera": "cam1", "first": 11, "last": 12, "count": 2}]


def test_monitor_heartbeat_silence_model_change_and_restart() -> None:
    m = Monitor(0.0, heartbeat_timeout_s=2.0)
    assert m.tick(1.0) == []
    assert m.tick(2.5) == [{"event": "heartbeat_lost", "silent_s": 2.5}]  # none since start
    assert m.tick(4.0) == []  # said once
    assert m.heartbeat(beat(None), 5.0) == [{"event": "heartbeat_back", "silent_s": 5.0}]
    assert m.verdict(v(0), 5.1) == []
    assert m.verdict(v(1, model="m/2"), 5.2) == [{"event": "model_changed", "camera": "cam1", "old": "m/1",
                                                  "new": "m/2"}]
    assert m.heartbeat(beat(1, sent_at=1100.0, uptime=0.5), 6.0) == [{"event": "restarted", "uptime_s": 0.5}]
    assert m.verdict(v(2, model="m/2"), 6.1) == []
    assert m.tick(20.0) == [{"event": "heartbeat_lost", "silent_s": 14.0}]  # and no gap: seqs began again at 0


def test_no_gap_tracking_without_every_verdict() -> None:
    """Subscribed to rejects only, a seq not received may be an accept: no gap is claimed."""
    m = Monitor(0.0, gap_grace_s=0.1, track_gaps=False)
    m.verdict(v(1), 0.0)
    m.verdict(v(5), 0.0)
    assert not [e for e in m.tick(1.0) if e["event"] == "gap"]


def test_listen_cli_prints_gaps_silence_and_model_changes(tmp_path: Path) -> None:
    """Against a real publisher socket: the lines an operator sees."""
    endpoint = f"ipc://{tmp_path}/pub.ipc"
    pub = zmq.Context.instance().socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(endpoint)
    proc = subprocess.Popen([sys.executable, "-m", "inspector", "listen", "--endpoint", endpoint, "--timeout", "6",
                             "--gap-grace", "0.3", "--heartbeat-timeout", "1.0", "--no-heartbeat"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        subscribed = 0
        while subscribed < 3:  # accept., reject., heartbeat
            assert pub.poll(10_000), "listen did not subscribe"
            subscribed += pub.recv()[:1] == b"\x01"
        t0 = time.time()

        def send(topic: str, payload: dict) -> None:
            pub.send_multipart([topic.encode(), json.dumps(payload).encode()])

        def verdict(seq: int, model: str = "m/1") -> None:
            send("accept.cam1", {"camera": "cam1", "seq": seq, "part_id": seq, "captured_at": t0, "verdict": "accept",
                                 "reason": "ok", "score": 0.1, "threshold": 0.2, "latency_ms": 1.0, "model": model,
                                 "label": None})

        send("heartbeat", beat(None, sent_at=t0, uptime=1.0))
        verdict(0)
        verdict(2)
        verdict(3, model="m/2")
        time.sleep(2.0)  # silence: heartbeat lost
        send("heartbeat", beat(3, sent_at=time.time(), uptime=1.0 + time.time() - t0))
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.close(0)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert sum(ln.startswith("ACCEPT cam1 seq=") for ln in lines) == 3
    assert "GAP    cam1 seq=1 never received (1 message(s) lost)" in lines
    assert "MODEL  cam1 m/1 -> m/2 (the daemon reloaded its model)" in lines
    beats = [ln.split(":")[0].split(" after")[0] for ln in lines if ln.startswith("HEARTBEAT ")]
    assert beats[:2] == ["HEARTBEAT LOST", "HEARTBEAT BACK"]  # said once each (then lost again: no more beats)
    assert beats[2:] in ([], ["HEARTBEAT LOST"])
    assert not any("heartbeat uptime" in ln for ln in lines)  # --no-heartbeat


def test_listen_save_writes_the_archive_layout_from_a_remote_daemon(tmp_path: Path, line_factory) -> None:
    """publisher.publish_images with the archive off on the daemon: `listen --save DIR` writes frames, heatmaps
    and messages in the archive's layout, keeping --max-items; the daemon writes nothing itself."""
    model = make_model(tmp_path / "m", threshold=0.0)  # every part a reject (anomaly), with a heatmap
    cams = camera("cam1", model, '{ type = "synthetic", fps = 40, width = 64, height = 64 }')
    base = sections(tmp_path, publisher={"publish_images": True, "wait_for_subscribers": 6})
    cfg = write_config(tmp_path / "c.toml", cams, archive={"enabled": False, "directory": "daemon-archive"}, **base)
    line = line_factory(cfg)  # waits for its SUB (1) and listen (accept., reject., heartbeat, image.x2)
    line.sub.setsockopt_string(zmq.UNSUBSCRIBE, "")
    line.sub.setsockopt_string(zmq.SUBSCRIBE, "reject.")  # an actuator: gets no image messages
    save = tmp_path / "saved"
    proc = subprocess.Popen([sys.executable, "-m", "inspector", "listen", "--endpoint", line.config.publisher.endpoint,
                             "--save", str(save), "--max-items", "5", "--count", "40", "--timeout", "60",
                             "--no-heartbeat"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    line.start()
    out, err = proc.communicate(timeout=90)
    parts = []
    end = time.monotonic() + 1.0
    while time.monotonic() < end:  # what the reject. subscriber got meanwhile (images were flowing)
        if line.sub.poll(100):
            parts.append(len(line.sub.recv_multipart()))
    line.stop()
    assert proc.returncode == 0, err
    assert parts and set(parts) == {2}  # the reject. subscriber never got the 4-part image messages
    assert sum(ln.startswith("SAVED  cam1 seq=") for ln in out.splitlines()) >= 5
    entries = sorted(save.glob("*/cam1/*.json"))
    assert len(entries) == 5  # --max-items
    for entry in entries:
        msg = json.loads(entry.read_text())
        assert entry.name == f"{msg['seq']}_reject_anomaly.json" and msg["verdict"] == "reject"
        frame = cv2.imread(str(entry.with_suffix(".png")), cv2.IMREAD_UNCHANGED)
        heat = cv2.imread(str(entry.with_name(entry.stem + "_heatmap.png")), cv2.IMREAD_UNCHANGED)
        assert frame.shape == (64, 64) and heat.shape == (64, 64, 3)
    assert not (tmp_path / "daemon-archive").exists()

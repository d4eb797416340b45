"""examples/actuator.py, the reference reject actuator, against a real daemon and a hand-made publisher."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import zmq

from .conftest import REPO, camera, make_model, write_config

ACTUATOR = REPO / "examples" / "actuator.py"


class Proc:
    """A subprocess whose stdout lines are collected, with the time each arrived, by a reader thread."""

    def __init__(self, *args: str) -> None:
        self.p = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, cwd=REPO)
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.put((time.monotonic(), line.rstrip("\n")))

    def wait_for_line(self, text: str, timeout: float) -> str:
        """Wait for a line containing text; the line."""
        self.wait_for(text, timeout)
        return self.seen[-1]

    def wait_for(self, text: str, timeout: float) -> float:
        """Wait for a line containing text; the time it arrived."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                at, line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            self.seen.append(line)
            if text in line:
                return at
        raise AssertionError(f"no line with {text!r} in {timeout} s; got:\n" + "\n".join(self.seen[-30:]))

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def test_fires_rejects_and_goes_safe_when_the_daemon_is_killed(tmp_path: Path) -> None:
    """Rejects fire; SIGKILL on the daemon puts the actuator in the safe state within its heartbeat timeout;
    a restarted daemon's heartbeats take it out again."""
    model = make_model(tmp_path / "m", threshold=0.0)  # every inspected part is a reject
    endpoint = f"ipc://{tmp_path}/pub.ipc"
    cfg = write_config(tmp_path / "c.toml", camera("cam1", model, '{ type = "synthetic", fps = 20, width = 64, '
                                                   'height = 64 }'),
                       publisher={"endpoint": endpoint, "heartbeat_s": 0.2, "wait_for_subscribers": 3},
                       metrics={"enabled": False}, logging={"format": "json", "level": "warning"})
    actuator = Proc(str(ACTUATOR), "--endpoint", endpoint, "--heartbeat-timeout", "1.0", "--delay", "0.05")
    daemon = Proc("-m", "inspector", "run", "--config", str(cfg))
    try:
        actuator.wait_for("actuator subscribed", 10)
        for _ in range(5):
            actuator.wait_for("FIRE part_id=", 60)
        fired = [ln for ln in actuator.seen if "FIRE" in ln]
        assert all("camera=cam1" in ln and "reason=anomaly" in ln for ln in fired), fired
        assert not any("LOST" in ln for ln in actuator.seen), actuator.seen
        # started before the daemon, it was safe until the first heartbeat; now it is not
        safe_lines = [ln for ln in actuator.seen if "SAFE STATE" in ln]
        assert all("SAFE STATE LEFT" in ln for ln in safe_lines[1::2]) and len(safe_lines) % 2 == 0, safe_lines
        killed = time.monotonic()
        daemon.p.send_signal(signal.SIGKILL)
        daemon.p.wait(5)
        entered = actuator.wait_for("SAFE STATE: no heartbeat", 5) - killed
        assert 0.7 < entered < 2.0, f"safe state {entered:.2f} s after the kill (timeout 1.0 s)"
        daemon = Proc("-m", "inspector", "run", "--config", str(cfg))
        actuator.wait_for("SAFE STATE LEFT: heartbeats are back", 60)
        actuator.wait_for("FIRE part_id=", 30)
        assert any("daemon restarted" in ln for ln in actuator.seen)
        assert not any("LOST" in ln for ln in actuator.seen), "a restart is not a gap"
    finally:
        daemon.stop()
        actuator.stop()


def test_a_lost_message_is_a_reject(tmp_path: Path) -> None:
    """Seqs never received (between verdicts, or up to a heartbeat's last_seq) fire the ejector after the grace;
    one that arrives late, within the grace, does not."""
    endpoint = f"ipc://{tmp_path}/pub.ipc"
    pub = zmq.Context.instance().socket(zmq.XPUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(endpoint)
    actuator = Proc(str(ACTUATOR), "--endpoint", endpoint, "--gap-grace", "0.5", "--heartbeat-timeout", "30")
    try:
        subscribed = 0
        while subscribed < 3:
            assert pub.poll(10_000), "the actuator did not subscribe"
            subscribed += pub.recv()[:1] == b"\x01"

        def send(topic: str, **fields: object) -> None:
            pub.send_multipart([topic.encode(), json.dumps(fields).encode()])

        def verdict(seq: int, verdict: str = "accept") -> None:
            send(f"{verdict}.cam1", camera="cam1", seq=seq, part_id=1000 + seq, captured_at=time.time(),
                 verdict=verdict, reason="ok" if verdict == "accept" else "anomaly", score=0.1, threshold=0.2,
                 latency_ms=1.0, model="m/1", label=None)

        t0 = time.time()
        send("heartbeat", sent_at=t0, uptime_s=1.0, cameras={"cam1": {"last_seq": None, "up": True}})
        for seq in (0, 1, 4, 3):  # 2 is lost; 3 comes after 4 (out of order) within the grace
            verdict(seq)
        verdict(5, "reject")
        now = time.time()  # 6 and 7 never came:
        send("heartbeat", sent_at=now, uptime_s=1.0 + now - t0, cameras={"cam1": {"last_seq": 7, "up": True}})
        actuator.wait_for("FIRE part_id=1005 camera=cam1 seq=5 reason=anomaly", 10)
        lost = sorted(int(actuator.wait_for_line("FIRE part_id=? camera=cam1 seq=", 10).split("seq=")[1].split()[0])
                      for _ in range(3))
        assert lost == [2, 6, 7]
        time.sleep(0.8)
        assert not any("seq=3 " in ln or "seq=4 " in ln for ln in actuator.seen if "FIRE" in ln or "LOST" in ln)
    finally:
        actuator.stop()
        pub.close(0)


"""Test helpers for GigE Vision: a network namespace holding only `lo` with Aravis's fake GigE camera inside, and
the daemon run inside it, publishing over ipc:// (a filesystem socket crosses network namespaces).

No GigE Vision packet (discovery included) leaves such a namespace. Tests skip, with the reason, where Aravis,
root, `ip`, the fake camera or namespaces are unavailable.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import zmq

from inspector.capture.aravis import load_aravis

from .conftest import REPO, parse_metrics

FAKE_GV = "arv-fake-gv-camera-0.8"
METRICS_PORT = 9108  # free in any fresh namespace


def ns(name: str, *cmd: str) -> list[str]:
    """A command line that runs `cmd` inside the namespace."""
    return ["ip", "netns", "exec", name, *cmd]


def skip_unless_gige_possible() -> None:
    """Skip the test, saying why, when a GigE namespace cannot be made here."""
    try:
        load_aravis()
    except OSError as exc:
        pytest.skip(f"PyGObject/Aravis unavailable ({exc})")
    if os.geteuid() != 0:
        pytest.skip("needs root to create a network namespace (ip netns add)")
    if shutil.which("ip") is None:
        pytest.skip("`ip` (iproute2) is not installed")
    if shutil.which(FAKE_GV) is None:
        pytest.skip(f"{FAKE_GV} is not installed (Debian: aravis-tools; see .ci/install-system.sh)")


class GigENamespace:
    """A fresh network namespace holding only `lo`, with the fake GigE camera (started and stopped at will)."""

    def __init__(self, log_dir: Path) -> None:
        skip_unless_gige_possible()
        self.name = f"inspector-arv-{os.getpid()}-{secrets.token_hex(3)}"
        self.log = log_dir / f"{self.name}.log"
        self._camera: subprocess.Popen | None = None
        added = subprocess.run(["ip", "netns", "add", self.name], capture_output=True, text=True, timeout=10)
        if added.returncode != 0:
            pytest.skip(f"ip netns add is not permitted here: {added.stderr.strip()}")
        up = subprocess.run(ns(self.name, "ip", "link", "set", "lo", "up"), capture_output=True, text=True,
                            timeout=10)
        if up.returncode != 0:
            self.delete()
            pytest.skip(f"ip netns exec is not permitted here: {up.stderr.strip()}")
        links = subprocess.run(ns(self.name, "ip", "-o", "link"), capture_output=True, text=True, timeout=10).stdout
        assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"], links

    def __enter__(self) -> GigENamespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def start_camera(self, *args: str) -> None:
        """Start arv-fake-gv-camera-0.8 on 127.0.0.1 (extra arguments: -r N loses N packets in 1000, -s SERIAL)."""
        assert self._camera is None, "the fake camera is running already"
        with self.log.open("a") as out:
            self._camera = subprocess.Popen(ns(self.name, FAKE_GV, "-i", "127.0.0.1", *args), stdout=out,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self._camera.poll() is None, f"{FAKE_GV} exited: {self.log.read_text()}"
            sockets = subprocess.run(ns(self.name, "ss", "-Hlun"), capture_output=True, text=True, timeout=10).stdout
            if ":3956" in sockets:  # listening on GVCP
                return
            time.sleep(0.1)
        raise AssertionError(f"{FAKE_GV} is not listening on 3956/udp: {self.log.read_text()}")

    def stop_camera(self) -> None:
        """Stop the fake camera (as a camera losing power: it sends nothing more)."""
        proc, self._camera = self._camera, None
        if proc is not None:
            stop(proc)

    def delete(self) -> None:
        """Stop the camera and delete the namespace."""
        self.stop_camera()
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, timeout=10)

    def run(self, script: str, tmp_path: Path, timeout: float = 60) -> dict[str, Any]:
        """Run a Python script inside the namespace; what it printed after RESULT, as JSON."""
        path = tmp_path / f"script-{secrets.token_hex(3)}.py"
        path.write_text(script)
        run = subprocess.run(ns(self.name, sys.executable, str(path)), capture_output=True, text=True,
                             timeout=timeout, cwd=REPO)
        result = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
        assert run.returncode == 0 and result, run.stdout + run.stderr
        return json.loads(result[0][len("RESULT "):])

    def scrape(self, port: int = METRICS_PORT) -> dict[str, float]:
        """GET /metrics from a daemon inside the namespace, parsed into {'name{labels}': value}."""
        code = f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=5)" \
               ".read().decode())"
        text = subprocess.run(ns(self.name, sys.executable, "-c", code), capture_output=True, text=True,
                              timeout=20, check=True).stdout
        return parse_metrics(text)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, wait_s: float = 5) -> int:
    """Signal a process and reap it (killing it when it does not exit in time); its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


class NsDaemon:
    """`python -m inspector run` inside a namespace, its messages read by a SUB socket here over ipc://."""

    def __init__(self, namespace: GigENamespace, config: Path, endpoint: str, log: Path) -> None:
        self.namespace = namespace
        self.log = log
        self.messages: list[tuple[str, dict]] = []
        self.sub: zmq.Socket = zmq.Context.instance().socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.setsockopt_string(zmq.SUBSCRIBE, "")
        self.sub.connect(endpoint)
        with log.open("w") as err:
            self.proc = subprocess.Popen(ns(namespace.name, sys.executable, "-m", "inspector", "run", "--config",
                                            str(config)), cwd=REPO, stdout=err, stderr=subprocess.STDOUT)

    def __enter__(self) -> NsDaemon:
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self.proc, signal.SIGKILL)
        self.sub.close()

    def receive(self, until: Callable[[list[tuple[str, dict]]], bool], timeout: float, running: bool = True) -> bool:
        """Collect messages until until(messages) holds (True) or timeout (False); with `running`, the daemon must
        not exit meanwhile."""
        end = time.monotonic() + timeout
        while not until(self.messages):
            if time.monotonic() >= end:
                return False
            assert not running or self.proc.poll() is None, f"the daemon exited: {self.log.read_text()}"
            if self.sub.poll(100):
                topic, payload = self.sub.recv_multipart()
                self.messages.append((topic.decode(), json.loads(payload)))
        return True

    def verdicts(self) -> list[dict]:
        return [p for t, p in self.messages if t != "heartbeat"]

    def heartbeats(self) -> list[dict]:
        return [p for t, p in self.messages if t == "heartbeat"]

    def stop(self) -> int:
        """SIGTERM, then collect what the shutdown flushed; the exit status."""
        rc = stop(self.proc, wait_s=20)
        self.receive(lambda m: False, 0.5, running=False)
        return rc


def verdict_count(messages: list[tuple[str, dict]]) -> int:
    """The number of verdicts (not heartbeats) among messages."""
    return sum(t != "heartbeat" for t, _ in messages)

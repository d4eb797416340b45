"""Shared test helpers: tiny real models, config files, an in-process daemon with a real SUB socket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import pytest
import zmq
from prometheus_client import CollectorRegistry

from inspector.artifact import save_artifact
from inspector.config import load_config
from inspector.model import build_model
from inspector.service import Service
from inspector.synth import PartRenderer

REPO = Path(__file__).resolve().parents[1]


def make_model(path: Path, size: int = 32, channels: int = 1, threshold: float = 0.05, seed: int = 0,
               reduction: str = "mse", base_width: int = 4, fit: str = "stretch", contrast: str = "none") -> Path:
    """A real (untrained) conv-ae artifact, small enough to run fast on the CPU."""
    import torch

    torch.manual_seed(seed)
    hp = {"base_width": base_width, "depth": 2, "latent": 4}
    net = build_model("conv-ae", channels, size, size, **hp)
    save_artifact(path, net, {
        "name": path.name, "created_at": "2026-01-01T00:00:00Z", "family": "conv-ae", "hparams": hp,
        "input": {"height": size, "width": size, "channels": channels, "fit": fit, "contrast": contrast},
        "score": {"reduction": reduction}, "threshold": {"value": threshold, "method": "manual"},
    })
    return path


def make_draem_model(path: Path, size: int = 32, threshold: float = 0.5) -> Path:
    """A real (untrained) draem artifact: its output is an anomaly map in [0, 1], scored with map_max."""
    import torch

    torch.manual_seed(0)
    hp = {"fold": 2, "recon_width": 4, "recon_depth": 2, "seg_width": 4, "seg_depth": 2}
    net = build_model("draem", 1, size, size, **hp)
    save_artifact(path, net, {
        "name": path.name, "created_at": "2026-01-01T00:00:00Z", "family": "draem", "output": "anomaly_map",
        "hparams": hp, "input": {"height": size, "width": size, "channels": 1},
        "score": {"reduction": "map_max"}, "threshold": {"value": threshold, "method": "manual"},
    })
    return path


def write_images(folder: Path, count: int, defect_rate: float = 0.0, size: int = 64, seed: int = 0) -> list[str]:
    """Write synthetic part images under folder/good and folder/defect; returns the labels in name order."""
    renderer = PartRenderer(width=size, height=size, seed=seed, defect_rate=defect_rate)
    labels = []
    for i in range(count):
        part = renderer.render()
        (folder / part.label).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / part.label / f"part_{i:05d}.png"), part.image)
        labels.append(part.label)
    return labels


def write_video(path: Path, frames: int, size: int = 64, fps: float = 25.0) -> None:
    """Encode synthetic parts into a video file with OpenCV (read back through FFmpeg)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (size, size))
    assert writer.isOpened(), "OpenCV cannot write MJPG video"
    renderer = PartRenderer(width=size, height=size, channels=3, seed=3)
    for _ in range(frames):
        writer.write(renderer.render().image)
    writer.release()


def write_config(path: Path, cameras: str, **sections: dict[str, Any]) -> Path:
    """A TOML config with the given [[cameras]] text and sections given as dicts of TOML literals."""
    text = cameras.strip() + "\n"
    for name, values in sections.items():
        text += f"\n[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
    path.write_text(text)
    return path


def camera(cam_id: str, model: Path, source: str, extra: str = "") -> str:
    """One [[cameras]] table: id, model, extra TOML lines, and `source` as an inline table."""
    return f'[[cameras]]\nid = "{cam_id}"\nmodel = "{model}"\n{extra}\nsource = {source}\n'


def sections(tmp_path: Path, **overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Config sections for an in-process line: ipc publisher that waits for the test's SUB, metrics on a free
    port, quiet JSON logs; `overrides` merge into them per section."""
    base: dict[str, dict[str, Any]] = {
        "publisher": {"endpoint": f"ipc://{tmp_path}/pub.ipc", "wait_for_subscribers": 1,
                      "wait_for_subscribers_s": 10.0, "heartbeat_s": 0.2},
        "metrics": {"port": 0},
        "logging": {"level": "warning", "format": "json"},
    }
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value}
    return base


def scrape(port: int) -> dict[str, float]:
    """GET /metrics over HTTP and parse the samples into {'name{labels}': value}."""
    return parse_metrics(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition into {'name{labels}': value}."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def metric_sum(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include the given ones."""
    total = 0.0
    for key, value in samples.items():
        if key == name or key.startswith(name + "{"):
            if all(f'{k}="{v}"' in key for k, v in labels.items()):
                total += value
    return total


class Line:
    """An in-process daemon with a SUB socket subscribed before cameras start (wait_for_subscribers)."""

    def __init__(self, config_path: Path, ready_grace_s: float = 10.0) -> None:
        self.config = load_config(config_path)
        self.service = Service(self.config, registry=CollectorRegistry(), ready_grace_s=ready_grace_s)
        self.ctx = zmq.Context.instance()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.setsockopt_string(zmq.SUBSCRIBE, "")
        self.sub.connect(self.config.publisher.endpoint)
        self.messages: list[tuple[str, dict]] = []
        self._runner: threading.Thread | None = None

    def start(self) -> Line:
        self.service.start()
        self._runner = threading.Thread(target=self.service.run, daemon=True)
        self._runner.start()
        return self

    def receive(self, until: Any, timeout: float = 20.0) -> list[tuple[str, dict]]:
        """Collect messages until until(messages) is true or timeout."""
        end = time.monotonic() + timeout
        while not until(self.messages) and time.monotonic() < end:
            if self.sub.poll(100):
                topic, payload = self.sub.recv_multipart()
                self.messages.append((topic.decode(), json.loads(payload)))
        return self.messages

    def receive_verdicts(self, count: int, timeout: float = 20.0) -> list[dict]:
        """Collect messages until `count` verdicts (not heartbeats) arrived or timeout; the verdicts."""
        self.receive(lambda m: sum(t != "heartbeat" for t, _ in m) >= count, timeout)
        return self.verdicts()

    def verdicts(self) -> list[dict]:
        return [p for t, p in self.messages if t != "heartbeat"]

    def stop(self) -> None:
        self.service.stop_event.set()
        if self._runner:
            self._runner.join(5)
        self.service.shutdown()
        # what the shutdown flushed
        while self.sub.poll(300):
            topic, payload = self.sub.recv_multipart()
            self.messages.append((topic.decode(), json.loads(payload)))
        self.sub.close()


@pytest.fixture
def line_factory() -> Iterator[Any]:
    """Builds Lines and stops them after the test."""
    lines: list[Line] = []

    def make(config_path: Path, ready_grace_s: float = 10.0) -> Line:
        line = Line(config_path, ready_grace_s)
        lines.append(line)
        return line

    yield make
    for line in lines:
        if line.service.publisher is not None and line.service.publisher._sock is not None:
            line.stop()


def run_cli(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m inspector ARGS` in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "inspector", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=full_env)


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    return make_model(tmp_path / "tiny")


@pytest.fixture(scope="session")
def rng() -> np.random.Generator:
    return np.random.default_rng(0)

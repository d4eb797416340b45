"""Prometheus metrics, built over an injected registry, and their HTTP endpoint."""

from __future__ import annotations

import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
INFERENCE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
SCORE_BUCKETS = tuple(round(10 ** (e / 3), 8) for e in range(-21, 4))  # 1e-7 .. 10, three per decade


class Metrics:
    """Every metric the daemon exports; nothing is registered anywhere but the registry given."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.frames_captured = Counter("inspector_frames_captured", "Frames captured.", ["camera"], registry=r)
        self.frames_dropped = Counter(
            "inspector_frames_dropped", "Frames not inspected, by reason (buffer_full, shutdown).",
            ["camera", "reason"], registry=r)
        self.verdicts = Counter("inspector_verdicts", "Verdicts published.", ["camera", "verdict", "reason"],
                                registry=r)
        self.known_parts = Counter(
            "inspector_known_parts", "Verdicts on frames whose label was known (reference parts).",
            ["camera", "label", "verdict"], registry=r)
        self.batch_size = Histogram("inspector_inference_batch_size", "Frames per inference batch.",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.inference_seconds = Histogram("inspector_inference_seconds",
                                           "Time per batch: preprocessing, model, scoring.",
                                           buckets=INFERENCE_BUCKETS, registry=r)
        self.latency = Histogram("inspector_latency_seconds", "Capture to publish.", ["camera"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.anomaly_score = Histogram("inspector_anomaly_score", "Anomaly scores of inspected frames.", ["camera"],
                                       buckets=SCORE_BUCKETS, registry=r)
        self.buffer_frames = Gauge("inspector_buffer_frames", "Frames waiting in the ring.", ["camera"], registry=r)
        self.camera_up = Gauge("inspector_camera_up", "1 while the camera delivers frames.", ["camera"], registry=r)
        self.camera_reconnects = Counter("inspector_camera_reconnects", "Reconnect attempts.", ["camera"],
                                         registry=r)
        self.publish_overflow = Counter(
            "inspector_publish_overflow", "Verdicts not published because the publisher queue was full.",
            ["camera"], registry=r)
        self.model_info = Info("inspector_model", "Loaded models.", ["model"], registry=r)
        self.uptime = Gauge("inspector_uptime_seconds", "Seconds since the daemon started.", registry=r)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def track_uptime(self, started: float) -> None:
        """Report uptime from a monotonic start time, computed at scrape time."""
        self.uptime.set_function(lambda: time.monotonic() - started)

    def serve(self, address: str, port: int) -> int:
        """Start the /metrics HTTP endpoint; returns the bound port."""
        self._server, self._thread = start_http_server(port, addr=address, registry=self.registry)
        return int(self._server.server_port)

    def stop(self) -> None:
        """Stop the HTTP endpoint, if started."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

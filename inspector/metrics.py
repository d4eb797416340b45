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
# score / threshold: fine near 1 (the threshold), where drift towards false rejects shows first
RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0,
                 10.0)
RELOAD_RESULTS = ("ok", "failed")
CALIBRATION_QUANTILES = ("0.5", "0.99")  # good-score quantiles of the calibration set that are exported


class Metrics:
    """Every metric the daemon exports; nothing is registered anywhere but the registry given."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.frames_captured = Counter("inspector_frames_captured", "Frames captured.", ["camera"], registry=r)
        self.frames_dropped = Counter(
            "inspector_frames_dropped", "Frames not inspected, by reason (buffer_full, incomplete, shutdown).",
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
        self.model_loaded_at = Gauge("inspector_model_loaded_timestamp_seconds",
                                     "Unix time the model was loaded (changes on a hot reload).", ["model"], registry=r)
        self.threshold = Gauge("inspector_threshold", "Anomaly-score threshold in force per camera.", ["camera"],
                               registry=r)
        self.score_ratio = Histogram(
            "inspector_score_threshold_ratio", "Anomaly score divided by the threshold in force (1 = threshold).",
            ["camera"], buckets=RATIO_BUCKETS, registry=r)
        self.calibration_score = Gauge(
            "inspector_calibration_score", "Good-score quantiles (by level) of the calibration set, per camera.",
            ["camera", "level"], registry=r)
        self.deadline = Gauge("inspector_deadline_seconds", "worker.deadline_ms: later verdicts become fail-safe.",
                              registry=r)
        self.reloads = Counter("inspector_reloads", "Configuration reloads (SIGHUP), by result.", ["result"],
                               registry=r)
        for result in RELOAD_RESULTS:
            self.reloads.labels(result)
        self.archive_saved = Counter("inspector_archive_saved", "Verdicts saved to the reject archive.",
                                     ["camera", "verdict"], registry=r)
        self.archive_dropped = Counter(
            "inspector_archive_dropped", "Archive entries not saved (queue full or write failed); never frames.",
            ["camera"], registry=r)
        self.archive_items = Gauge("inspector_archive_items", "Entries in the reject archive.", registry=r)
        self.archive_bytes = Gauge("inspector_archive_bytes", "Bytes in the reject archive.", registry=r)
        self.uptime = Gauge("inspector_uptime_seconds", "Seconds since the daemon started.", registry=r)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def track_uptime(self, started: float) -> None:
        """Report uptime from a monotonic start time, computed at scrape time."""
        self.uptime.set_function(lambda: time.monotonic() - started)

    def model_loaded(self, model: str, info: dict[str, str]) -> None:
        """Publish a (re)loaded model: its info labels (version, threshold, reduction) and the time it was loaded."""
        self.model_info.labels(model).info(info)
        self.model_loaded_at.labels(model).set_to_current_time()

    def camera_model(self, camera: str, threshold: float, calibration: dict[str, float] | None) -> None:
        """Publish the threshold in force on a camera and the good-score quantiles it was calibrated on (None:
        no calibration valid for the scores in use, e.g. another reduction; stale quantiles are removed)."""
        self.threshold.labels(camera).set(threshold)
        for q in CALIBRATION_QUANTILES:
            if calibration is not None and q in calibration:
                self.calibration_score.labels(camera, q).set(calibration[q])
            else:
                try:
                    self.calibration_score.remove(camera, q)
                except KeyError:
                    pass

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

"""Composition root: builds the line from the config, starts it in order, runs it, shuts it down in reverse."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from .artifact import Artifact, load_artifact
from .buffer import FrameRing
from .capture import make_source
from .capture.camera import FINISHED, UP, Camera
from .config import CameraConfig, Config
from .device import resolve_device, resolve_dtype
from .errors import UsageError
from .logs import BurstLog, get_logger
from .metrics import Metrics
from .publish import Publisher
from .scoring import Reduction, make_reduction
from .sdnotify import Notifier
from .types import NOT_INSPECTED, Frame, Verdict
from .worker import Scorer, Worker, fail_safe_verdict

LIVENESS_S = 30.0  # a worker or publisher silent for this long stops the systemd watchdog pings
READY_GRACE_S = 10.0  # READY=1 waits this long at most for every camera's first frame


class Service:
    """The inspection daemon. `start` acquires, `run` supervises, `shutdown` releases; the CLI drives them."""

    def __init__(self, config: Config, registry: CollectorRegistry | None = None,
                 notifier: Notifier | None = None, ready_grace_s: float = READY_GRACE_S) -> None:
        self.config = config
        self.ready_grace_s = ready_grace_s
        self.metrics = Metrics(registry)
        self.notifier = notifier or Notifier()
        self.stop_event = threading.Event()  # set by the signal handler: begin shutdown
        self.force_event = threading.Event()  # set by a second SIGINT: skip the drain
        self.started = time.monotonic()
        self.cameras: dict[str, Camera] = {}
        self.rings: dict[str, FrameRing] = {}
        self.workers: list[Worker] = []
        self.publisher: Publisher | None = None
        self.metrics_port: int | None = None
        self._capture_stop = threading.Event()
        self._log = get_logger("service")
        self._burst = BurstLog(self._log)
        self._model_of: dict[str, tuple[float, str]] = {}  # camera -> (threshold, model label)

    # --- start-up -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Load models, bind the publisher and metrics, warm up, start workers then cameras, say READY."""
        cfg = self.config
        artifacts = self._load_models()
        self.publisher = Publisher(cfg.publisher, [c.id for c in cfg.cameras], cfg.worker.deadline_ms,
                                   cfg.scoring.not_inspected_verdict, self._record, self._cameras_up,
                                   get_logger("publisher"), self.started, self._publish_overflow)
        endpoint = self.publisher.bind()
        self._log.info("publisher bound", endpoint=endpoint)
        self.metrics.track_uptime(self.started)
        if cfg.metrics.enabled:
            try:
                self.metrics_port = self.metrics.serve(cfg.metrics.address, cfg.metrics.port)
            except OSError as exc:
                raise OSError(f"cannot serve metrics on {cfg.metrics.address}:{cfg.metrics.port}: {exc}") from None
            self._log.info("metrics served", url=f"http://{cfg.metrics.address}:{self.metrics_port}/metrics")
        self._build_workers(artifacts)
        if cfg.publisher.wait_for_subscribers:
            got = self.publisher.wait_for_subscribers(cfg.publisher.wait_for_subscribers,
                                                      cfg.publisher.wait_for_subscribers_s, self.stop_event)
            log = self._log.info if got >= cfg.publisher.wait_for_subscribers else self._log.warning
            log("subscribers before start", wanted=cfg.publisher.wait_for_subscribers, got=got)
        self.publisher.start()
        for worker in self.workers:
            worker.start()
        for cam in self.cameras.values():
            cam.start()
        silent = self._await_first_frames()
        status = "inspecting" + (f"; no frame yet from {', '.join(silent)} (retrying)" if silent else "")
        self.notifier.send(f"READY=1\nSTATUS={status}")
        self._log.info("ready", cameras=len(self.cameras), workers=len(self.workers), silent=silent)

    def _await_first_frames(self) -> list[str]:
        """Wait until every camera delivered a frame (or finished), at most ready_grace_s; the silent ones."""
        end = time.monotonic() + self.ready_grace_s
        while True:
            silent = [c for c, cam in self.cameras.items() if cam.frames == 0 and cam.state != FINISHED]
            if not silent or time.monotonic() >= end or self.stop_event.wait(0.02):
                return silent

    def _load_models(self) -> dict[Path, Artifact]:
        artifacts: dict[Path, Artifact] = {}
        for cam in self.config.cameras:
            if cam.model not in artifacts:
                artifacts[cam.model] = load_artifact(cam.model)
                meta = artifacts[cam.model].meta
                self._log.info("model loaded", path=str(cam.model), model=artifacts[cam.model].label,
                               family=meta.family, threshold=meta.threshold.value, reduction=meta.score.reduction)
        return artifacts

    def _scoring_for(self, artifact: Artifact) -> tuple[Reduction, float, str]:
        sc = self.config.scoring
        meta = artifact.meta
        if sc.reduction not in ("model", meta.score.reduction) and sc.threshold is None:
            raise UsageError(
                f"scoring.reduction = {sc.reduction!r} differs from the reduction {meta.score.reduction!r} that "
                f"{artifact.path} was calibrated with: set scoring.threshold too, or recalibrate the model"
            )
        name = meta.score.reduction if sc.reduction == "model" else sc.reduction
        params = meta.score.params if name == meta.score.reduction else {}
        threshold = meta.threshold.value if sc.threshold is None else sc.threshold
        return make_reduction(name, params), threshold, name

    def _build_workers(self, artifacts: dict[Path, Artifact]) -> None:
        cfg = self.config
        try:
            device = resolve_device(cfg.worker.device)
        except ValueError as exc:
            raise UsageError(f"worker.device: {exc}") from None
        dtype = resolve_dtype(cfg.worker.precision, device)
        if cfg.worker.threads:
            import torch

            torch.set_num_threads(cfg.worker.threads)
        import cv2

        cv2.setNumThreads(1)  # frames are small: OpenCV's pool would only compete with torch's for the cores
        for path, artifact in artifacts.items():
            reduction, threshold, name = self._scoring_for(artifact)
            scorer = Scorer(artifact, reduction, threshold, device, dtype, cfg.worker.max_batch, cfg.worker.jit,
                            self._log)
            t0 = time.perf_counter()
            scorer.warm_up((cfg.worker.max_batch, 1))
            self._log.info("model warmed up", model=artifact.label, device=str(device), dtype=str(dtype),
                           torchscript=scorer.traced,
                           seconds=round(time.perf_counter() - t0, 3))
            self.metrics.model_info.labels(artifact.meta.name).info(
                {"version": artifact.label.split("/")[1], "threshold": f"{threshold:.6g}", "reduction": name})
            cond = threading.Condition()
            cams = [c for c in cfg.cameras if c.model == path]
            self._model_of.update({c.id: (threshold, artifact.label) for c in cams})
            rings = [self._build_camera(c, cond) for c in cams]
            worker = Worker(artifact.meta.name, scorer, rings, cond, {c.id: c.roi for c in cams}, cfg.worker,
                            cfg.scoring.not_inspected_verdict, self._emit, self.metrics,
                            get_logger("worker").bind(model=artifact.label))
            self.workers.append(worker)

    def _build_camera(self, cam: CameraConfig, cond: threading.Condition) -> FrameRing:
        ring = FrameRing(cam.id, self.config.buffer.capacity, self.config.buffer.policy, cond)
        self.rings[cam.id] = ring
        m = self.metrics
        m.buffer_frames.labels(cam.id).set_function(ring.__len__)
        m.camera_up.labels(cam.id).set(0)
        for reason in ("buffer_full", "shutdown"):
            m.frames_dropped.labels(cam.id, reason)
        log = get_logger("camera").bind(camera=cam.id, source=cam.source.type)

        def on_state(old: str, new: str, detail: str) -> None:
            m.camera_up.labels(cam.id).set(1 if new == UP else 0)
            (log.info if new == UP else log.warning)("camera state", old=old, state=new, detail=detail)

        self.cameras[cam.id] = Camera(cam, lambda: make_source(cam.source), ring, self._on_drop, on_state,
                                      m.frames_captured.labels(cam.id), m.camera_reconnects.labels(cam.id),
                                      self._capture_stop)
        return ring

    # --- the line's callbacks (run on capture, worker and publisher threads) ------------------------------
    def _emit(self, verdicts: list[Verdict]) -> None:
        assert self.publisher is not None
        self.publisher.submit(verdicts)

    def _on_drop(self, frame: Frame, reason: str) -> None:
        self.metrics.frames_dropped.labels(frame.camera, reason).inc()
        self._emit([self._not_inspected(frame)])
        self._burst("warning", "frames dropped", frame.camera, reason=reason, policy=self.config.buffer.policy)

    def _publish_overflow(self, v: Verdict) -> None:
        self.metrics.publish_overflow.labels(v.camera).inc()
        self._burst("error", "publisher queue full: verdict not published", v.camera, reason=v.reason)

    def _not_inspected(self, frame: Frame) -> Verdict:
        threshold, model = self._model_of[frame.camera]
        return fail_safe_verdict(frame, NOT_INSPECTED, self.config.scoring.not_inspected_verdict, threshold, model)

    def _record(self, v: Verdict, latency_s: float) -> None:
        m = self.metrics
        m.verdicts.labels(v.camera, v.verdict, v.reason).inc()
        m.latency.labels(v.camera).observe(latency_s)
        if v.score is not None:
            m.anomaly_score.labels(v.camera).observe(v.score)
        if v.label is not None:
            m.known_parts.labels(v.camera, v.label, v.verdict).inc()

    def _cameras_up(self) -> dict[str, bool]:
        return {cam_id: cam.state == UP for cam_id, cam in self.cameras.items()}

    # --- running --------------------------------------------------------------------------------------
    def run(self) -> None:
        """Supervise until stop_event: replace stalled cameras, ping the systemd watchdog while all is alive."""
        next_ping = 0.0
        while not self.stop_event.wait(0.25):
            now = time.monotonic()
            for cam in self.cameras.values():
                cam.check_stall(now)
            if self.notifier.watchdog_s and now >= next_ping and self._alive(now):
                self.notifier.send("WATCHDOG=1")
                next_ping = now + self.notifier.watchdog_s

    def _alive(self, now: float) -> bool:
        beats = [w.heartbeat for w in self.workers] + ([self.publisher.heartbeat_at] if self.publisher else [])
        return all(now - beat < LIVENESS_S for beat in beats) and all(w.alive() for w in self.workers)

    # --- shutdown -------------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop capture, inspect or fail-safe what is buffered, flush the publisher, stop metrics."""
        self.notifier.send("STOPPING=1")
        self._log.info("shutting down")
        self._capture_stop.set()
        for cam in self.cameras.values():
            if not cam.join(2.0):
                self._log.warning("capture thread did not stop; abandoned", camera=cam.cfg.id)
        drain_s = 0.0 if self.force_event.is_set() else self.config.worker.drain_timeout_s
        for worker in self.workers:
            if not worker.finish(drain_s):
                self._log.warning("drain deadline reached", worker=worker.name)
        left = 0
        for cam_id, ring in self.rings.items():
            for frame in ring.drain():
                self.metrics.frames_dropped.labels(cam_id, "shutdown").inc()
                self._emit([self._not_inspected(frame)])
                left += 1
        if left:
            self._log.warning("frames not inspected at shutdown", count=left)
        if self.publisher is not None:
            self.publisher.close(timeout_s=5.0)
        self.metrics.stop()
        self._log.info("stopped", frames={c: cam.frames for c, cam in self.cameras.items()})

"""Composition root: builds the line from the config, starts it in order, runs it, shuts it down in reverse."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from prometheus_client import CollectorRegistry

from .archive import Archive
from .artifact import Artifact, ArtifactError, load_artifact
from .buffer import FrameRing
from .capture import make_source
from .capture.camera import DOWN, FINISHED, UP, Camera
from .config import CameraConfig, Config, ConfigError, ScoringConfig
from .device import precision_name, resolve_device, resolve_dtype
from .errors import UsageError
from .logs import BurstLog, get_logger
from .metrics import Metrics
from .publish import Publisher
from .reload import HOT_SCORING, plan_reload
from .scoring import Reduction, make_reduction, reduction_output
from .sdnotify import Notifier
from .threads import in_own_thread
from .types import DEADLINE, ERROR, NOT_INSPECTED, Evidence, Frame, Verdict
from .worker import Scorer, Worker, fail_safe_verdict

LIVENESS_S = 30.0  # a worker or publisher silent for this long stops the systemd watchdog pings
READY_GRACE_S = 10.0  # READY=1 waits this long at most for every camera's first frame
STATUS_S = 5.0  # STATUS= (systemctl status) is refreshed this often


class Service:
    """The inspection daemon. `start` acquires, `run` supervises, `shutdown` releases; the CLI drives them."""

    def __init__(self, config: Config, registry: CollectorRegistry | None = None,
                 notifier: Notifier | None = None, ready_grace_s: float = READY_GRACE_S,
                 loader: Callable[[], Config] | None = None, liveness_s: float = LIVENESS_S) -> None:
        self.config = config
        self.ready_grace_s = ready_grace_s
        self.liveness_s = liveness_s
        self._loader = loader  # re-reads the config on reload (SIGHUP); None: reload unsupported
        self.metrics = Metrics(registry)
        self.notifier = notifier or Notifier()
        self.stop_event = threading.Event()  # set by the signal handler: begin shutdown
        self.force_event = threading.Event()  # set by a second SIGINT: skip the drain
        self.reload_event = threading.Event()  # set by SIGHUP: re-read the config, swap models and thresholds
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
        self._groups: dict[str, list[str]] = {}  # worker name -> its cameras' ids
        self._device: Any = None
        self.archive: Any = None  # the reject archive, when configured
        self._window = {"verdicts": 0, "rejects": 0}  # counted by the publisher thread for STATUS=

    # --- start-up -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Load models, bind the publisher and metrics, warm up, start workers then cameras, say READY."""
        cfg = self.config
        artifacts = self._load_models()
        self.publisher = Publisher(cfg.publisher, [c.id for c in cfg.cameras], cfg.worker.deadline_ms,
                                   cfg.scoring.not_inspected_verdict, self._record, self._cameras_up,
                                   get_logger("publisher"), self.started, self._publish_overflow,
                                   on_published=self._on_published)
        self.archive = Archive(cfg.archive, self.metrics, get_logger("archive"),
                               publish=self.publisher.submit_raw if cfg.publisher.publish_images else None,
                               rois={c.id: c.roi for c in cfg.cameras}, reduction_of=self._reduction_of)
        endpoint = self.publisher.bind()
        self._log.info("publisher bound", endpoint=endpoint)
        self.metrics.track_uptime(self.started)
        self.metrics.deadline.set(cfg.worker.deadline_ms / 1000)
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
        self.archive.start()
        for worker in self.workers:
            worker.start()
        for cam in self.cameras.values():
            cam.start()
        silent = self._await_first_frames()
        status = "inspecting" + (f"; no frame yet from {', '.join(silent)} (down or silent; retrying)"
                                 if silent else "")
        self.notifier.send(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")
        self._log.info("ready", cameras=len(self.cameras), workers=len(self.workers), silent=silent)

    def _await_first_frames(self) -> list[str]:
        """Wait until every camera delivered a frame, finished or was reported down, at most ready_grace_s (a
        camera that opens but sends nothing); the cameras without a frame yet."""
        end = time.monotonic() + self.ready_grace_s
        while True:
            waiting = [c for c, cam in self.cameras.items() if cam.frames == 0 and cam.state not in (FINISHED, DOWN)]
            if not waiting or time.monotonic() >= end or self.stop_event.wait(0.02):
                return [c for c, cam in self.cameras.items() if cam.frames == 0 and cam.state != FINISHED]

    def _load_models(self) -> dict[Path, Artifact]:
        artifacts: dict[Path, Artifact] = {}
        for cam in self.config.cameras:
            if cam.model not in artifacts:
                artifacts[cam.model] = in_own_thread(load_artifact, cam.model)  # torch work: see threads.py
                meta = artifacts[cam.model].meta
                self._log.info("model loaded", path=str(cam.model), model=artifacts[cam.model].label,
                               family=meta.family, threshold=meta.threshold.value, reduction=meta.score.reduction)
        return artifacts

    def _scoring_for(self, artifact: Artifact, sc: ScoringConfig) -> tuple[Reduction, float, str]:
        meta = artifact.meta
        if sc.reduction not in ("model", meta.score.reduction) and sc.threshold is None:
            raise UsageError(
                f"scoring.reduction = {sc.reduction!r} differs from the reduction {meta.score.reduction!r} that "
                f"{artifact.path} was calibrated with: set scoring.threshold too, or recalibrate the model"
            )
        name = meta.score.reduction if sc.reduction == "model" else sc.reduction
        if reduction_output(name) != meta.output:
            raise UsageError(f"scoring.reduction = {name!r} reads a {reduction_output(name).replace('_', ' ')}, but "
                             f"{artifact.path} ({meta.family}) outputs a {meta.output.replace('_', ' ')}")
        params = meta.score.params if name == meta.score.reduction else {}
        threshold = meta.threshold.value if sc.threshold is None else sc.threshold
        return make_reduction(name, params), threshold, name

    def _build_workers(self, artifacts: dict[Path, Artifact]) -> None:
        cfg = self.config
        try:
            self._device = resolve_device(cfg.worker.device)
        except ValueError as exc:
            raise UsageError(f"worker.device: {exc}") from None
        if cfg.worker.threads:
            import torch

            torch.set_num_threads(cfg.worker.threads)
        import cv2

        cv2.setNumThreads(1)  # frames are small: OpenCV's pool would only compete with torch's for the cores
        for path, artifact in artifacts.items():
            scorer = in_own_thread(self._make_scorer, artifact)  # traced and warmed up off this thread
            cond = threading.Condition()
            cams = [c for c in cfg.cameras if c.model == path]
            rings = [self._build_camera(c, cond) for c in cams]
            name = artifact.meta.name if artifact.meta.name not in self._groups else f"{artifact.meta.name}-{path}"
            self._groups[name] = [c.id for c in cams]
            self._adopt(name, scorer)
            worker = Worker(name, scorer, rings, cond, {c.id: c.roi for c in cams}, cfg.worker,
                            cfg.scoring.not_inspected_verdict, self._emit, self.metrics,
                            get_logger("worker").bind(model=artifact.label), self._wants)
            self.workers.append(worker)

    def _make_scorer(self, artifact: Artifact, scoring: ScoringConfig | None = None) -> Scorer:
        """The artifact's model on the worker device with its reduction and threshold, warmed up."""
        cfg = self.config
        sc = scoring or cfg.scoring
        reduction, threshold, name = self._scoring_for(artifact, sc)
        dtype = resolve_dtype(cfg.worker.precision, self._device, artifact.meta.output)
        calibrated, running = artifact.meta.threshold.details.get("arithmetic"), precision_name(dtype)
        if calibrated and calibrated != running and sc.threshold is None:
            # the scores move by up to about 1% (draem) between arithmetics: enough to move the 1% false rejects
            self._log.warning("threshold set in another arithmetic", model=artifact.label, calibrated=calibrated,
                              running=running, precision=cfg.worker.precision,
                              hint=f"inspector calibrate --model {artifact.path} --good DIR --precision "
                                   f"{cfg.worker.precision}, on this machine")
        scorer = Scorer(artifact, reduction, threshold, self._device, dtype, cfg.worker.max_batch,
                        cfg.worker.jit, self._log)
        t0 = time.perf_counter()
        scorer.warm_up()
        self._log.info("model warmed up", model=artifact.label, device=str(self._device), dtype=str(dtype),
                       torchscript=scorer.traced, fused=scorer.fused, threshold=threshold, reduction=name,
                       seconds=round(time.perf_counter() - t0, 3))
        scorer.reduction_name = name
        cal = artifact.meta.calibration  # valid only for the reduction it was computed with
        scorer.calibration = cal.quantiles if cal and name == artifact.meta.score.reduction else None
        return scorer

    def _adopt(self, worker: str, scorer: Scorer) -> None:
        """Record what a worker's cameras are now inspected with (fail-safe verdicts, metrics)."""
        self._model_of.update({c: (scorer.threshold, scorer.label) for c in self._groups[worker]})
        name, version = scorer.label.split("/", 1)
        self.metrics.model_loaded(
            name, {"version": version, "threshold": f"{scorer.threshold:.6g}", "reduction": scorer.reduction_name})
        for camera in self._groups[worker]:
            self.metrics.camera_model(camera, scorer.threshold, scorer.calibration)

    def _wants(self, verdict: str, reason: str, camera: str) -> bool:
        """Whether the archive keeps this verdict (then the worker attaches the frame and its heatmap)."""
        return self.archive is not None and bool(self.archive.wants(verdict, reason, camera))

    def _on_published(self, v: Verdict, message: dict[str, Any]) -> None:
        """Hand a published verdict that carries evidence to the archive (on the publisher thread; never blocks)."""
        if self.archive is not None and v.evidence is not None:
            self.archive.submit(message, v.evidence)

    def _reduction_of(self, camera: str) -> str:
        """The score reduction in force on a camera (the archive scales its heatmaps by it)."""
        for worker in self.workers:
            if camera in self._groups.get(worker.name, ()):
                return worker.scorer.reduction_name
        return "smoothed_max"

    def _build_camera(self, cam: CameraConfig, cond: threading.Condition) -> FrameRing:
        ring = FrameRing(cam.id, self.config.buffer.capacity, self.config.buffer.policy, cond)
        self.rings[cam.id] = ring
        m = self.metrics
        m.buffer_frames.labels(cam.id).set_function(ring.__len__)
        m.camera_up.labels(cam.id).set(0)
        for reason in ("buffer_full", "shutdown", "incomplete"):
            m.frames_dropped.labels(cam.id, reason)
        for reason in (NOT_INSPECTED, DEADLINE, ERROR):  # fail-safe series exist (at 0) before the first one
            m.verdicts.labels(cam.id, self.config.scoring.not_inspected_verdict, reason)
        m.publish_overflow.labels(cam.id)
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
        v = self._not_inspected(frame)
        if frame.image.size and self._wants(v.verdict, v.reason, v.camera):  # a lost frame has no image
            v.evidence = Evidence(frame.image, None)
        self._emit([v])
        self._burst("warning", "frames dropped", frame.camera, reason=reason, policy=self.config.buffer.policy)

    def _publish_overflow(self, v: Verdict) -> None:
        self.metrics.publish_overflow.labels(v.camera).inc()
        self._burst("error", "publisher queue full: verdict not published", v.camera, reason=v.reason)

    def _not_inspected(self, frame: Frame) -> Verdict:
        threshold, model = self._model_of[frame.camera]
        return fail_safe_verdict(frame, NOT_INSPECTED, self.config.scoring.not_inspected_verdict, threshold, model)

    def _record(self, v: Verdict, latency_s: float) -> None:
        self._window["verdicts"] += 1
        self._window["rejects"] += v.verdict == "reject"
        m = self.metrics
        m.verdicts.labels(v.camera, v.verdict, v.reason).inc()
        m.latency.labels(v.camera).observe(latency_s)
        if v.score is not None:
            m.anomaly_score.labels(v.camera).observe(v.score)
            if v.threshold:
                m.score_ratio.labels(v.camera).observe(v.score / v.threshold)
        if v.label is not None:
            m.known_parts.labels(v.camera, v.label, v.verdict).inc()

    def _cameras_up(self) -> dict[str, bool]:
        return {cam_id: cam.state == UP for cam_id, cam in self.cameras.items()}

    # --- running --------------------------------------------------------------------------------------
    def run(self) -> None:
        """Supervise until stop_event: replace stalled cameras, reload on request, keep STATUS= fresh, and ping
        the systemd watchdog while every thread proves it is alive."""
        next_ping = 0.0
        next_status = time.monotonic() + STATUS_S
        while not self.stop_event.wait(0.25):
            now = time.monotonic()
            for cam in self.cameras.values():
                cam.check_stall(now)
            if self.reload_event.is_set():
                self.reload_event.clear()
                self.reload()
                now = time.monotonic()
            if self.notifier.watchdog_s and now >= next_ping and self._alive(now):
                self.notifier.send("WATCHDOG=1")
                next_ping = now + self.notifier.watchdog_s
            if now >= next_status:
                self.notifier.send(f"STATUS={self.status_line(now - next_status + STATUS_S)}")
                next_status = now + STATUS_S

    def status_line(self, window_s: float) -> str:
        """One line for `systemctl status`: rate, rejects and cameras up since the last call."""
        counts, self._window = self._window, {"verdicts": 0, "rejects": 0}
        up = sum(self._cameras_up().values())
        share = f" ({100 * counts['rejects'] / counts['verdicts']:.1f}%)" if counts["verdicts"] else ""
        models = ", ".join(sorted({label for _, label in self._model_of.values()}))
        return (f"{counts['verdicts'] / max(window_s, 1e-3):.1f} parts/s, {counts['rejects']} rejected{share} "
                f"in {window_s:.0f} s; cameras up {up}/{len(self.cameras)}; model {models}")

    def _alive(self, now: float) -> bool:
        """True while the workers and the publisher stamp fresh heartbeats and every capture thread runs."""
        beats = [w.heartbeat for w in self.workers] + ([self.publisher.heartbeat_at] if self.publisher else [])
        return (all(now - beat < self.liveness_s for beat in beats) and all(w.alive() for w in self.workers)
                and all(cam.alive() for cam in self.cameras.values()))

    # --- hot reload -----------------------------------------------------------------------------------
    def reload(self) -> bool:
        """Re-read the config; load and warm up the new models beside the running ones, then swap them in
        between batches. On any failure nothing changes. True when the new models are in service."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notifier.send(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading")
        t0 = time.perf_counter()
        try:
            if self._loader is None:
                raise UsageError("this daemon was started without a config file to re-read")
            new = self._loader()
            models, waiting = plan_reload(self.config, new, self._groups)
            loaded: dict[Path, Artifact] = {}
            scorers: dict[str, Scorer] = {}
            for name, path in models.items():
                if path not in loaded:
                    loaded[path] = in_own_thread(load_artifact, path)
                scorers[name] = in_own_thread(self._make_scorer, loaded[path], new.scoring)
        except (ConfigError, ArtifactError, UsageError, OSError, ValueError, RuntimeError) as exc:
            self._log.error("reload failed; still running the previous config and models", error=str(exc))
            self.metrics.reloads.labels("failed").inc()
            self.notifier.send(f"READY=1\nSTATUS=reload failed: {str(exc).splitlines()[0]}")
            return False
        for worker in self.workers:
            worker.swap(scorers[worker.name])
        for worker in self.workers:
            if not worker.swapped.wait(self.liveness_s):
                self._log.warning("worker did not take the new model yet", worker=worker.name)
            self._adopt(worker.name, scorers[worker.name])
        worker_of = {cam: w for w, ids in self._groups.items() for cam in ids}
        self.config = self.config.model_copy(update={
            "scoring": self.config.scoring.model_copy(update={k: getattr(new.scoring, k) for k in HOT_SCORING}),
            "cameras": [c.model_copy(update={"model": models[worker_of[c.id]]}) for c in self.config.cameras]})
        if waiting:
            self._log.warning("reload: these changes take effect at the next restart", sections=waiting)
        self.metrics.reloads.labels("ok").inc()
        self._log.info("reloaded", models={w: s.label for w, s in scorers.items()},
                       thresholds={w: s.threshold for w, s in scorers.items()},
                       seconds=round(time.perf_counter() - t0, 3))
        self.notifier.send("READY=1\nSTATUS=reloaded")
        return True

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
        if self.archive is not None:
            self.archive.close(timeout_s=5.0)
        self.metrics.stop()
        self._log.info("stopped", frames={c: cam.frames for c, cam in self.cameras.items()})

"""The batched inference worker: frames -> preprocessing -> autoencoder -> scores -> verdicts (one per model)."""

from __future__ import annotations

import math
import threading
import time
import warnings
from contextlib import nullcontext
from typing import Any, Callable

import numpy as np
import torch

from .artifact import Artifact
from .buffer import FrameRing, collect
from .config import WorkerConfig
from .fused import GATE
from .logs import BurstLog
from .preprocess import crop, prepare, unfit
from .scoring import Reduction, heat_map
from .types import ACCEPT, ANOMALY, DEADLINE, ERROR, OK, REJECT, Evidence, Frame, Verdict

Wants = Callable[[str, str, str], bool]  # (verdict, reason, camera) -> keep evidence for the archive?


class Scorer:
    """A model on its device with its reduction and threshold: uint8 batch in, scores out."""

    def __init__(self, artifact: Artifact, reduction: Reduction, threshold: float, device: torch.device,
                 dtype: torch.dtype, max_batch: int, jit: bool = False, log: Any = None) -> None:
        spec = artifact.meta.input
        self.height, self.width, self.channels = spec.height, spec.width, spec.channels
        self.fit, self.contrast = spec.fit, spec.contrast
        self.scale = spec.scale
        self.device, self.dtype = device, dtype
        self.reduction, self.threshold = reduction, threshold
        self.label = artifact.label
        self.output = artifact.meta.output  # "reconstruction" or "anomaly_map": what the heatmap shows
        self.reduction_name = ""  # the reduction's name, for logs and metrics
        self.calibration: dict[str, float] | None = None  # good-score quantiles it was calibrated on (metrics)
        model = artifact.module.to(device=device, dtype=dtype).eval()
        if device.type == "cpu":
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.fused = fuses_itself(model, device)
        self.model = compiled(model, self._example(max_batch), log) if jit else model
        self.traced = self.model is not model and not self.fused
        self.max_batch = max_batch
        # TorchScript on CUDA compiles a graph per input shape on first sight (50-250 ms each, measured on an
        # H100), and a fused CPU family about a second a shape: long enough to overflow a ring. So batches there
        # are padded up to a few fixed sizes (for a fused family every size up to 8, then powers of two), all
        # compiled by warm_up(); an unfused trace on the CPU takes a new shape in a few ms, at the batch's size.
        self.buckets = (batch_buckets(max_batch) if self.traced and device.type == "cuda"
                        else fused_buckets(max_batch) if self.fused else None)
        shape = (max_batch, self.height, self.width) + ((3,) if self.channels == 3 else ())
        pin = device.type == "cuda"
        self.host = torch.empty(shape, dtype=torch.uint8, pin_memory=pin)  # preallocated input staging
        self.host_np: np.ndarray = self.host.numpy()
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # (input, output) of the last batch

    def _example(self, n: int) -> torch.Tensor:
        x = torch.zeros(n, self.channels, self.height, self.width, device=self.device, dtype=self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cpu" else x

    def scores(self, n: int) -> list[float]:
        """Score the first n images staged in `host_np` (rows n.. may be scored as padding and ignored)."""
        m = next(b for b in self.buckets if b >= n) if self.buckets else n
        x = self.host[:m]
        if self.device.type == "cuda":
            x = x.to(self.device, non_blocking=True)
        x = x.to(self.dtype).div_(self.scale)  # (B, H, W[, 3]) in [0, 1]
        x = x.unsqueeze(1) if self.channels == 1 else x.permute(0, 3, 1, 2)  # (B, C, H, W)
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), GATE.run() if self.traced and self.device.type == "cpu" else nullcontext():
            recon = self.model(x)
            scores = self.reduction(x.float(), recon.float())  # (B,)
        self._last = (x, recon)
        return scores[:n].tolist()

    def heatmap(self, i: int) -> np.ndarray:
        """The heatmap of image i of the last batch scored (squared error, or the model's anomaly map): float32
        (H, W) at the model's input size."""
        assert self._last is not None, "heatmap() before scores()"
        x, out = self._last
        with torch.inference_mode():
            m = heat_map(x[i:i + 1].float(), out[i:i + 1].float(), self.output)[0]  # (H, W)
        return m.cpu().numpy().astype(np.float32, copy=False)

    def warm_up(self) -> None:
        """Run the model on blank batches so that the first real frame pays no start-up cost: on CUDA every
        padded size three times (TorchScript profiles a shape, then optimises it), a fused family's sizes once
        each (`fused_call` compiles and runs them), else max_batch and 1."""
        self.host_np[...] = 0
        for n in self.buckets if self.fused else self.buckets * 3 if self.buckets else (self.max_batch, 1):
            self.scores(n)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def batch_buckets(max_batch: int) -> list[int]:
    """The batch sizes a padded batch can have: powers of two below max_batch, and max_batch."""
    return [b for b in (2**i for i in range(max_batch.bit_length())) if b < max_batch] + [max_batch]


def fused_buckets(max_batch: int) -> list[int]:
    """The batch sizes a fused family's padded batch can have: every size up to 8, then `batch_buckets`'."""
    return list(range(1, min(max_batch, 8) + 1)) + [b for b in batch_buckets(max_batch) if b > 8]


def fuses_itself(model: torch.nn.Module, device: torch.device) -> bool:
    """Whether the model runs oneDNN-fused on this device by itself (patchcore on the CPU: `inspector.fused`)."""
    return device.type == "cpu" and bool(getattr(model, "fused_on_cpu", False))


def compiled(model: torch.nn.Module, example: torch.Tensor, log: Any) -> torch.nn.Module:
    """The model as the worker runs it with `jit`: where it fuses itself, its own fused run (`fused_run()`; a trace
    of it whole would record it unfused, in numbers training did not calibrate on), else traced and frozen."""
    if fuses_itself(model, example.device):
        return model.fused_run()  # type: ignore[operator,no-any-return]
    return trace(model, example, log)


def trace(model: torch.nn.Module, example: torch.Tensor, log: Any) -> torch.nn.Module:
    """The model traced and frozen with TorchScript (BatchNorm folded in), or the model itself if that fails."""
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in PyTorch 2.x
            # Sizes read from the example's shape (draem's scales) become constants: the worker feeds one size.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.freeze(torch.jit.trace(model, example, check_trace=False))
            tol = 2e-2 if example.dtype == torch.bfloat16 else 1e-3  # bf16 keeps 8 bits: fused ops round otherwise
            torch.testing.assert_close(traced(example), model(example), rtol=tol, atol=tol)
        return traced
    except Exception as exc:  # an unusual model family: eager still works
        if log is not None:
            log.warning("TorchScript tracing failed; running the model eagerly", error=str(exc).splitlines()[0])
        return model


class Worker:
    """Takes batches from its cameras' rings, scores them and hands verdicts to `emit`."""

    def __init__(self, name: str, scorer: Scorer, rings: list[FrameRing], cond: threading.Condition,
                 rois: dict[str, tuple[int, int, int, int] | None], cfg: WorkerConfig, fail_safe: str,
                 emit: Callable[[list[Verdict]], None], metrics: Any, log: Any, wants: Wants | None = None) -> None:
        self.name = name
        self.scorer = scorer
        self.rings = rings
        self.cond = cond
        self.cfg = cfg
        self.heartbeat = time.monotonic()
        self._rois = rois
        self._fail_safe = fail_safe
        self._emit = emit
        self._metrics = metrics
        self._log = log
        self._wants = wants
        self._next: Scorer | None = None  # a reloaded model waiting to be swapped in between batches
        self.swapped = threading.Event()
        self._burst = BurstLog(log)
        self._finish = threading.Event()  # stop once the rings are empty
        self._abort = threading.Event()  # stop after the batch in hand
        self._thread = threading.Thread(target=self._run, name=f"worker-{name}", daemon=True)

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def finish(self, timeout_s: float) -> bool:
        """Inspect what is buffered, then stop; abort after timeout_s. True when it drained everything."""
        self._finish.set()
        with self.cond:
            self.cond.notify_all()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._abort.set()
            self._thread.join(max(1.0, timeout_s))
            return False
        return True

    def swap(self, scorer: Scorer) -> None:
        """Hand over a new (loaded, warmed-up) scorer; the thread takes it before its next batch."""
        self.swapped.clear()
        self._next = scorer
        with self.cond:
            self.cond.notify_all()

    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread.is_alive()

    def _run(self) -> None:
        turn = 0
        max_wait = self.cfg.max_wait_ms / 1000.0
        while not self._abort.is_set():
            self.heartbeat = time.monotonic()
            if self._next is not None:
                self.scorer, self._next = self._next, None
                self.swapped.set()
            batch = collect(self.rings, self.cond, self.cfg.max_batch, max_wait, 0.25, turn)
            turn += 1
            if batch:
                self._emit(self._inspect(batch))
            elif self._finish.is_set():
                return

    def _inspect(self, batch: list[Frame]) -> list[Verdict]:
        s = self.scorer
        t0 = time.perf_counter()
        now = time.monotonic()
        deadline_s = self.cfg.deadline_ms / 1000.0
        verdicts: list[Verdict] = []
        staged: list[Frame] = []
        for frame in batch:
            if now - frame.t_capture > deadline_s:
                verdicts.append(self._fail(frame, DEADLINE))
                continue
            try:
                prepare(frame.image, self._rois[frame.camera], s.height, s.width, s.channels,
                        out=s.host_np[len(staged)], fit=s.fit, contrast=s.contrast)
            except Exception as exc:  # a frame the preprocessing cannot take (ROI outside it, odd format)
                self._burst("error", "preprocessing failed", frame.camera, seq=frame.seq, error=str(exc))
                verdicts.append(self._fail(frame, ERROR))
                continue
            staged.append(frame)
        if not staged:
            return verdicts
        try:
            scores = s.scores(len(staged))
        except Exception as exc:
            self._burst("error", "inference failed", ",".join(sorted({f.camera for f in staged})),
                        worker=self.name, batch=len(staged), error=f"{type(exc).__name__}: {exc}")
            return verdicts + [self._fail(f, ERROR) for f in staged]
        self._metrics.inference_seconds.observe(time.perf_counter() - t0)
        self._metrics.batch_size.observe(len(staged))
        thr = s.threshold
        for i, (frame, score) in enumerate(zip(staged, scores, strict=True)):
            if not math.isfinite(score):  # e.g. fp16 overflow: not a judgement anyone should act on
                self._burst("error", "non-finite score", frame.camera, seq=frame.seq, score=str(score))
                verdicts.append(self._fail(frame, ERROR))
                continue
            bad = score >= thr
            verdict, reason = (REJECT, ANOMALY) if bad else (ACCEPT, OK)
            evidence = None
            if self._wants is not None and self._wants(verdict, reason, frame.camera):
                h, w = crop(frame.image, self._rois[frame.camera]).shape[:2]
                evidence = Evidence(frame.image, unfit(s.heatmap(i), h, w, s.fit))  # the map of what was seen
            verdicts.append(Verdict(frame.camera, frame.seq, frame.part_id, frame.t_capture, frame.wall_time,
                                    verdict, reason, score, thr, s.label, frame.label, evidence, frame.camera_time))
        return verdicts

    def _fail(self, frame: Frame, reason: str) -> Verdict:
        v = fail_safe_verdict(frame, reason, self._fail_safe, self.scorer.threshold, self.scorer.label)
        if self._wants is not None and self._wants(v.verdict, v.reason, v.camera):
            v.evidence = Evidence(frame.image, None)
        return v


def fail_safe_verdict(frame: Frame, reason: str, verdict: str, threshold: float | None, model: str | None) -> Verdict:
    """The verdict of a part that was not inspected: `verdict` (reject unless fail-open), no score."""
    return Verdict(frame.camera, frame.seq, frame.part_id, frame.t_capture, frame.wall_time, verdict, reason, None,
                   threshold, model, frame.label, camera_time=frame.camera_time)

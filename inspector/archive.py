"""The reject archive: each selected verdict's frame, heatmap and message, saved by its own thread.

Layout: DIR/<YYYY-MM-DD>/<camera>/<seq>_<verdict>_<reason>{.png,_heatmap.png,.json} (UTC date of capture; a
name already taken, e.g. after a restart reset the seq, gets a `-N` suffix). At most `max_items` entries and
`max_megabytes`, the oldest deleted first; what is on disk at start counts. The daemon's `Archive` encodes and
writes off the hot path (a full queue drops the entry and counts it, never a frame); `inspector listen --save`
reuses `ArchiveWriter` for the images it receives.
"""

from __future__ import annotations

import json
import math
import queue
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import cv2
import numpy as np

from .config import ArchiveConfig
from .heatmap import heat_scale, overlay_roi
from .logs import BurstLog
from .types import REJECT, Evidence

IMAGE_TOPIC = "image."  # image messages: [b"image.<verdict>.<camera>", payload, frame, heatmap or b""]
HEATMAP_SUFFIX = "_heatmap"
_SUFFIXES = (".png", ".jpg", ".json")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def image_topic(verdict: str, camera: str) -> bytes:
    """`image.<verdict>.<camera>`: the topic of a verdict's images (subscribers of `reject.` never get them)."""
    return f"{IMAGE_TOPIC}{verdict}.{camera}".encode()


def image_ext(data: bytes) -> str:
    """The file extension of encoded image bytes: .png or .jpg (what the archive writes)."""
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    raise ValueError("not a PNG or JPEG image")


def _safe(value: Any) -> str:
    """A file-name part from a payload field (which may come from the network): [A-Za-z0-9_-] only."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", str(value))[:64] or "-"


@dataclass
class _Entry:
    paths: list[Path]
    size: int


class ArchiveWriter:
    """Writes entries under `directory` and keeps at most max_items and max_bytes, deleting the oldest first."""

    def __init__(self, directory: Path, max_items: int, max_bytes: int, log: Any) -> None:
        self.directory = Path(directory)
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.items = 0
        self.bytes = 0
        self._log = log
        self._entries: deque[_Entry] = deque()  # oldest first

    def scan(self) -> None:
        """Count what an earlier run left (DIR/<date>/<camera>/ entries), oldest first, and apply the bounds."""
        groups: dict[tuple[Path, str], list[Path]] = {}
        if self.directory.is_dir():
            for day in self.directory.iterdir():
                if not (day.is_dir() and _DATE.fullmatch(day.name)):
                    continue
                for cam in day.iterdir():
                    for path in cam.iterdir() if cam.is_dir() else ():
                        if path.suffix in _SUFFIXES and path.is_file():
                            stem = path.stem.removesuffix(HEATMAP_SUFFIX)
                            groups.setdefault((cam, stem), []).append(path)
        found = []
        for paths in groups.values():
            stats = [p.stat() for p in paths]
            found.append((min(s.st_mtime for s in stats), str(paths[0]), _Entry(paths, sum(s.st_size for s in stats))))
        found.sort(key=lambda item: (item[0], item[1]))
        self._entries = deque(entry for _, _, entry in found)
        self.items = len(self._entries)
        self.bytes = sum(e.size for e in self._entries)
        self._enforce()

    def write(self, payload: dict[str, Any], frame: bytes, heatmap: bytes | None) -> Path:
        """Write one entry (frame, heatmap if any, the payload as JSON); returns the JSON's path."""
        captured = payload.get("captured_at")
        when = captured if isinstance(captured, (int, float)) and math.isfinite(captured) else time.time()
        folder = self.directory / time.strftime("%Y-%m-%d", time.gmtime(when)) / _safe(payload.get("camera"))
        folder.mkdir(parents=True, exist_ok=True)
        base = f"{_safe(payload.get('seq'))}_{_safe(payload.get('verdict'))}_{_safe(payload.get('reason'))}"
        stem, n = base, 0
        while (folder / f"{stem}.json").exists():
            n += 1
            stem = f"{base}-{n}"
        files = [(folder / f"{stem}{image_ext(frame)}", frame)]
        if heatmap:
            files.append((folder / f"{stem}{HEATMAP_SUFFIX}{image_ext(heatmap)}", heatmap))
        files.append((folder / f"{stem}.json", json.dumps(payload, indent=1).encode()))
        size = 0
        for path, data in files:  # the JSON last: a sidecar means the entry is complete
            path.write_bytes(data)
            size += len(data)
        self._entries.append(_Entry([p for p, _ in files], size))
        self.items += 1
        self.bytes += size
        self._enforce()
        return files[-1][0]

    def _enforce(self) -> None:
        while self._entries and (self.items > self.max_items or self.bytes > self.max_bytes):
            old = self._entries.popleft()
            self.items -= 1
            self.bytes -= old.size
            for path in old.paths:
                path.unlink(missing_ok=True)
            for folder in (old.paths[0].parent, old.paths[0].parent.parent):  # camera, then date folder
                try:
                    folder.rmdir()
                except OSError:  # not empty (or already gone)
                    break


def encode(image: np.ndarray, ext: str) -> bytes:
    """An image encoded as .png or .jpg bytes."""
    ok, buf = cv2.imencode(ext, image)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} {image.dtype} image as {ext}")
    return buf.tobytes()


class Archive:
    """Saves selected verdicts with their evidence, on its own thread; `submit` never blocks and never raises.

    Disk (cfg.enabled) and the image topic (`publish`, set when publisher.publish_images) are independent: either
    makes `wants` select verdicts; the selection (cfg.rejects, cfg.accept_sample) is the same for both.
    """

    def __init__(self, cfg: ArchiveConfig, metrics: Any, log: Any, *,
                 publish: Callable[[list[bytes]], bool] | None = None,
                 rois: Mapping[str, tuple[int, int, int, int] | None] | None = None,
                 reduction_of: Callable[[str], str] | None = None) -> None:
        self.cfg = cfg
        self._metrics = metrics
        self._log = log
        self._burst = BurstLog(log)
        self._publish = publish
        self._rois = rois or {}
        self._reduction_of = reduction_of
        self._ext = f".{cfg.image_format}"
        self.writer = (ArchiveWriter(cfg.directory, cfg.max_items, int(cfg.max_megabytes * 1e6), log)
                       if cfg.enabled else None)
        self.active = cfg.enabled or publish is not None
        self._queue: queue.Queue[tuple[dict[str, Any], Evidence]] = queue.Queue(maxsize=cfg.queue)
        self._accepts: dict[str, int] = {}  # camera -> accepts seen by wants(), for the even sample
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()  # write what is queued, then stop
        self._abort = threading.Event()  # stop after the entry in hand
        self._closed = False
        if self.writer is not None:
            writer = self.writer
            metrics.archive_items.set_function(lambda: writer.items)
            metrics.archive_bytes.set_function(lambda: writer.bytes)

    def wants(self, verdict: str, reason: str, camera: str) -> bool:
        """Whether this verdict is to be archived (every reject if cfg.rejects; an even sample of accepts)."""
        if not self.active:
            return False
        if verdict == REJECT:
            return self.cfg.rejects
        share = self.cfg.accept_sample
        if share <= 0:
            return False
        with self._lock:
            n = self._accepts.get(camera, 0)
            self._accepts[camera] = n + 1
        return math.floor((n + 1) * share) > math.floor(n * share)

    def start(self) -> None:
        """Start the writing thread (it first counts what an earlier run left on disk)."""
        if self.active and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="archive", daemon=True)
            self._thread.start()

    def submit(self, payload: dict[str, Any], evidence: Evidence) -> bool:
        """Queue a published verdict (its payload as a dict) with its evidence; False when not queued."""
        camera = str(payload.get("camera"))
        try:
            if self._closed or not self.active:
                return False
            self._queue.put_nowait((payload, evidence))
            return True
        except queue.Full:
            self._metrics.archive_dropped.labels(camera).inc()
            self._burst("warning", "archive behind: entry dropped", camera, queue=self.cfg.queue)
        except Exception as exc:  # never let the archive disturb the publisher thread
            self._burst("error", "archive submit failed", camera, error=str(exc))
        return False

    def close(self, timeout_s: float) -> bool:
        """Write what is queued within timeout_s, then stop; False when entries were left. Idempotent."""
        self._closed = True
        if self._thread is None:
            return True
        self._closing.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._abort.set()
            self._log.warning("archive closed with entries not written", left=self._queue.qsize())
            self._thread.join(1.0)
            return False
        return True

    def _run(self) -> None:
        if self.writer is not None:
            try:
                self.writer.scan()
                self._log.info("archive opened", directory=str(self.writer.directory), items=self.writer.items,
                               megabytes=round(self.writer.bytes / 1e6, 3))
            except OSError as exc:
                self._log.error("archive directory cannot be read", directory=str(self.writer.directory),
                                error=str(exc))
        while not self._abort.is_set():
            try:
                payload, evidence = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._closing.is_set():
                    return
                continue
            self._save(payload, evidence)

    def _save(self, payload: dict[str, Any], evidence: Evidence) -> None:
        camera = str(payload.get("camera"))
        verdict = str(payload.get("verdict"))
        try:
            frame = encode(evidence.image, self._ext)
            heat = None
            if evidence.heatmap is not None:
                reduction = self._reduction_of(camera) if self._reduction_of else "smoothed_max"
                threshold = payload.get("threshold") or float(np.max(evidence.heatmap))
                picture = overlay_roi(evidence.image, evidence.heatmap, heat_scale(reduction, threshold),
                                      self._rois.get(camera))
                heat = encode(picture, self._ext)
            if self.writer is not None:
                self.writer.write(payload, frame, heat)
                self._metrics.archive_saved.labels(camera, verdict).inc()
        except Exception as exc:  # a full disk, a read-only directory, an odd frame: count it, keep going
            self._metrics.archive_dropped.labels(camera).inc()
            self._burst("error", "archive write failed", camera, seq=payload.get("seq"), error=str(exc))
            return
        if self._publish is not None:
            parts = [image_topic(verdict, camera), json.dumps(payload, separators=(",", ":")).encode(), frame,
                     heat or b""]
            if not self._publish(parts):
                self._burst("warning", "publisher busy: images not published", camera, seq=payload.get("seq"))

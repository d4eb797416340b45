"""`replay` source: a folder of images (labels from good/ and defect/ subfolders) or a video file."""

from __future__ import annotations

from pathlib import Path

import cv2

from ..config import ReplaySource
from ..images import list_labelled, read_image
from ..types import Grab, SourceClosed


class ReplayCamera:
    """Replays images or a video at a set rate, once or looping; part_id is the index in the sequence."""

    def __init__(self, cfg: ReplaySource) -> None:
        self.cfg = cfg
        self.interval_s = 1.0 / cfg.fps if cfg.fps > 0 else 0.0
        self._items: list[tuple[Path, str | None]] = []
        self._video: cv2.VideoCapture | None = None
        self._index = 0

    def open(self) -> None:
        """List the folder or open the video; OSError when there is nothing to replay."""
        path = self.cfg.path
        if path.is_dir():
            self._items = list_labelled(path)
            if not self._items:
                raise FileNotFoundError(f"no images in {path}")
        elif path.is_file():
            video = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
            if not video.isOpened():
                raise OSError(f"cannot open video {path}")
            self._video = video
        else:
            raise FileNotFoundError(f"{path} does not exist")

    def read(self) -> Grab:
        """The next image or video frame; SourceClosed at the end unless looping."""
        if self._video is not None:
            ok, image = self._video.read()
            if not ok and self.cfg.loop and self._index > 0:
                self._video.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, image = self._video.read()
            if not ok:
                if self._index == 0:
                    raise OSError(f"no frame could be read from {self.cfg.path}")
                raise SourceClosed()
        else:
            if self._index >= len(self._items):
                if not self.cfg.loop:
                    raise SourceClosed()
                self._index = 0
            path, label = self._items[self._index % len(self._items)]
            loaded = read_image(path)
            if loaded is None:
                raise OSError(f"cannot read image {path}")
            self._index += 1
            return Grab(image=loaded, part_id=self._index - 1, label=label)
        self._index += 1
        return Grab(image=image, part_id=self._index - 1)

    def close(self) -> None:
        """Release the video, if one is open."""
        if self._video is not None:
            self._video.release()
            self._video = None

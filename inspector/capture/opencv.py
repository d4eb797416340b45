"""`opencv` source: USB/V4L2 devices, video files, RTSP/HTTP streams, GStreamer pipelines."""

from __future__ import annotations

import cv2

from ..config import OpenCVSource
from ..types import Grab

BACKENDS = {"any": cv2.CAP_ANY, "ffmpeg": cv2.CAP_FFMPEG, "v4l2": cv2.CAP_V4L2, "gstreamer": cv2.CAP_GSTREAMER}


class OpenCVCamera:
    """A cv2.VideoCapture with open/read timeouts where the back-end has them (FFmpeg, GStreamer).

    Where it has none (V4L2), the camera thread's stall detector reconnects a camera that stops delivering.
    A file or stream that ends is a failure like any other: it is reopened with back-off.
    """

    def __init__(self, cfg: OpenCVSource) -> None:
        self.cfg = cfg
        self.interval_s = 1.0 / cfg.fps if cfg.fps and isinstance(cfg.source, str) else 0.0
        self._cap: cv2.VideoCapture | None = None

    def open(self) -> None:
        """Open the device, file or stream; OSError when it cannot be opened."""
        backend = BACKENDS[self.cfg.backend]
        if backend != cv2.CAP_ANY and not cv2.videoio_registry.hasBackend(backend):
            raise OSError(f"this OpenCV build ({cv2.__version__}) has no {self.cfg.backend} back-end; the "
                          "opencv-python wheels have no GStreamer: build OpenCV with it or use the ffmpeg back-end")
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.cfg.open_timeout_ms,
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.cfg.read_timeout_ms]
        source = self.cfg.source
        if isinstance(source, str) and source.isdigit():
            source = int(source)
        cap = cv2.VideoCapture(source, backend, params)
        if not cap.isOpened():
            cap.release()
            raise OSError(f"OpenCV cannot open {self.cfg.source!r} (back-end {self.cfg.backend})")
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, self.cfg.width), (cv2.CAP_PROP_FRAME_HEIGHT, self.cfg.height),
                            (cv2.CAP_PROP_FPS, self.cfg.fps)):
            if value is not None and isinstance(source, int):
                cap.set(prop, value)
        self._cap = cap

    def read(self) -> Grab:
        """The next frame; OSError when the read fails, times out or the stream ends."""
        if self._cap is None:
            raise OSError("camera is not open")
        ok, image = self._cap.read()
        if not ok or image is None:
            raise OSError(f"no frame from {self.cfg.source!r} (ended, timed out or disconnected)")
        return Grab(image=image)

    def close(self) -> None:
        """Release the capture."""
        if self._cap is not None:
            self._cap.release()
            self._cap = None

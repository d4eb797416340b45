"""Logging: configured once, by the CLI. JSON lines off a terminal (journald), console output on one."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

import structlog


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure structlog to write to stderr at `level`, as JSON or console output."""
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()) if use_console else (
        structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(component: str) -> Any:
    """A logger bound to a component name."""
    return structlog.get_logger().bind(component=component)


class BurstLog:
    """Logs an event at most once per `interval_s` per camera, with how many happened since the last line.

    For what can repeat at frame rate (drops, a bad ROI, a failing model): the first occurrence is logged at
    once, a burst costs one line a second, and the count says how big it was.
    """

    def __init__(self, log: Any, interval_s: float = 1.0) -> None:
        self._log = log
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}  # (event, camera) -> (last logged, count since)

    def __call__(self, level: str, event: str, camera: str, **context: Any) -> None:
        """Count one occurrence; log it (with the count) when the last line for it is interval_s old."""
        now = time.monotonic()
        key = (event, camera)
        with self._lock:
            since, count = self._seen.get(key, (-self._interval_s, 0))
            if now - since < self._interval_s:
                self._seen[key] = (since, count + 1)
                return
            self._seen[key] = (now, 0)
        getattr(self._log, level)(event, camera=camera, count=count + 1, **context)

"""A tiny progress bar on stderr: a redrawn line on a terminal, a line every ~10% otherwise."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

_WIDTH = 28


class Progress:
    """Counts work done out of a known total and shows it; use as a context manager or call close()."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total = max(int(total), 0)
        self.label = label
        self.done = 0
        self.postfix = ""
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = enabled and self.total > 0
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._last_decile = -1
        self._closed = False

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        """Record n more units of work done, with an optional short status (e.g. the loss)."""
        self.done = min(self.done + n, self.total)
        if postfix is not None:
            self.postfix = postfix
        if not self._enabled:
            return
        if self._tty:
            now = time.monotonic()
            if now - self._last_draw >= 0.1 or self.done >= self.total:
                self._last_draw = now
                self._stream.write("\r" + self._line() + "\x1b[K")
                self._stream.flush()
            return
        decile = (10 * self.done) // self.total
        if decile > self._last_decile:
            self._last_decile = decile
            self._stream.write(self._line() + "\n")
            self._stream.flush()

    def close(self) -> None:
        """Finish the bar (ends the redrawn line on a terminal)."""
        if self._closed:
            return
        self._closed = True
        if self._enabled and self._tty:
            self._stream.write("\r" + self._line() + "\x1b[K\n")
            self._stream.flush()

    def _line(self) -> str:
        frac = self.done / self.total if self.total else 1.0
        filled = int(round(frac * _WIDTH))
        bar = "#" * filled + "." * (_WIDTH - filled)
        elapsed = time.monotonic() - self._start
        eta = f" eta {elapsed / frac - elapsed:5.0f}s" if 0 < frac < 1 else ""
        tail = f" {self.postfix}" if self.postfix else ""
        return f"{self.label} [{bar}] {self.done}/{self.total} {elapsed:5.1f}s{eta}{tail}"

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

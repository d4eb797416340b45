"""Torch work done on a thread of its own, so that the thread that asked for it keeps no OpenMP pool.

On the CPU, torch runs its parallel operators on OpenMP (libgomp in the PyPI wheels). Every thread that starts a
parallel region gets a pool of helper threads of its own, kept until that thread exits. While a process holds
more such threads than it has cores, libgomp cuts the helpers' busy-wait between regions to a token count, so
they fall asleep and must be woken for each of the hundreds of regions of one forward pass. A daemon that loaded
and warmed its model on the main thread and ran it on the worker thread did exactly that: on 2 cores the worker
ran the model at 0.4-0.8 times the frames/s of the same model run where it was built, with a core partly idle
(docs/quality.md, section "Speed"). Loading, tracing and warming up on a short-lived thread leaves the worker's
pool the only one, and the model runs at full speed.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def in_own_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """fn(*args, **kwargs) on a fresh thread that ends when fn returns (and takes its OpenMP pool with it): fn's
    result, or its exception raised again here."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the caller, whatever it is
            out["error"] = exc

    thread = threading.Thread(target=run, name=f"setup-{getattr(fn, '__name__', 'task')}")
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["result"]

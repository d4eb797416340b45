"""inspector.threads: torch work on a thread that ends with it, so that the caller keeps no OpenMP pool."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch

from inspector.threads import in_own_thread

from .conftest import camera, make_model, sections, write_config


def _os_threads() -> set[int]:
    """The ids of the process's OS threads (ids, not a count: another test's thread may end meanwhile)."""
    return {int(tid) for tid in os.listdir("/proc/self/task")}


def _parallel_work() -> float:
    return torch.ones(4_000_000).mul_(2).sum().item()  # large enough for torch to start an OpenMP region


def _gone(tids: set[int], timeout_s: float = 5.0) -> set[int]:
    """Those of tids still alive once they have ended (or after timeout_s)."""
    end = time.monotonic() + timeout_s
    while tids & _os_threads() and time.monotonic() < end:
        time.sleep(0.01)
    return tids & _os_threads()


def test_result_and_exception_come_back() -> None:
    assert in_own_thread(lambda a, b=0: a + b, 2, b=3) == 5
    callers = []
    in_own_thread(lambda: callers.append(threading.get_ident()))
    assert callers and callers[0] != threading.get_ident()
    with pytest.raises(KeyError, match="missing"):
        in_own_thread(lambda: {}["missing"])


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc")
def test_the_thread_takes_its_openmp_pool_with_it() -> None:
    """A thread that ran a parallel torch operator keeps helper threads while it lives (the control: so the count
    can see them); in_own_thread leaves none behind."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    done, release = threading.Event(), threading.Event()
    try:
        before = _os_threads()

        def stay() -> None:
            _parallel_work()
            done.set()
            release.wait(30)

        alive = threading.Thread(target=stay, daemon=True)
        alive.start()
        assert done.wait(30)
        kept = _os_threads() - before
        assert len(kept) >= 2  # the thread itself and at least one OpenMP helper
        release.set()
        alive.join(30)
        assert _gone(kept) == set()

        started: list[set[int]] = []

        def work() -> float:
            result = _parallel_work()
            started.append(_os_threads() - before)
            return result

        assert in_own_thread(work) == 8_000_000
        assert len(started[0]) >= 2  # it ran on a thread of its own, with a helper
        assert _gone(started[0]) == set()
    finally:
        release.set()  # a failed assertion must not leave the thread waiting, and pytest with it
        torch.set_num_threads(threads)


def test_the_daemon_loads_traces_and_warms_up_off_its_main_thread(tmp_path: Path, line_factory,
                                                                 monkeypatch) -> None:
    """Service.start (and reload) build their scorers on threads of their own: the thread that calls them, the
    daemon's main thread, runs no torch work, so the worker's OpenMP pool stays the only one."""
    import inspector.service as service_mod
    from inspector.config import load_config
    from inspector.worker import Scorer

    seen: list[tuple[str, int]] = []
    load, warm = service_mod.load_artifact, Scorer.warm_up
    monkeypatch.setattr(service_mod, "load_artifact",
                        lambda path: (seen.append(("load", threading.get_ident())), load(path))[1])
    monkeypatch.setattr(Scorer, "warm_up", lambda self: (seen.append(("warm", threading.get_ident())), warm(self))[1])
    model = make_model(tmp_path / "m", size=32)
    source = '{ type = "synthetic", fps = 50, width = 64, height = 64 }'
    cfg = write_config(tmp_path / "c.toml", camera("cam1", model, source), **sections(tmp_path))
    line = line_factory(cfg)
    line.service._loader = lambda: load_config(cfg)  # as `inspector run` gives it, for the reload
    line.start().receive_verdicts(2)
    assert line.service.reload()
    line.stop()
    assert [what for what, _ in seen] == ["load", "warm", "load", "warm"]
    assert threading.get_ident() not in {ident for _, ident in seen}

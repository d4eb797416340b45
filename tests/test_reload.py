"""Hot reload (SIGHUP) under load, and the systemd watchdog that stops when a worker hangs."""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from inspector.config import load_config
from inspector.sdnotify import Notifier
from inspector.service import Service

from .conftest import make_model
from .test_lifecycle import config, read_until, start, subscriber, terminate


def notifications(sock: socket.socket) -> list[str]:
    """Every sd_notify datagram waiting on the socket."""
    got = []
    sock.setblocking(False)
    try:
        while True:
            got.append(sock.recv(4096).decode())
    except BlockingIOError:
        return got


def test_sighup_swaps_the_model_without_losing_a_frame_and_a_bad_reload_changes_nothing(tmp_path: Path) -> None:
    """A reload under load: every captured frame gets exactly one message across the swap, the messages name the
    old model, then the new one (never back), with the new threshold. A reload with a bad config or a missing
    model logs one error and the daemon goes on with what it had. systemd hears RELOADING=1 and READY=1 each time."""
    old, new = make_model(tmp_path / "old", threshold=0.05), make_model(tmp_path / "new", seed=1, threshold=0.07)
    cfg = config(tmp_path, old, fps=100)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    sub = subscriber(f"ipc://{tmp_path}/pub.ipc")
    proc = start(cfg, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    try:
        msgs = read_until(sub, 1.0)
        while sum(t != "heartbeat" for t, _ in msgs) < 60 and proc.poll() is None:
            msgs += read_until(sub, 0.2)
        config(tmp_path, new, fps=100)  # the same file, now naming the new model
        proc.send_signal(signal.SIGHUP)
        msgs += read_until(sub, 2.5)
        cfg.write_text(cfg.read_text() + "\nbogus = 1\n")
        proc.send_signal(signal.SIGHUP)
        msgs += read_until(sub, 1.5)
        config(tmp_path, tmp_path / "missing", fps=100)
        proc.send_signal(signal.SIGHUP)
        msgs += read_until(sub, 1.5)
        msgs += terminate(proc, sub)
    finally:
        proc.kill()
        sub.close()
    told = "".join(notifications(notify))
    notify.close()
    logs = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
    events = [e["event"] for e in logs]
    assert events.count("reloaded") == 1 and events.count("reload failed; still running the previous config "
                                                              "and models") == 2, events
    errors = [e["error"] for e in logs if e["event"].startswith("reload failed")]
    assert "bogus" in errors[0] and "missing" in errors[1]
    assert told.count("RELOADING=1") == 3 and told.count("READY=1") == 4  # start-up + one per reload
    status = re.search(r"STATUS=([\d.]+) parts/s, (\d+) rejected.* cameras up 1/1; model new/", told)
    assert status and float(status.group(1)) > 0, "STATUS= (systemctl status) is refreshed with rate and rejects"
    captured = next(e for e in logs if e["event"] == "stopped")["frames"]["cam1"]
    verdicts = sorted((p for t, p in msgs if t != "heartbeat"), key=lambda p: p["seq"])
    assert [p["seq"] for p in verdicts] == list(range(captured)), "no frame without a message across the swaps"
    models = [p["model"].split("/")[0] for p in verdicts]
    swap = models.index("new")
    assert swap > 50 and models == ["old"] * swap + ["new"] * (len(models) - swap)
    assert len(models) - swap > 200, "the new model kept running after the two bad reloads"
    assert {p["threshold"] for p in verdicts[:swap]} == {0.05} and {p["threshold"] for p in verdicts[swap:]} == {0.07}


def test_watchdog_pings_stop_while_a_worker_hangs_and_resume_after(tmp_path: Path) -> None:
    """WATCHDOG=1 goes out only while every thread is alive: a worker stuck in inference stops the pings (so
    systemd would restart the service); once it runs again, they resume."""
    model = make_model(tmp_path / "m")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "200000"})
    service = Service(load_config(config(tmp_path, model)), registry=CollectorRegistry(), notifier=notifier,
                      liveness_s=1.0)
    sub = subscriber(f"ipc://{tmp_path}/pub.ipc")
    service.start()
    runner = threading.Thread(target=service.run, daemon=True)
    runner.start()
    release = threading.Event()
    scorer = service.workers[0].scorer
    real_scores = scorer.scores

    def stuck(n: int) -> list[float]:
        release.wait(30)
        return real_scores(n)

    try:
        time.sleep(0.6)
        before = notifications(notify)
        scorer.scores = stuck  # type: ignore[method-assign]  # the worker's next batch never returns
        time.sleep(1.5)  # liveness_s plus a batch: from here on the heartbeat is stale
        notifications(notify)
        time.sleep(2.0)
        while_stuck = notifications(notify)
        release.set()
        time.sleep(1.0)
        after = notifications(notify)
    finally:
        release.set()
        service.stop_event.set()
        runner.join(5)
        service.shutdown()
        sub.close()
        notify.close()
    assert sum("WATCHDOG=1" in m for m in before) >= 2
    assert not any("WATCHDOG=1" in m for m in while_stuck), while_stuck
    assert sum("WATCHDOG=1" in m for m in after) >= 2

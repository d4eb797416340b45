"""The daemon as a subprocess, as systemd runs it: start-up errors, sd_notify, SIGTERM drain, SIGINT twice."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import zmq

from .conftest import REPO, make_model, write_config


def config(tmp_path: Path, model: Path, fps: float = 50, capacity: int = 16, **worker: object) -> Path:
    cams = (f'[[cameras]]\nid = "cam1"\nmodel = "{model}"\n'
            f'source = {{ type = "synthetic", fps = {fps}, width = 64, height = 64, bank_size = 8 }}\n')
    return write_config(tmp_path / "c.toml", cams,
                        publisher={"endpoint": f"ipc://{tmp_path}/pub.ipc", "wait_for_subscribers": 1},
                        buffer={"capacity": capacity}, worker={"drain_timeout_s": 5.0, **worker},
                        metrics={"port": 0}, logging={"format": "json"})


def start(cfg: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "inspector", "run", "--config", str(cfg)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def subscriber(endpoint: str) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt_string(zmq.SUBSCRIBE, "")
    sock.connect(endpoint)
    return sock


def read_until(sock: zmq.Socket, seconds: float, done: Callable[[list[tuple[str, dict]]], bool] = lambda _: False,
               quiet_s: float | None = None) -> list[tuple[str, dict]]:
    """Messages until `seconds` pass or `done(messages so far)` holds; with `quiet_s`, only once none came for that
    long. Deadlines are generous: a loaded machine starts and stops the daemon slowly."""
    out = []
    end = time.monotonic() + seconds
    last = time.monotonic()
    while time.monotonic() < end:
        if sock.poll(100):
            topic, payload = sock.recv_multipart()
            out.append((topic.decode(), json.loads(payload)))
            last = time.monotonic()
        if done(out) and (quiet_s is None or time.monotonic() - last >= quiet_s):
            break
    return out


def has_verdict(msgs: list[tuple[str, dict]]) -> bool:
    return any(t != "heartbeat" for t, _ in msgs)


def until_first_verdict(sock: zmq.Socket, proc: subprocess.Popen) -> list[tuple[str, dict]]:
    """Messages until the daemon's first verdict (or its exit): it is running and publishing."""
    return read_until(sock, 60.0, lambda got: has_verdict(got) or proc.poll() is not None)


def terminate(proc: subprocess.Popen, sock: zmq.Socket) -> list[tuple[str, dict]]:
    """SIGTERM the daemon, collect what its shutdown drains until it has exited and its socket is quiet, and
    check that it exits 0."""
    proc.send_signal(signal.SIGTERM)
    msgs = read_until(sock, 60.0, lambda _: proc.poll() is not None, quiet_s=0.5)
    assert proc.wait(20) == 0
    return msgs


def test_sigterm_drains_publishes_everything_and_exits_0(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m")
    cfg = config(tmp_path, model)
    sub = subscriber(f"ipc://{tmp_path}/pub.ipc")
    proc = start(cfg)
    try:
        msgs = until_first_verdict(sub, proc)
        assert has_verdict(msgs), proc.stderr.read() if proc.poll() is not None else ""
        msgs += terminate(proc, sub)
    finally:
        proc.kill()
        sub.close()
    err = proc.stderr.read()
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    events = [entry["event"] for entry in logs]
    assert events.index("ready") < events.index("shutting down") < events.index("stopped")
    captured = next(entry for entry in logs if entry["event"] == "stopped")["frames"]["cam1"]
    seqs = sorted(p["seq"] for t, p in msgs if t != "heartbeat")
    assert seqs == list(range(captured)), "every captured frame gets exactly one message, drained at shutdown"
    assert "Traceback" not in err


def test_sd_notify_ready_and_watchdog(tmp_path: Path) -> None:
    """Under systemd (Type=notify) the daemon sends READY=1 after warm-up, WATCHDOG=1, then STOPPING=1."""
    model = make_model(tmp_path / "m")
    cfg = config(tmp_path, model)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(10)
    sub = subscriber(f"ipc://{tmp_path}/pub.ipc")
    proc = start(cfg, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"})
    got: list[str] = []
    try:
        while not any("WATCHDOG=1" in m for m in got):
            got.append(notify.recv(4096).decode())
        proc.send_signal(signal.SIGTERM)
        while not any("STOPPING=1" in m for m in got):
            got.append(notify.recv(4096).decode())
        assert proc.wait(20) == 0
    finally:
        proc.kill()
        notify.close()
        sub.close()
    assert "READY=1" in got[0]


def test_second_sigint_forces_exit_without_draining(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m")
    cfg = config(tmp_path, model, drain_timeout_s=30.0)
    sub = subscriber(f"ipc://{tmp_path}/pub.ipc")
    proc = start(cfg)
    try:
        msgs = until_first_verdict(sub, proc)
        assert has_verdict(msgs), "the daemon should be running (and publishing) before it is interrupted"
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    finally:
        proc.kill()
        sub.close()


@pytest.mark.parametrize("damage", ["missing", "truncated", "not_a_model", "wrong_shape"])
def test_bad_model_is_a_clear_error_before_any_camera_opens(tmp_path: Path, damage: str) -> None:
    model = make_model(tmp_path / "m")
    weights = model / "weights.pt"
    if damage == "missing":
        model = tmp_path / "nowhere"
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "not_a_model":
        (model / "model.json").write_text('{"hello": "world"}')
    else:
        other = make_model(tmp_path / "other", size=64)
        meta = json.loads((other / "model.json").read_text())
        meta["hparams"]["base_width"] = 8
        (other / "model.json").write_text(json.dumps(meta))
        model = other
    cfg = config(tmp_path, model)
    proc = subprocess.run([sys.executable, "-m", "inspector", "run", "--config", str(cfg)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("inspector: error: ") and str(model) in last
    assert "Traceback" not in proc.stderr and "camera state" not in proc.stderr
    expected = {"missing": "does not exist", "truncated": "checksum", "not_a_model": "not an inspector model",
                "wrong_shape": "do not fit"}[damage]
    assert expected in last


def test_bad_config_exits_2_with_one_message(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[cameras]]\nid = "cam 1"\nmodel = "m"\nsource = { type = "synthetic" }\n')
    proc = subprocess.run([sys.executable, "-m", "inspector", "run", "--config", str(cfg)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "cameras[0].id (line 2)" in proc.stderr and "Traceback" not in proc.stderr


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    cams = f'[[cameras]]\nid = "cam1"\nmodel = "{model}"\nsource = {{ type = "synthetic" }}\n'
    cfg = write_config(tmp_path / "c.toml", cams, publisher={"endpoint": f"tcp://127.0.0.1:{port}"})
    try:
        proc = subprocess.run([sys.executable, "-m", "inspector", "run", "--config", str(cfg)], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
    finally:
        busy.close()
    assert proc.returncode == 1
    assert f"cannot bind publisher to tcp://127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr

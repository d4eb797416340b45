"""The ZeroMQ publisher and the wire format of its messages.

Every verdict is one multipart message [topic, payload]: topic `accept.<camera>` or `reject.<camera>`,
payload UTF-8 JSON (SCHEMA_VERSION). A `heartbeat` message goes out every `heartbeat_s`. Other threads may hand
the publisher ready-made messages (`submit_raw`: the archive's `image.<verdict>.<camera>` messages).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import zmq

from .config import PublisherConfig
from .types import ANOMALY, DEADLINE, OK, Verdict

SCHEMA_VERSION = 1
HEARTBEAT_TOPIC = b"heartbeat"


def verdict_topic(v: Verdict) -> bytes:
    """`reject.<camera>` or `accept.<camera>`."""
    return f"{v.verdict}.{v.camera}".encode()


def verdict_message(v: Verdict, latency_ms: float) -> dict[str, Any]:
    """The fields of a verdict message (what its JSON payload holds)."""
    return {
        "schema": SCHEMA_VERSION,
        "camera": v.camera,
        "seq": v.seq,
        "part_id": v.part_id,
        "captured_at": v.wall_time,
        "verdict": v.verdict,
        "reason": v.reason,
        "score": v.score,
        "threshold": v.threshold,
        "latency_ms": round(latency_ms, 3),
        "model": v.model,
        "label": v.label,
        "camera_time": v.camera_time,
    }


def verdict_payload(v: Verdict, latency_ms: float) -> bytes:
    """The JSON payload of a verdict message."""
    return json.dumps(verdict_message(v, latency_ms), separators=(",", ":")).encode()


def heartbeat_payload(uptime_s: float, last_seq: dict[str, int | None], cameras_up: dict[str, bool]) -> bytes:
    """The JSON payload of a heartbeat: uptime and, per camera, the highest seq published and whether it is up."""
    return json.dumps({
        "schema": SCHEMA_VERSION,
        "sent_at": time.time(),
        "uptime_s": round(uptime_s, 3),
        "cameras": {cam: {"last_seq": seq, "up": cameras_up.get(cam, False)} for cam, seq in last_seq.items()},
    }, separators=(",", ":")).encode()


MAX_RAW_PENDING = 64  # ready-made messages (images) waiting for the publisher thread, at most


@dataclass(slots=True)
class _Raw:
    parts: list[bytes]


class Publisher:
    """Owns the PUB socket in its own thread; others hand it lists of verdicts through `submit`.

    Sending never blocks: ZeroMQ drops messages for a subscriber past its high-water mark. A verdict whose
    publication comes later than deadline_ms after capture is replaced by the fail-safe one (reason deadline).
    `on_published(verdict, message)` is called on the publisher thread, after sending, for each verdict that carries
    evidence (the archive's hook; it must be cheap).
    """

    def __init__(self, cfg: PublisherConfig, cameras: list[str], deadline_ms: float, fail_safe: str,
                 record: Callable[[Verdict, float], None], cameras_up: Callable[[], dict[str, bool]],
                 log: Any, started: float, overflow: Callable[[Verdict], None] | None = None,
                 on_published: Callable[[Verdict, dict[str, Any]], None] | None = None) -> None:
        self.cfg = cfg
        self._deadline_s = deadline_ms / 1000.0
        self._fail_safe = fail_safe
        self._record = record
        self._cameras_up = cameras_up
        self._log = log
        self._started = started
        self._queue: queue.SimpleQueue[list[Verdict] | _Raw | None] = queue.SimpleQueue()
        self._pending = 0  # verdicts queued and not yet sent; bounded by cfg.max_pending
        self._raw_pending = 0  # ready-made messages queued; bounded by MAX_RAW_PENDING
        self._closed = False
        self._on_published = on_published
        self._pending_lock = threading.Lock()
        self._overflow = overflow or (lambda v: None)
        self._last_seq: dict[str, int | None] = {cam: None for cam in cameras}
        self._ctx: zmq.Context = zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self._thread: threading.Thread | None = None
        self.subscriptions = 0
        self.heartbeat_at = time.monotonic()  # liveness stamp for the watchdog
        self.endpoint = ""

    def bind(self) -> str:
        """Bind the socket (an XPUB, so that subscriptions can be counted); returns the bound endpoint."""
        sock = self._ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.SNDHWM, self.cfg.sndhwm)
        sock.setsockopt(zmq.LINGER, self.cfg.linger_ms)
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # pass every subscription up, so each subscriber is counted
        try:
            sock.bind(self.cfg.endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise OSError(f"cannot bind publisher to {self.cfg.endpoint}: {exc}") from None
        self._sock = sock
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return self.endpoint

    def wait_for_subscribers(self, count: int, timeout_s: float, stop: threading.Event) -> int:
        """Before the thread starts: wait until `count` subscriptions arrived or timeout; returns how many."""
        assert self._sock is not None and self._thread is None
        until = time.monotonic() + timeout_s
        while self.subscriptions < count and not stop.is_set():
            left = until - time.monotonic()
            if left <= 0:
                break
            if self._sock.poll(int(min(left, 0.1) * 1000), zmq.POLLIN):
                self._read_subscriptions()
        return self.subscriptions

    def start(self) -> None:
        """Start the sending thread."""
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()

    def submit(self, verdicts: list[Verdict]) -> None:
        """Queue verdicts for publication (never blocks); past max_pending they are counted, not queued."""
        with self._pending_lock:
            room = self.cfg.max_pending - self._pending
            if room >= len(verdicts):
                self._pending += len(verdicts)
            else:
                self._pending += max(room, 0)
        if room < len(verdicts):
            for v in verdicts[max(room, 0):]:
                self._overflow(v)
            verdicts = verdicts[: max(room, 0)]
        if verdicts:
            self._queue.put(verdicts)

    def submit_raw(self, parts: list[bytes]) -> bool:
        """Queue a ready-made multipart message for the publisher thread to send; never blocks. False (not
        queued) when MAX_RAW_PENDING are waiting or the publisher is closed."""
        with self._pending_lock:
            if self._closed or self._raw_pending >= MAX_RAW_PENDING:
                return False
            self._raw_pending += 1
        self._queue.put(_Raw(parts))
        return True

    def close(self, timeout_s: float) -> bool:
        """Publish everything queued, then close the socket (lingering up to linger_ms); False on time-out."""
        with self._pending_lock:
            self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout_s)
            if self._thread.is_alive():  # the thread owns the socket; it closes it when it gets there
                self._log.warning("publisher still flushing at close", pending=self._pending)
                return False
        elif self._sock is not None:
            self._sock.close()
        self._sock = None
        return True

    def _run(self) -> None:
        next_beat = time.monotonic()
        while True:
            now = time.monotonic()
            self.heartbeat_at = now
            if now >= next_beat:
                self._heartbeat(now)
                next_beat = now + self.cfg.heartbeat_s
            try:
                item = self._queue.get(timeout=max(0.0, min(next_beat - time.monotonic(), 0.5)))
            except queue.Empty:
                continue
            if item is None:
                self._heartbeat(time.monotonic())
                assert self._sock is not None
                self._sock.close()  # closed by the thread that uses it: ZeroMQ sockets are not thread-safe
                return
            if isinstance(item, _Raw):
                self._send_raw(item.parts)
                continue
            try:
                self._send(item)
            except Exception:  # never let one bad message stop publication; the log says what happened
                self._log.exception("publishing failed", count=len(item))
            with self._pending_lock:
                self._pending -= len(item)

    def _send(self, verdicts: list[Verdict]) -> None:
        sock = self._sock
        assert sock is not None
        for v in verdicts:
            now = time.monotonic()
            latency = now - v.t_capture
            if latency > self._deadline_s and v.reason in (OK, ANOMALY):
                v.verdict, v.reason, v.score = self._fail_safe, DEADLINE, None
            message = verdict_message(v, latency * 1000.0)
            try:
                sock.send_multipart([verdict_topic(v), json.dumps(message, separators=(",", ":")).encode()],
                                    flags=zmq.NOBLOCK)
            except zmq.Again:
                self._log.warning("publish dropped by ZeroMQ", camera=v.camera, seq=v.seq)
            if v.evidence is not None and self._on_published is not None:
                try:
                    self._on_published(v, message)
                except Exception:  # the hook (the archive) must never stop publication
                    self._log.exception("on_published failed", camera=v.camera, seq=v.seq)
            last = self._last_seq.get(v.camera)
            if last is None or v.seq > last:  # a drop can be published before older frames in flight
                self._last_seq[v.camera] = v.seq
            self._record(v, latency)
        if sock.poll(0, zmq.POLLIN):
            self._read_subscriptions()

    def _send_raw(self, parts: list[bytes]) -> None:
        assert self._sock is not None
        try:
            self._sock.send_multipart(parts, flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # past a subscriber's high-water mark: dropped for it, like any message
        except Exception:
            self._log.exception("publishing a raw message failed", topic=parts[0][:64].decode(errors="replace"))
        finally:
            with self._pending_lock:
                self._raw_pending -= 1

    def _heartbeat(self, now: float) -> None:
        assert self._sock is not None
        payload = heartbeat_payload(now - self._started, self._last_seq, self._cameras_up())
        try:
            self._sock.send_multipart([HEARTBEAT_TOPIC, payload], flags=zmq.NOBLOCK)
        except zmq.Again:
            pass
        if self._sock.poll(0, zmq.POLLIN):
            self._read_subscriptions()

    def _read_subscriptions(self) -> None:
        assert self._sock is not None
        while True:
            try:
                msg = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg[:1] == b"\x01":
                self.subscriptions += 1
                self._log.info("subscriber joined", topic=msg[1:].decode(errors="replace"))
            elif msg[:1] == b"\x00":
                self.subscriptions = max(0, self.subscriptions - 1)
                self._log.info("subscriber left", topic=msg[1:].decode(errors="replace"))

"""`inspector listen`: subscribe to a publisher; print verdicts, heartbeats, sequence gaps, silence and model
changes as they arrive; optionally save the archive images the daemon publishes (`--save DIR`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import zmq

from .archive import IMAGE_TOPIC, ArchiveWriter
from .logs import get_logger

VERDICT_TOPICS = ("accept.", "reject.")
MAX_TRACKED = 100_000  # missing seqs tracked one by one per camera; a bigger jump is reported at once
Event = dict[str, Any]


def format_message(topic: str, payload: dict) -> str:
    """One human-readable line for a verdict or heartbeat."""
    if topic == "heartbeat":
        cams = " ".join(f"{c}:{'up' if s['up'] else 'DOWN'}@{s['last_seq']}" for c, s in payload["cameras"].items())
        return f"heartbeat uptime={payload['uptime_s']:.1f}s {cams}"
    score = "-" if payload["score"] is None else f"{payload['score']:.5f}"
    label = f" label={payload['label']}" if payload.get("label") else ""
    return (f"{payload['verdict'].upper():6s} {payload['camera']} seq={payload['seq']} part={payload['part_id']} "
            f"score={score} thr={payload['threshold']:.5f} reason={payload['reason']} "
            f"latency={payload['latency_ms']:.1f}ms{label}") if payload["threshold"] is not None else (
            f"{payload['verdict'].upper():6s} {payload['camera']} seq={payload['seq']} reason={payload['reason']} "
            f"latency={payload['latency_ms']:.1f}ms{label}")


def format_event(event: Event) -> str:
    """One human-readable line for what the Monitor noticed."""
    kind = event["event"]
    if kind == "gap":
        seqs = f"{event['first']}" if event["first"] == event["last"] else f"{event['first']}..{event['last']}"
        return f"GAP    {event['camera']} seq={seqs} never received ({event['count']} message(s) lost)"
    if kind == "late":
        return f"LATE   {event['camera']} seq={event['seq']} arrived after it was reported lost"
    if kind == "heartbeat_lost":
        return f"HEARTBEAT LOST: none for {event['silent_s']:.1f} s (daemon down, hung or unreachable?)"
    if kind == "heartbeat_back":
        return f"HEARTBEAT BACK after {event['silent_s']:.1f} s of silence"
    if kind == "model_changed":
        return f"MODEL  {event['camera']} {event['old']} -> {event['new']} (the daemon reloaded its model)"
    if kind == "restarted":
        return f"RESTART the daemon restarted (uptime {event['uptime_s']:.1f} s); sequence numbers start again"
    return json.dumps(event)


class Monitor:
    """What a subscriber can tell from the stream: lost verdicts (per-camera seq gaps, also against heartbeats'
    `last_seq`), a silent daemon (no heartbeat for heartbeat_timeout_s), model changes and restarts.

    Verdicts may arrive slightly out of order (a dropped frame's fail-safe verdict overtakes a batch in
    inference), so a missing seq is reported only when still missing after gap_grace_s.
    """

    def __init__(self, now: float, gap_grace_s: float = 2.0, heartbeat_timeout_s: float = 3.0,
                 track_gaps: bool = True) -> None:
        self.gap_grace_s = gap_grace_s
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.track_gaps = track_gaps
        self._highest: dict[str, int] = {}  # camera -> highest seq seen (verdict or heartbeat)
        self._missing: dict[str, dict[int, float]] = {}  # camera -> seq -> when it was first missed
        self._reported: dict[str, set[int]] = {}  # camera -> seqs reported lost (to tell late arrivals)
        self._model: dict[str, str] = {}
        self._last_beat = now
        self._started: float | None = None  # the daemon's start (sent_at - uptime_s): changes on a restart
        self._lost = False

    def verdict(self, payload: dict, now: float) -> list[Event]:
        """Account for one verdict message."""
        cam, seq, events = payload["camera"], int(payload["seq"]), []
        model = payload.get("model")
        if model and self._model.get(cam, model) != model:
            events.append({"event": "model_changed", "camera": cam, "old": self._model[cam], "new": model})
        if model:
            self._model[cam] = model
        if not self.track_gaps:
            return events
        missing = self._missing.setdefault(cam, {})
        if missing.pop(seq, None) is not None:
            return events
        if seq in self._reported.get(cam, set()):
            self._reported[cam].discard(seq)
            return events + [{"event": "late", "camera": cam, "seq": seq}]
        return events + self._advance(cam, seq, now, seen=True)

    def heartbeat(self, payload: dict, now: float) -> list[Event]:
        """Account for one heartbeat: silence ends; seqs below each camera's last_seq are due."""
        events: list[Event] = []
        uptime = float(payload.get("uptime_s", 0.0))
        started = float(payload.get("sent_at", 0.0)) - uptime
        if self._started is not None and abs(started - self._started) > 1.0:
            events.append({"event": "restarted", "uptime_s": uptime})
            self._highest.clear()
            self._missing.clear()
            self._reported.clear()
        self._started = started
        if self._lost:
            events.append({"event": "heartbeat_back", "silent_s": now - self._last_beat})
            self._lost = False
        self._last_beat = now
        if self.track_gaps:
            for cam, state in payload.get("cameras", {}).items():
                if state.get("last_seq") is not None:
                    events += self._advance(cam, int(state["last_seq"]), now, seen=False)
        return events

    def tick(self, now: float) -> list[Event]:
        """Report what has been missing for longer than the grace, and heartbeats that stopped."""
        events: list[Event] = []
        if not self._lost and now - self._last_beat > self.heartbeat_timeout_s:
            self._lost = True
            events.append({"event": "heartbeat_lost", "silent_s": now - self._last_beat})
        for cam, missing in self._missing.items():
            due = sorted(s for s, since in missing.items() if now - since >= self.gap_grace_s)
            for s in due:
                del missing[s]
            self._reported.setdefault(cam, set()).update(due)
            events += _ranges(cam, due)
        return events

    def _advance(self, cam: str, seq: int, now: float, seen: bool) -> list[Event]:
        """A camera reached `seq` (a verdict seen, or a heartbeat's last_seq): what lies between is missing."""
        highest = self._highest.get(cam)
        if highest is None:  # the first we hear of it: what came before we never subscribed to
            self._highest[cam] = seq
            return []
        if seq <= highest:
            if seen and seq < highest - MAX_TRACKED:  # far behind: the daemon restarted without a heartbeat seen
                self._highest[cam] = seq
                self._missing[cam] = {}
                return [{"event": "restarted", "uptime_s": 0.0}]
            return []
        first = highest + 1
        self._highest[cam] = seq
        last = seq - 1 if seen else seq
        if last - first + 1 > MAX_TRACKED:
            return _ranges(cam, list(range(first, last + 1)))
        missing = self._missing.setdefault(cam, {})
        for s in range(first, last + 1):
            missing.setdefault(s, now)
        return []

    @property
    def lost(self) -> bool:
        """True while heartbeats are missing."""
        return self._lost


def _ranges(cam: str, seqs: list[int]) -> list[Event]:
    """Consecutive seqs as gap events."""
    events: list[Event] = []
    for s in seqs:
        if events and events[-1]["last"] == s - 1:
            events[-1]["last"] = s
            events[-1]["count"] += 1
        else:
            events.append({"event": "gap", "camera": cam, "first": s, "last": s, "count": 1})
    return events


def listen(endpoint: str, topics: list[str], count: int | None, timeout_s: float | None, as_json: bool,
           heartbeats: bool, out: TextIO = sys.stdout, *, save: ArchiveWriter | None = None,
           gap_grace_s: float = 2.0, heartbeat_timeout_s: float = 3.0) -> int:
    """Print messages (and what the Monitor notices) until `count` verdicts or `timeout_s` seconds; with `save`,
    write the image messages through it. Returns the number of verdicts printed."""
    ctx: zmq.Context = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    verdict_topics = [t for t in topics if t != "heartbeat"] or list(VERDICT_TOPICS)
    for topic in verdict_topics + ["heartbeat"] + ([IMAGE_TOPIC + t for t in verdict_topics] if save else []):
        sock.setsockopt_string(zmq.SUBSCRIBE, topic)
    track = all(any(v.startswith(t) for t in verdict_topics) for v in VERDICT_TOPICS)  # every verdict comes
    monitor = Monitor(time.monotonic(), gap_grace_s, heartbeat_timeout_s, track_gaps=track)

    def show(line: str, record: dict) -> None:
        print(json.dumps(record) if as_json else line, file=out, flush=True)

    seen = 0
    until = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while count is None or seen < count:
            if until is not None and time.monotonic() >= until:
                break
            wait = 200 if until is None else max(0, min(200, int((until - time.monotonic()) * 1000)))
            events: list[Event] = []
            if sock.poll(wait):
                parts = sock.recv_multipart()
                topic = parts[0].decode(errors="replace")
                now = time.monotonic()
                try:
                    payload = json.loads(parts[1])
                    if topic.startswith(IMAGE_TOPIC):
                        if save is not None and len(parts) == 4:
                            path = save.write(payload, parts[2], parts[3] or None)
                            show(f"SAVED  {payload['camera']} seq={payload['seq']} -> {path.with_suffix('')}.*",
                                 {"event": "saved", "path": str(path)})
                    elif topic == "heartbeat":
                        events = monitor.heartbeat(payload, now)
                        if heartbeats:
                            show(format_message(topic, payload), {"topic": topic, **payload})
                    else:
                        show(format_message(topic, payload), {"topic": topic, **payload})
                        events = monitor.verdict(payload, now)
                        seen += 1
                except (ValueError, KeyError, TypeError, OSError) as exc:  # a malformed message, a full disk
                    print(f"inspector listen: {topic}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            for event in events + monitor.tick(time.monotonic()):
                show(format_event(event), event)
    finally:
        sock.close()
    return seen


def open_writer(directory: Path, max_items: int, max_megabytes: float) -> ArchiveWriter:
    """The archive writer `--save` uses (the daemon's layout and retention), with what DIR already holds counted."""
    writer = ArchiveWriter(directory, max_items, int(max_megabytes * 1e6), get_logger("listen"))
    writer.scan()
    return writer

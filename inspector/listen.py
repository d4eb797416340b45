"""`inspector listen`: subscribe to a publisher and print verdicts and heartbeats as they arrive."""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

import zmq


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


def listen(endpoint: str, topics: list[str], count: int | None, timeout_s: float | None, as_json: bool,
           heartbeats: bool, out: TextIO = sys.stdout) -> int:
    """Print messages until `count` verdicts or `timeout_s` seconds; returns the number of verdicts printed."""
    ctx: zmq.Context = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    for topic in topics or [""]:
        sock.setsockopt_string(zmq.SUBSCRIBE, topic)
    if heartbeats and topics:
        sock.setsockopt_string(zmq.SUBSCRIBE, "heartbeat")
    seen = 0
    until = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while count is None or seen < count:
            wait = 500 if until is None else max(0, min(500, int((until - time.monotonic()) * 1000)))
            if until is not None and time.monotonic() >= until:
                break
            if not sock.poll(wait):
                continue
            topic_b, payload_b = sock.recv_multipart()[:2]
            topic = topic_b.decode()
            if topic == "heartbeat" and not heartbeats:
                continue
            if as_json:
                print(json.dumps({"topic": topic, **json.loads(payload_b)}), file=out, flush=True)
            else:
                print(format_message(topic, json.loads(payload_b)), file=out, flush=True)
            if topic != "heartbeat":
                seen += 1
    finally:
        sock.close()
    return seen

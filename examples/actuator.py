#!/usr/bin/env python3
"""A reference reject actuator for inspector (Python 3.10+, stdlib + pyzmq only; read it, then port it to your PLC).

It subscribes to the daemon's verdicts and heartbeats and:
  * fires the ejector for every reject, `--delay` seconds after the part was captured (its travel time);
  * treats a lost message (a seq it never got, also against the heartbeats' last_seq) as a reject: it fires
    for that seq (`--on-gap fire`, the default) or stops the line for `--gap-hold` seconds (`--on-gap safe`);
  * goes to the SAFE STATE (line stopped, every part rejected) when no heartbeat came for `--heartbeat-timeout`
    seconds, and leaves it when heartbeats come back.
Accepts are subscribed to as well: without them a missing seq cannot be told from an accepted part.
The "actuator" here prints `FIRE ...` lines; replace fire() and safe() with your outputs.

    python examples/actuator.py --endpoint tcp://inspector-host:5555 --delay 0.8 --heartbeat-timeout 3
"""

from __future__ import annotations

import argparse
import heapq
import json
import signal
import time

import zmq


def log(line: str) -> None:
    print(time.strftime("%H:%M:%S ") + line, flush=True)


def fire(camera: str, seq: int, part_id: object, reason: str) -> None:
    """Drive the ejector (here: print). Replace with your digital output."""
    log(f"FIRE part_id={part_id} camera={camera} seq={seq} reason={reason}")


def safe(entering: bool, why: str) -> None:
    """Stop the line / reject everything (here: print). Replace with your outputs."""
    log(f"SAFE STATE: {why}" if entering else f"SAFE STATE LEFT: {why}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5555", help="the daemon's publisher.endpoint")
    p.add_argument("--camera", action="append", default=[], help="only this camera (repeatable; default all)")
    p.add_argument("--delay", type=float, default=0.0, help="seconds from capture to the ejector")
    p.add_argument("--heartbeat-timeout", type=float, default=3.0, help="silence that means the daemon is gone")
    p.add_argument("--on-gap", choices=("fire", "safe"), default="fire", help="what a lost message means")
    p.add_argument("--gap-grace", type=float, default=2.0,
                   help="a seq missing this long is lost (verdicts may arrive slightly out of order)")
    p.add_argument("--gap-hold", type=float, default=5.0, help="with --on-gap safe: seconds the line stays stopped")
    args = p.parse_args()

    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(args.endpoint)
    for cam in args.camera or [""]:  # "reject." matches every camera, "reject.cam1" one
        for kind in ("reject.", "accept."):
            sock.setsockopt_string(zmq.SUBSCRIBE, kind + cam)
    sock.setsockopt_string(zmq.SUBSCRIBE, "heartbeat")

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    highest: dict[str, int] = {}  # camera -> highest seq heard of
    missing: dict[tuple[str, int], float] = {}  # (camera, seq) -> when first missed
    fires: list[tuple[float, str, int, object, str]] = []  # heap of (wall time to fire, camera, seq, part, why)
    last_beat, started = time.monotonic(), None  # no heartbeat within the timeout after start is silence too
    silent, gap_until = False, 0.0
    log(f"actuator subscribed to {args.endpoint}")

    def reached(cam: str, seq: int, got_it: bool) -> None:
        """A camera reached seq: every seq between the last one heard and it is missing (until it arrives)."""
        if cam in highest and seq > highest[cam]:
            for s in range(highest[cam] + 1, seq if got_it else seq + 1):
                missing.setdefault((cam, s), time.monotonic())
        highest[cam] = max(seq, highest.get(cam, seq))

    try:
        while not stop:
            if sock.poll(50):
                topic, payload = sock.recv_multipart()[:2]
                msg = json.loads(payload)
                if topic == b"heartbeat":
                    start = msg["sent_at"] - msg["uptime_s"]  # when the daemon started: changes on a restart
                    if started is not None and abs(start - started) > 1.0:
                        log("daemon restarted: sequence numbers start again")
                        highest.clear()
                        missing.clear()
                    started, last_beat = start, time.monotonic()
                    if silent:
                        silent = False
                        safe(False, "heartbeats are back")
                    for cam, state in msg["cameras"].items():
                        if state["last_seq"] is not None and (not args.camera or cam in args.camera):
                            reached(cam, state["last_seq"], got_it=False)
                else:
                    cam, seq = msg["camera"], msg["seq"]
                    if missing.pop((cam, seq), None) is None:
                        reached(cam, seq, got_it=True)
                    if msg["verdict"] == "reject":
                        heapq.heappush(fires, (msg["captured_at"] + args.delay, cam, seq, msg["part_id"],
                                               msg["reason"]))
            now = time.monotonic()
            if not silent and now - last_beat > args.heartbeat_timeout:
                silent = True
                safe(True, f"no heartbeat for {args.heartbeat_timeout:g} s: line stopped, every part rejected")
            for (cam, seq), since in sorted(missing.items()):
                if now - since >= args.gap_grace:
                    del missing[(cam, seq)]
                    log(f"LOST message camera={cam} seq={seq}: its verdict is unknown, so it is a reject")
                    if args.on_gap == "fire":
                        heapq.heappush(fires, (time.time(), cam, seq, "?", "lost_message"))
                    else:
                        if now >= gap_until:
                            safe(True, f"lost message camera={cam} seq={seq}; holding {args.gap_hold:g} s")
                        gap_until = now + args.gap_hold
            if gap_until and now >= gap_until:
                gap_until = 0.0
                safe(False, "gap hold over")
            while fires and fires[0][0] <= time.time():
                _, cam, seq, part, why = heapq.heappop(fires)
                fire(cam, seq, part, why)
    except KeyboardInterrupt:
        pass
    sock.close()


if __name__ == "__main__":
    main()

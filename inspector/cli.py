"""The `inspector` command: run, check-config, listen, synth, and the training workflow commands."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Sequence

from . import __version__
from .errors import UsageError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, dispatch, turn known errors into one line and an exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    from .artifact import ArtifactError
    from .config import ConfigError

    try:
        code = int(args.func(args))
    except (UsageError, ConfigError, ArtifactError) as exc:
        print(f"inspector: error: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    except KeyboardInterrupt:
        print("inspector: interrupted", file=sys.stderr)
        code = 130
    sys.stdout.flush()
    return code


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="inspector", description="Real-time camera line inspection.")
    parser.add_argument("--version", action="version", version=f"inspector {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    p = sub.add_parser("run", help="run the inspection daemon", description="Run the inspection daemon until "
                       "SIGTERM or SIGINT (a second SIGINT forces exit). SIGHUP re-reads the config and swaps models "
                       "and thresholds without stopping the cameras.")
    p.add_argument("--config", "-c", type=Path, required=True, help="TOML config file")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check-config", help="validate a config file without opening anything",
                       description="Validate a config file (and that its model directories hold models); opens "
                       "no camera and binds no socket. Exit 0 when valid, 2 when not.")
    p.add_argument("config", type=Path, help="TOML config file")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("listen", help="subscribe to a daemon and print verdicts",
                       description="Subscribe to a running daemon's publisher and print each verdict.")
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5555", help="publisher endpoint (default %(default)s)")
    p.add_argument("--topic", action="append", default=[],
                   help="topic prefix to subscribe to, e.g. reject. (repeatable; default: everything)")
    p.add_argument("--count", type=int, help="stop after this many verdicts")
    p.add_argument("--timeout", type=float, help="stop after this many seconds")
    p.add_argument("--json", action="store_true", help="print raw JSON lines")
    p.add_argument("--no-heartbeat", dest="heartbeats", action="store_false", help="hide heartbeats")
    p.add_argument("--heartbeat-timeout", type=float, default=3.0, metavar="S",
                   help="report lost heartbeats after this many silent seconds (default %(default)s)")
    p.add_argument("--gap-grace", type=float, default=2.0, metavar="S",
                   help="report a missing seq once it is this many seconds overdue (default %(default)s)")
    p.add_argument("--save", type=Path, metavar="DIR",
                   help="save the frames and heatmaps the daemon publishes (publisher.publish_images) under DIR, "
                   "in the archive's layout and retention")
    p.add_argument("--max-items", type=int, default=10_000, help="with --save: entries kept (default %(default)s)")
    p.add_argument("--max-megabytes", type=float, default=2000.0,
                   help="with --save: megabytes kept (default %(default)s)")
    p.set_defaults(func=cmd_listen)

    p = sub.add_parser("synth", help="write synthetic part images (good/ and defect/)",
                       description="Render synthetic parts into DIR/good/ and DIR/defect/ (masks in "
                       "DIR/ground_truth/).")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--count", type=int, required=True, help="number of parts")
    p.add_argument("--defect-rate", type=float, default=0.1, help="share of defective parts (default %(default)s)")
    p.add_argument("--size", type=int, default=256, help="image width and height in pixels (default %(default)s)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=1, help="1 gray, 3 colour (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    p.set_defaults(func=cmd_synth)

    try:
        from .cli_train import add_commands
    except ImportError:  # training commands not installed in this build
        pass
    else:
        add_commands(sub)
    from .cli_cameras import add_commands as add_camera_commands

    add_camera_commands(sub)
    return parser


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate the config and read (not load) each model's metadata."""
    from .artifact import read_meta
    from .config import load_config

    config = load_config(args.config)
    for cam in config.cameras:
        if cam.source.type == "opencv" and cam.source.backend != "any":
            import cv2

            from .capture.opencv import BACKENDS

            if not cv2.videoio_registry.hasBackend(BACKENDS[cam.source.backend]):
                print(f"warning: camera {cam.id}: this OpenCV build ({cv2.__version__}) has no "
                      f"{cam.source.backend} back-end; the camera will stay down", file=sys.stderr)
        meta = read_meta(cam.model)
        print(f"camera {cam.id}: {cam.source.type} -> model {meta.name} ({meta.family}, "
              f"{meta.input.width}x{meta.input.height}x{meta.input.channels}, threshold {meta.threshold.value:.6g})")
    m = config.metrics
    metrics = f"http://{m.address}:{m.port}/metrics" if m.enabled else "off"
    print(f"{args.config}: OK ({len(config.cameras)} camera(s), publisher {config.publisher.endpoint}, "
          f"metrics {metrics})")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon until a signal."""
    from .config import load_config
    from .logs import configure_logging, get_logger

    config = load_config(args.config)
    configure_logging(config.logging.level, config.logging.format)
    from .service import Service

    service = Service(config, loader=lambda: load_config(args.config))
    log = get_logger("cli")
    _install_signal_handlers(service)
    try:
        service.start()
    except OSError as exc:
        log.error("start-up failed", error=str(exc))
        service.stop_event.set()
        service.shutdown()
        print(f"inspector: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BaseException:
        service.stop_event.set()
        service.shutdown()
        raise
    service.run()
    service.shutdown()
    return EXIT_OK


def _install_signal_handlers(service: object) -> None:
    """First SIGTERM/SIGINT: request shutdown. Second SIGINT: skip the drain; third: exit at once. SIGHUP: reload."""
    from .service import Service

    assert isinstance(service, Service)
    count = {"int": 0}

    def handle(signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT:
            count["int"] += 1
            if count["int"] == 2:
                service.force_event.set()
            elif count["int"] >= 3:
                raise SystemExit(130)
        service.stop_event.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGHUP, lambda signum, frame: service.reload_event.set())


def cmd_listen(args: argparse.Namespace) -> int:
    """Print verdicts from a publisher."""
    from .listen import listen, open_writer

    if args.max_items < 1 or args.max_megabytes <= 0:
        raise UsageError("--max-items and --max-megabytes must be positive")
    try:
        save = open_writer(args.save, args.max_items, args.max_megabytes) if args.save else None
    except OSError as exc:
        raise UsageError(f"--save {args.save}: {exc.strerror or exc}") from None
    listen(args.endpoint, args.topic, args.count, args.timeout, args.json, args.heartbeats, save=save,
           gap_grace_s=args.gap_grace, heartbeat_timeout_s=args.heartbeat_timeout)
    return EXIT_OK


def cmd_synth(args: argparse.Namespace) -> int:
    """Write a synthetic data set."""
    from .synth import write_dataset

    try:
        counts = write_dataset(args.out, args.count, args.defect_rate, seed=args.seed, width=args.size,
                               height=args.size, channels=args.channels)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {counts['good']} good and {counts['defect']} defective parts to {args.out}/good and "
          f"{args.out}/defect")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

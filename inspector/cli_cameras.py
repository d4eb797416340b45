"""`inspector cameras`: what Aravis and pylon can see, with each camera's identity and current settings.

For the engineer commissioning a station: the device id, serial or address to put in the config, and the pixel
format, size, rate, exposure, gain and trigger the camera has now. Each back-end is optional: one that is not
installed is reported as such. Enumerating GigE cameras broadcasts discovery on every network interface.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Callable

ARAVIS_INTERFACES = ("GigEVision", "USB3Vision", "Fake")


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `cameras` on the CLI's sub-parsers."""
    p = sub.add_parser(
        "cameras", help="list the GenICam cameras Aravis and pylon can see, with their settings",
        description="List the cameras Aravis (GigE Vision, USB3 Vision) and pylon (Basler; emulated ones while "
        "PYLON_CAMEMU is set) can see: vendor, model, serial, address and device id, and the current pixel "
        "format, size, frame rate, exposure, gain and trigger. GigE discovery broadcasts on every interface.")
    p.add_argument("--json", action="store_true", help="print one JSON document (for scripts)")
    p.add_argument("--interface", dest="interfaces", action="append", choices=ARAVIS_INTERFACES,
                   help="Aravis interface to search (repeatable; default GigEVision and USB3Vision; Fake is "
                   "Aravis's simulated camera)")
    p.add_argument("--backend", dest="backends", action="append", choices=("aravis", "pylon"),
                   help="only this back-end (repeatable; default both)")
    p.set_defaults(func=cmd_cameras)


def cmd_cameras(args: argparse.Namespace) -> int:
    """List the cameras of each back-end; a back-end that is missing or fails is reported, not raised."""
    interfaces = tuple(args.interfaces or ("GigEVision", "USB3Vision"))
    listers: dict[str, Callable[[], list[dict[str, Any]]]] = {
        "aravis": lambda: _aravis(interfaces), "pylon": _pylon}
    report = {name: survey(listers[name]) for name in (args.backends or ("aravis", "pylon"))}
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        for name, found in report.items():
            print("\n".join(describe(name, found)))
    return 0


def survey(lister: Callable[[], list[dict[str, Any]]]) -> dict[str, Any]:
    """{"available": bool, "error": str | None, "cameras": [...]} for one back-end."""
    try:
        return {"available": True, "error": None, "cameras": lister()}
    except OSError as exc:  # the back-end is not installed or cannot load
        return {"available": False, "error": str(exc), "cameras": []}


def _aravis(interfaces: tuple[str, ...]) -> list[dict[str, Any]]:
    from .capture.aravis import list_cameras

    cameras = list_cameras(interfaces)
    for cam in cameras:  # the region as the config names it
        region = cam.pop("region", None)
        if region is not None:
            cam["offset_x"], cam["offset_y"], cam["width"], cam["height"] = region
    return cameras


def _pylon() -> list[dict[str, Any]]:
    from .capture.pylon import list_cameras

    return list_cameras()


def describe(backend: str, found: dict[str, Any]) -> list[str]:
    """Human-readable lines for one back-end's survey."""
    if not found["available"]:
        return [f"{backend}: not installed or not usable: {found['error']}"]
    cameras = found["cameras"]
    lines = [f"{backend}: {len(cameras)} camera(s)"]
    for cam in cameras:
        lines.append(f"  {cam.get('id')}: {cam.get('vendor')} {cam.get('model')}, serial {cam.get('serial')}, "
                     f"address {cam.get('address') or '-'} ({cam.get('protocol')})")
        if cam.get("error"):
            lines.append(f"    cannot read its settings: {cam['error']}")
            continue
        lines.append("    " + settings_line(cam))
        if cam.get("controlled_elsewhere"):
            lines.append("    controlled by another program (read-only here)")
    return lines


def settings_line(cam: dict[str, Any]) -> str:
    """Pixel format, size, rate, exposure, gain and trigger in one line; '?' for what the camera did not give."""
    def num(key: str, unit: str) -> str:
        value = cam.get(key)
        return "?" if value is None else f"{value:g}{unit}"

    trigger = cam.get("trigger_mode", "?")
    if trigger == "On":
        trigger += f" ({cam.get('trigger_source', '?')})"
    return (f"{cam.get('pixel_format', '?')} {cam.get('width', '?')}x{cam.get('height', '?')}, "
            f"{num('frame_rate', ' fps')}, exposure {num('exposure_us', ' us')}, gain {num('gain_db', ' dB')}, "
            f"trigger {trigger}")

"""`inspector cameras` against real back-ends: Aravis's Fake camera, the fake GigE Vision camera (inside a network
namespace holding only `lo`, so discovery stays there) and pylon's camera emulator; and without the back-ends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, run_cli
from .gige import GigENamespace, ns

MISSING_BACKENDS = ("import sys; sys.modules['gi'] = None; sys.modules['pypylon'] = None; "
                    "from inspector.cli import main; sys.exit(main(sys.argv[1:]))")


def needs_aravis() -> None:
    from inspector.capture.aravis import load_aravis

    try:
        load_aravis()
    except OSError as exc:
        pytest.skip(f"PyGObject/Aravis unavailable ({exc})")


def test_lists_the_fake_camera_with_its_settings() -> None:
    """Text output: the device id to put in the config, identity, and the current settings in one line."""
    needs_aravis()
    run = run_cli("cameras", "--interface", "Fake", "--backend", "aravis")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "aravis: 1 camera(s)",
        "  Fake_1: Aravis Fake, serial 1, address 0.0.0.0 (Fake)",
        "    Mono8 512x512, 25 fps, exposure 10000 us, gain 0 dB, trigger Off",
    ]


def test_json_lists_gige_fake_and_pylon_emulated_cameras(tmp_path: Path) -> None:
    """--json inside a namespace with the fake GigE camera, Aravis's Fake interface on too, and PYLON_CAMEMU=2: every
    camera with vendor, model, serial, address, id and settings (pylon's GigE discovery stays in the namespace)."""
    pytest.importorskip("pypylon.pylon")
    with GigENamespace(tmp_path) as namespace:
        namespace.start_camera("-s", "LINE7")
        command = ns(namespace.name, sys.executable, "-W", "ignore", "-m", "inspector", "cameras", "--json",
                     "--interface", "GigEVision", "--interface", "Fake")
        run = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO,
                             env={**os.environ, "PYLON_CAMEMU": "2"})
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    aravis = {cam["id"]: cam for cam in report["aravis"]["cameras"]}
    assert report["aravis"]["available"] and set(aravis) == {"Aravis-Fake-LINE7", "Fake_1"}
    gige = aravis["Aravis-Fake-LINE7"]
    assert (gige["vendor"], gige["model"], gige["serial"], gige["address"], gige["protocol"]) == \
        ("Aravis", "Fake", "LINE7", "127.0.0.1", "GigEVision")
    assert (gige["pixel_format"], gige["width"], gige["height"], gige["trigger_mode"]) == ("Mono8", 512, 512, "Off")
    assert gige["frame_rate"] > 0 and gige["exposure_us"] > 0 and "gain_db" in gige
    assert gige["controlled_elsewhere"] is False
    pylon = {cam["serial"]: cam for cam in report["pylon"]["cameras"]}
    assert report["pylon"]["available"] and set(pylon) == {"0815-0000", "0815-0001"}
    emu = pylon["0815-0001"]
    assert (emu["vendor"], emu["protocol"], emu["pixel_format"], emu["trigger_mode"]) == \
        ("Basler", "BaslerCamEmu", "Mono8", "Off")
    assert emu["width"] > 0 and emu["height"] > 0 and emu["frame_rate"] > 0 and emu["exposure_us"] > 0


def test_missing_back_ends_are_reported_not_raised() -> None:
    """Without PyGObject and pypylon the command still runs: each back-end says it is not installed and how to
    install it, in text and in JSON, exit 0."""
    run = subprocess.run([sys.executable, "-c", MISSING_BACKENDS, "cameras"], capture_output=True, text=True,
                         timeout=60, cwd=REPO)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("aravis: not installed or not usable: ") and "PyGObject" in lines[0]
    assert lines[1].startswith("pylon: not installed or not usable: ") and "pip install pypylon" in lines[1]
    run = subprocess.run([sys.executable, "-c", MISSING_BACKENDS, "cameras", "--json"], capture_output=True,
                         text=True, timeout=60, cwd=REPO)
    report = json.loads(run.stdout)
    assert {name: (r["available"], r["cameras"]) for name, r in report.items()} == \
        {"aravis": (False, []), "pylon": (False, [])}

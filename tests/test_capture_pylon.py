"""The `pylon` source against pypylon's real camera emulator (PYLON_CAMEMU), alone and in the whole daemon.

pylon reads PYLON_CAMEMU each time it creates its emulation transport layer (not at import), so setting it with
monkeypatch before a camera is opened is enough. Only the emulator is used here: with PYLON_CAMEMU set and no
serial, or an emulator serial (0815-NNNN), PylonCamera never enumerates GigE or USB, so no discovery is sent.
Skipped when pypylon is not installed (bash .ci/install-pylon.sh .venv installs it).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from inspector.capture import make_source
from inspector.capture.pylon import PylonCamera, use_emulator
from inspector.config import PylonSource
from inspector.types import FrameLost, FrameSource, NoFrame

from .conftest import make_model, write_config

# pypylon's SWIG-built modules warn on import ("builtin type SwigPyPacked has no __module__"): not ours to fix
pytestmark = pytest.mark.filterwarnings(r"ignore:builtin type [Ss]wig\w* has no __module__:DeprecationWarning")

EMULATED = "2"  # two emulated cameras: 0815-0000 and 0815-0001


def needs_pypylon() -> None:
    """Skip the test, saying why, when pypylon is missing or cannot load (e.g. a glibc older than 2.31)."""
    try:
        import pypylon.pylon  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"pypylon is not usable ({exc}); bash .ci/install-pylon.sh .venv installs it")


@pytest.fixture
def camemu(monkeypatch: pytest.MonkeyPatch) -> None:
    """pypylon with PYLON_CAMEMU=2 in the environment (read by pylon when it creates the emulation layer)."""
    needs_pypylon()
    monkeypatch.setenv("PYLON_CAMEMU", EMULATED)


@pytest.fixture
def opened() -> Iterator[list[PylonCamera]]:
    """Cameras a test opened; closed afterwards even when the test fails."""
    cams: list[PylonCamera] = []
    yield cams
    for cam in cams:
        cam.close()


def open_camera(opened: list[PylonCamera], **settings: Any) -> PylonCamera:
    cam = PylonCamera(PylonSource(type="pylon", **settings))
    opened.append(cam)
    cam.open()
    return cam


def emulator_block_ids() -> bool:
    """pylon's emulator stamps BlockIDs from pypylon 26.9 (pylon 12.4) on; before, its grab results carry none."""
    from importlib.metadata import version

    major, minor = (int(x) for x in version("pypylon").split(".")[:2])
    return (major, minor) >= (26, 9)


def assert_counts_up(ids: list[int | None]) -> None:
    """part_id = BlockID: consecutive integers (None throughout where the emulator gives no BlockID)."""
    if not emulator_block_ids():
        assert ids == [None] * len(ids)
        return
    first = ids[0]
    assert first is not None and ids == list(range(first, first + len(ids))), f"BlockIDs should count up: {ids}"


def node(cam: PylonCamera, name: str) -> object:
    """A setting read back from the open camera."""
    return cam.camera.GetNodeMap().GetNode(name).GetValue()


def test_which_camera_is_looked_for_where() -> None:
    """An emulator serial or (without a serial) PYLON_CAMEMU >= 1 means the emulator; anything else real cameras."""
    on: dict[str, str] = {"PYLON_CAMEMU": "2"}
    off: dict[str, str] = {}
    assert use_emulator("0815-0001", on) and use_emulator("0815-0001", off)
    assert not use_emulator("40012345", on) and not use_emulator("40012345", off)
    assert use_emulator(None, on)
    assert not use_emulator(None, off) and not use_emulator(None, {"PYLON_CAMEMU": "0"})


def test_missing_pypylon_is_an_os_error_with_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without pypylon the source is still built; open() raises OSError, so the daemon keeps retrying it."""
    monkeypatch.setitem(sys.modules, "pypylon", None)  # makes `from pypylon import ...` raise ImportError
    cam = make_source(PylonSource(type="pylon"))
    assert isinstance(cam, FrameSource) and cam.interval_s == 0
    with pytest.raises(OSError, match=r"pip install pypylon"):
        cam.open()
    cam.close()
    cam.close()


def test_grabs_mono8_frames_with_block_ids(camemu: None, opened: list[PylonCamera]) -> None:
    """Free run at 200 fps: uint8 (H, W) frames of the configured size, part_id = BlockID counting up by one."""
    cam = open_camera(opened, width=160, height=120, exposure_us=500, frame_rate=200, buffers=4)
    assert cam.name == "0815-0000"
    grabs = [cam.read() for _ in range(10)]
    for grab in grabs:
        assert grab.image.shape == (120, 160) and grab.image.dtype == np.uint8
        assert grab.image.flags.c_contiguous and grab.label is None
    assert_counts_up([g.part_id for g in grabs])
    assert node(cam, "ExposureTime") == pytest.approx(500, abs=1)
    assert node(cam, "AcquisitionFrameRate") == pytest.approx(200)
    assert node(cam, "PixelFormat") == "Mono8" and node(cam, "TriggerMode") == "Off"
    assert cam.camera.MaxNumBuffer.GetValue() == 4


@pytest.mark.parametrize(("pixel_format", "shape"), [
    ("BayerRG8", (48, 64, 3)), ("RGB8Packed", (48, 64, 3)), ("BGR8Packed", (48, 64, 3)), ("Mono12", (48, 64)),
])
def test_other_pixel_formats_become_uint8_gray_or_bgr(camemu: None, opened: list[PylonCamera], pixel_format: str,
                                                      shape: tuple[int, ...]) -> None:
    """Bayer and RGB are converted to BGR, Mono12 to Mono8, by pylon's ImageFormatConverter; frames copied out."""
    cam = open_camera(opened, serial="0815-0001", pixel_format=pixel_format, width=64, height=48, gain_db=3.0)
    first, second = cam.read(), cam.read()
    assert first.image.shape == shape and first.image.dtype == np.uint8
    assert_counts_up([first.part_id, second.part_id])
    assert first.image.max() > 0, "the emulator's test image should survive the conversion"
    assert node(cam, "PixelFormat") == pixel_format and node(cam, "Gain") == pytest.approx(3.0, abs=0.1)


def test_unknown_or_unusable_settings_are_os_errors_that_say_why(camemu: None, opened: list[PylonCamera],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A serial that is not there, a pixel format the camera lacks, an out-of-range exposure: OSError naming it;
    the camera is released, so the next open succeeds."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({"serial": "0815-0007"}, r"serial 0815-0007.*found: 0815-0000 \(Emulation\), 0815-0001"),
        ({"pixel_format": "Mono42"}, r"PixelFormat = 'Mono42'.*accepted: Mono8"),
        ({"exposure_us": 1e12}, r"ExposureTime = 1000000000000.0; range 1.0\.\."),
        ({"trigger_source": "Line9"}, r"TriggerSource = 'Line9'.*Line1"),
    ]
    for settings, message in cases:
        cam = PylonCamera(PylonSource(type="pylon", **settings))
        with pytest.raises(OSError, match=message):
            cam.open()
        cam.close()
    assert open_camera(opened).read().image.shape  # 0815-0000 was closed after each failure
    monkeypatch.delenv("PYLON_CAMEMU")
    with pytest.raises(OSError, match=r"0815-0001 is an emulated camera: set PYLON_CAMEMU=2"):
        PylonCamera(PylonSource(type="pylon", serial="0815-0001")).open()


def test_hardware_trigger_waits_for_the_line_then_times_out(camemu: None, opened: list[PylonCamera]) -> None:
    """With trigger_source set the camera waits for its trigger: no pulse on Line1 -> NoFrame (an idle line, not
    a failure: the capture thread keeps waiting, no reconnect); with a software trigger, one frame per trigger."""
    cam = open_camera(opened, trigger_source="Line1", timeout_ms=150)
    assert node(cam, "TriggerMode") == "On" and node(cam, "TriggerSource") == "Line1"
    t0 = time.monotonic()
    with pytest.raises(NoFrame, match=r"no trigger on Line1 within 150 ms"):
        cam.read()
    assert 0.1 < time.monotonic() - t0 < 2
    cam.close()
    cam = open_camera(opened, trigger_source="Software", timeout_ms=1000)
    from pypylon import pylon

    for _ in range(2):
        assert cam.camera.WaitForFrameTriggerReady(1000, pylon.TimeoutHandling_Return)
        cam.camera.ExecuteSoftwareTrigger()
        assert cam.read().image.dtype == np.uint8


def test_close_is_safe_twice_after_failure_and_the_camera_reopens(camemu: None) -> None:
    """close() twice, before open and after a failed open; a closed camera reads OSError and can be reopened."""
    cam = PylonCamera(PylonSource(type="pylon", width=32, height=32))
    cam.close()
    cam.open()
    first = cam.read()
    cam.close()
    cam.close()
    with pytest.raises(OSError, match="not open"):
        cam.read()
    cam.open()  # the device was released: a reconnect gets it back, BlockID counting from the start again
    assert cam.read().part_id == first.part_id
    cam.close()
    PylonCamera(PylonSource(type="pylon", serial="0815-0009")).close()


def camera(cam_id: str, model: Path, source: str) -> str:
    return f'[[cameras]]\nid = "{cam_id}"\nmodel = "{model}"\nreconnect_min_s = 0.1\nsource = {source}\n'


def test_daemon_inspects_two_emulated_cameras_and_keeps_a_missing_one_down(camemu: None, tmp_path: Path,
                                                                           line_factory) -> None:
    """The whole daemon in-process with three `pylon` cameras: the two emulated ones deliver verdicts over ZeroMQ
    with seq 0..N-1 and part_id = BlockID; the third (a serial that is not there) stays down, retried, and does
    not hold up the others."""
    model = make_model(tmp_path / "m", size=32)
    src = ('{ type = "pylon", serial = "%s", width = 64, height = 64, exposure_us = 1000, frame_rate = 50, '
           'timeout_ms = 500 }')
    cfg = write_config(
        tmp_path / "c.toml",
        camera("a", model, src % "0815-0000") + camera("b", model, src % "0815-0001")
        + camera("gone", model, src % "0815-0042"),
        publisher={"endpoint": f"ipc://{tmp_path}/pub.ipc", "wait_for_subscribers": 1,
                   "wait_for_subscribers_s": 10.0, "heartbeat_s": 0.2},
        buffer={"capacity": 64}, metrics={"port": 0}, logging={"level": "error", "format": "json"})
    line = line_factory(cfg, ready_grace_s=1.0).start()

    def enough(messages: list) -> bool:
        seen = [p["camera"] for t, p in messages if t != "heartbeat"]
        return seen.count("a") >= 20 and seen.count("b") >= 20

    line.receive(enough, timeout=15)
    line.stop()
    verdicts = line.verdicts()
    for cam in ("a", "b"):
        mine = [v for v in verdicts if v["camera"] == cam]
        assert len(mine) >= 20, f"{cam}: {len(mine)} verdicts"
        assert [v["seq"] for v in mine] == list(range(len(mine)))
        assert_counts_up([v["part_id"] for v in mine])
        assert all(v["reason"] in ("ok", "anomaly", "not_inspected") for v in mine)
    assert not [v for v in verdicts if v["camera"] == "gone"]
    beats = [p for t, p in line.messages if t == "heartbeat"]
    assert any(b["cameras"]["a"]["up"] and b["cameras"]["b"]["up"] for b in beats)
    assert all(not b["cameras"]["gone"]["up"] for b in beats)
    assert line.service.metrics.camera_reconnects.labels("gone")._value.get() >= 2


def test_a_failed_grab_is_a_lost_frame_with_its_block_id(camemu: None, opened: list[PylonCamera]) -> None:
    """A grab result that is not GrabSucceeded (forced with the emulator's ForceFailedBuffer) raises FrameLost with
    the BlockID it carries, so the part gets the fail-safe verdict; the frames after it arrive as usual."""
    cam = open_camera(opened, width=64, height=48, frame_rate=200)
    first = cam.read()
    nodes = cam.camera.GetNodeMap()
    nodes.GetNode("ForceFailedBufferCount").SetValue(3)
    nodes.GetNode("ForceFailedBuffer").Execute()
    outcomes: list[tuple[str, int | None]] = []
    while len(outcomes) < 8:
        try:
            outcomes.append(("frame", cam.read().part_id))
        except FrameLost as lost:
            assert lost.reason == "incomplete" and "failed" in str(lost)
            outcomes.append(("lost", lost.part_id))
    kinds = [kind for kind, _ in outcomes]
    assert kinds.count("lost") == 3 and kinds[-1] == "frame", outcomes
    assert_counts_up([first.part_id] + [part_id for _, part_id in outcomes])

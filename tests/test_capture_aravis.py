"""The `aravis` source with real Aravis: its in-process Fake camera (no network), the daemon on that camera, and
the fake GigE Vision camera over the network stack inside a network namespace that holds only `lo`.

No GigE Vision packet (discovery included) leaves a private namespace: in the root namespace only Aravis's Fake
interface is enabled; GigE Vision runs only inside namespaces that hold nothing but `lo`.
`.ci/install-system.sh` (Debian packages) and `.ci/install-aravis.sh` (PyGObject) install what these tests need.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from inspector.capture import make_source
from inspector.capture.aravis import PIXEL_FORMATS, AravisCamera, load_aravis, to_image
from inspector.config import AravisSource
from inspector.types import FrameSource

from .conftest import REPO, camera, make_model, metric_sum, sections, write_config
from .gige import METRICS_PORT, GigENamespace, NsDaemon, ns, stop, verdict_count


def fake(**settings: Any) -> AravisSource:
    """A source on Aravis's in-process Fake camera, with every other interface disabled (nothing on the wire)."""
    return AravisSource(type="aravis", interfaces=["Fake"], **settings)


def median_interval_ns(stamps: list[int]) -> float:
    """The camera's own time between successive frames (its timestamps in ns), the upper median."""
    return statistics.median_high(b - a for a, b in zip(stamps, stamps[1:], strict=False))


def consecutive(ids: list[int]) -> bool:
    """Frame ids that follow each other, allowing the 16-bit GigE Vision block id to wrap from 65535 to 1."""
    return all(b == a + 1 or (a == 65535 and b == 1) for a, b in zip(ids, ids[1:], strict=False))


@pytest.fixture
def aravis() -> Any:
    """The Aravis module; the test is skipped, with the reason, when PyGObject or Aravis is missing."""
    try:
        module, _ = load_aravis()
    except OSError as exc:
        pytest.skip(f"PyGObject/Aravis unavailable ({exc})")
    return module


# --- pixel conversion (pure; no Aravis needed) -----------------------------------------------------------------
def test_pixel_formats_become_uint8_gray_or_bgr() -> None:
    """Mono8 is a view; 10..16-bit formats are shifted down to 8 bits; row padding is skipped; Bayer and RGB come
    out as BGR with the colours where GenICam's pattern names put them."""
    mono8 = bytes(range(12))
    image = to_image(mono8, 4, 3, 0x01080001)
    assert image.shape == (3, 4) and image.dtype == np.uint8 and image[2, 3] == 11
    padded = bytes([1, 2, 3, 99, 4, 5, 6, 99])  # 3 pixels + 1 padding byte per row
    assert to_image(padded, 3, 2, 0x01080001, x_padding=1).tolist() == [[1, 2, 3], [4, 5, 6]]
    mono16 = np.array([[0x1234, 0xFFFF]], "<u2").tobytes()
    assert to_image(mono16, 2, 1, 0x01100007).tolist() == [[0x12, 0xFF]]
    mono12 = np.array([[0x0ABC, 0x0010]], "<u2").tobytes()
    assert to_image(mono12, 2, 1, 0x01100005).tolist() == [[0xAC, 0x01]]  # /16, rounded
    red = np.zeros((8, 8), np.uint8)
    red[0::2, 0::2] = 200  # BayerRG: R at the top-left of each 2x2
    bgr = to_image(red.tobytes(), 8, 8, 0x01080009)
    assert bgr.shape == (8, 8, 3) and bgr[4, 4].tolist() == [0, 0, 200]
    rgb = np.array([[[10, 20, 30]]], np.uint8).tobytes()
    assert to_image(rgb, 1, 1, 0x02180014).tolist() == [[[30, 20, 10]]]
    with pytest.raises(OSError, match="too small"):
        to_image(bytes(10), 4, 3, 0x01080001)
    with pytest.raises(OSError, match="not supported"):
        to_image(bytes(12), 4, 3, 0x02180099)


def test_pixel_format_codes_are_aravis_codes(aravis: Any) -> None:
    """The PFNC codes the converter knows are the ones Aravis reports for those formats."""
    special = {"RGB8": "RGB_8_PACKED", "BGR8": "BGR_8_PACKED", "RGBa8": "RGBA_8_PACKED", "BGRa8": "BGRA_8_PACKED",
               "YUV422_8_UYVY": "YUV_422_PACKED", "YUV422_8": "YUV_422_YUYV_PACKED"}
    for code, layout in PIXEL_FORMATS.items():
        name = special.get(layout.name)
        if name is None:
            kind, rest = ("MONO", layout.name[4:]) if layout.name.startswith("Mono") else ("BAYER", layout.name[5:])
            name = f"{kind}_{rest}" if kind == "MONO" else f"BAYER_{rest[:2]}_{rest[2:]}"
        assert getattr(aravis, f"PIXEL_FORMAT_{name}") == code, layout.name


def test_missing_pygobject_is_an_oserror_with_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without PyGObject the daemon still builds the source; open() fails with OSError (camera down, retried,
    reason logged) and says what to install."""
    monkeypatch.setitem(sys.modules, "gi", None)  # `import gi` raises ImportError
    cam = make_source(fake())
    assert isinstance(cam, FrameSource) and cam.interval_s == 0
    with pytest.raises(OSError, match=r"PyGObject.*pip install 'PyGObject<3.51'"):
        cam.open()
    cam.close()
    cam.close()


# --- Aravis's in-process Fake camera ----------------------------------------------------------------------------
def test_fake_camera_frames_settings_and_close_twice(aravis: Any) -> None:
    """Frames of the configured size, uint8 gray, frame ids consecutive as part_id; the settings read back as set;
    close() is safe twice and a closed camera reads nothing; reopening works."""
    cam = AravisCamera(fake(pixel_format="Mono8", width=64, height=48, exposure_us=1000, gain_db=2.0,
                            frame_rate=200, buffers=4))
    cam.open()
    try:
        t0 = time.monotonic()
        grabs = [cam.read() for _ in range(40)]
        rate = 39 / (time.monotonic() - t0)
    finally:
        cam.close()
    cam.close()
    assert all(g.image.shape == (48, 64) and g.image.dtype == np.uint8 for g in grabs)
    ids = [g.part_id for g in grabs]
    assert all(isinstance(i, int) for i in ids) and consecutive(ids), ids  # type: ignore[arg-type]
    s = cam.settings
    assert s["device_id"] == "Fake_1" and s["pixel_format"] == "Mono8" and s["region"][2:] == (64, 48)
    assert s["exposure_us"] == pytest.approx(1000) and s["gain_db"] == pytest.approx(2.0)
    assert s["frame_rate"] == pytest.approx(200) and s["trigger_mode"] == "Off"
    stamps = [g.camera_time for g in grabs]
    assert 2.5e6 < median_interval_ns(stamps) < 10e6, "the camera's own clock: 5 ms between frames at 200/s"  # type: ignore[arg-type]
    print(f"Fake interface: {rate:.0f} frames/s received at frame_rate = 200, 64x48 Mono8")
    with pytest.raises(OSError, match="not open"):
        cam.read()
    cam.open()  # a reopen after close starts afresh
    assert cam.read().image.shape == (48, 64)
    cam.close()


@pytest.mark.parametrize(("pixel_format", "shape"), [("Mono16", (32, 40)), ("BayerRG8", (32, 40, 3)),
                                                    ("BayerGB8", (32, 40, 3)), ("RGB8", (32, 40, 3))])
def test_fake_camera_deep_and_colour_formats(aravis: Any, pixel_format: str, shape: tuple[int, ...]) -> None:
    """Mono16 becomes uint8 gray; Bayer and RGB become uint8 BGR."""
    cam = AravisCamera(fake(pixel_format=pixel_format, width=40, height=32, frame_rate=500))
    cam.open()
    try:
        image = cam.read().image
    finally:
        cam.close()
    assert image.shape == shape and image.dtype == np.uint8
    assert cam.settings["pixel_format"] == pixel_format


def test_fake_camera_trigger_source_sets_trigger_mode(aravis: Any) -> None:
    """trigger_source turns TriggerMode on with that source (frame_rate then does not apply)."""
    cam = AravisCamera(fake(trigger_source="Software", frame_rate=50))
    cam.open()
    cam.close()
    assert cam.settings["trigger_mode"] == "On" and cam.settings["trigger_source"] == "Software"


def test_unknown_device_is_an_oserror_naming_it(aravis: Any) -> None:
    cam = AravisCamera(fake(device="no-such-camera-42"))
    with pytest.raises(OSError, match="no-such-camera-42") as info:
        cam.open()
    assert "Fake_1" in str(info.value), "the message lists the devices that were found"
    cam.close()
    cam.close()


@pytest.mark.parametrize(("settings", "message"), [
    ({"pixel_format": "Mono12"}, r"pixel_format 'Mono12' is not offered .*Mono8"),
    ({"trigger_source": "Line7"}, r"trigger_source 'Line7' is not offered .*Software"),
    ({"exposure_us": 1e9}, r"exposure_us = 1e\+09 is outside .*ExposureTime range"),
    ({"gain_db": 99.0}, r"gain_db = 99 is outside .*Gain range"),
    ({"width": 4096}, r"region 4096x\d+ at \(0, 0\) does not fit the camera: sensor 2048x2048, Width 1\.\.2048"),
    ({"height": 1024, "offset_y": 1500}, r"region \d+x1024 at \(0, 1500\) does not fit .*sensor 2048x2048"),
])
def test_a_setting_the_camera_refuses_is_an_oserror_naming_it(aravis: Any, settings: dict, message: str) -> None:
    cam = AravisCamera(fake(**settings))
    with pytest.raises(OSError, match=message) as info:
        cam.open()
    assert "Fake_1" in str(info.value)
    cam.close()


def test_daemon_with_an_aravis_fake_camera(aravis: Any, tmp_path: Path, line_factory: Any) -> None:
    """The whole daemon in-process on an `aravis` camera: verdicts over ZeroMQ with seq 0..N-1, each carrying the
    camera's frame id as part_id and its timestamp as camera_time (rising)."""
    model = make_model(tmp_path / "m", size=32)
    src = ('{ type = "aravis", interfaces = ["Fake"], pixel_format = "Mono8", width = 64, height = 64, '
           'frame_rate = 100 }')
    cfg = write_config(tmp_path / "c.toml", camera("cam1", model, src), **sections(tmp_path, buffer={"capacity": 64}))
    line = line_factory(cfg).start()
    line.receive(lambda m: len([1 for t, _ in m if t != "heartbeat"]) >= 30)
    line.stop()
    verdicts = line.verdicts()
    assert len(verdicts) >= 30
    assert [v["seq"] for v in verdicts] == list(range(len(verdicts)))
    assert consecutive([v["part_id"] for v in verdicts])
    stamps = [v["camera_time"] for v in verdicts]
    assert all(isinstance(t, int) for t in stamps) and stamps == sorted(stamps) and stamps[-1] > stamps[0]
    assert all(v["camera"] == "cam1" and v["reason"] in ("ok", "anomaly", "not_inspected") for v in verdicts)


# --- the fake GigE Vision camera, over the network stack, inside a private network namespace -------------------
@pytest.fixture(scope="module")
def gige_netns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GigENamespace]:
    """The fake GigE Vision camera in its namespace, shared by the tests that need a clean link and leave it up."""
    with GigENamespace(tmp_path_factory.mktemp("gige")) as namespace:
        namespace.start_camera()
        yield namespace


GIGE_SCRIPT = """
import json, time
from inspector.capture.aravis import AravisCamera
from inspector.config import AravisSource
from inspector.types import NoFrame

out = {}
cam = AravisCamera(AravisSource(type="aravis", interfaces=["GigEVision"], device="GV01", pixel_format="Mono8",
                                width=320, height=240, frame_rate=200, timeout_ms=2000))
cam.open()
t0 = time.monotonic()
grabs = [cam.read() for _ in range(200)]
out["rate"] = 199 / (time.monotonic() - t0)
out["shapes"] = sorted({str(g.image.shape) + str(g.image.dtype) for g in grabs})
out["ids"] = [g.part_id for g in grabs]
out["settings"] = {k: v for k, v in cam.settings.items() if isinstance(v, (int, float, str))}
out["incomplete"] = cam.incomplete_frames
out["stamps"] = [g.camera_time for g in grabs]
cam.close()
cam.close()

cam = AravisCamera(AravisSource(type="aravis", interfaces=["GigEVision"], device="127.0.0.1", trigger_source="Software",
                                width=64, height=64, timeout_ms=300))
cam.open()
try:
    cam.read()
    out["untriggered"] = "a frame"
except NoFrame as exc:
    out["untriggered"] = "NoFrame: " + str(exc)
cam.software_trigger()
out["triggered"] = cam.read().part_id
cam.close()
print("RESULT " + json.dumps(out))
"""


def test_fake_gige_camera_through_the_network_stack(gige_netns: GigENamespace, tmp_path: Path) -> None:
    """GigE Vision over UDP on the namespace's loopback: discovery, control, streaming at the configured rate (by the
    camera's own clock; the rate received is printed, not asserted, as it follows the machine's load) with every
    frame whole, the camera's timestamps rising with its frame ids, settings read back; with a software trigger a
    frame comes only when triggered."""
    out = gige_netns.run(GIGE_SCRIPT, tmp_path)
    print(f"fake GigE camera in a namespace: {out['rate']:.0f} frames/s at frame_rate = 200, 320x240 Mono8, "
          f"{out['incomplete']} incomplete")
    assert out["shapes"] == ["(240, 320)uint8"]
    assert consecutive(out["ids"]) and out["incomplete"] == 0, "every frame should arrive whole on loopback"
    stamps = out["stamps"]
    steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    assert all(isinstance(t, int) and t > 0 for t in stamps) and all(step > 0 for step in steps), stamps[:5]
    assert 2e6 < median_interval_ns(stamps) < 10e6, "the camera's clock in ns: 5 ms between frames at 200/s"
    assert out["settings"]["device_id"] == "Aravis-Fake-GV01" and out["settings"]["frame_rate"] == 200
    assert out["settings"]["packet_size"] >= 576
    assert out["untriggered"].startswith("NoFrame: ") and "no trigger on Software" in out["untriggered"]
    assert isinstance(out["triggered"], int)


def gige_config(tmp_path: Path, source: str, **buffer: Any) -> Path:
    """A daemon config on one aravis GigEVision camera at 127.0.0.1 (`source`: extra inline-table keys), publishing
    on ipc:// in tmp_path, metrics on METRICS_PORT inside the namespace, quick reconnects."""
    model = make_model(tmp_path / "m", size=32)
    src = f'{{ type = "aravis", interfaces = ["GigEVision"], device = "127.0.0.1", pixel_format = "Mono8", {source} }}'
    extra = "reconnect_min_s = 0.2\nreconnect_max_s = 1.0"
    return write_config(tmp_path / "c.toml", camera("gige", model, src, extra),
                        **sections(tmp_path, buffer={"capacity": 64, **buffer},
                                   metrics={"port": METRICS_PORT, "address": "127.0.0.1"}))


def daemon(namespace: GigENamespace, cfg: Path, tmp_path: Path) -> NsDaemon:
    return NsDaemon(namespace, cfg, f"ipc://{tmp_path}/pub.ipc", tmp_path / "daemon.log")


def test_daemon_cli_on_the_fake_gige_camera(gige_netns: GigENamespace, tmp_path: Path) -> None:
    """`python -m inspector run` inside the namespace on an aravis GigEVision camera; its verdicts reach a SUB
    socket in the root namespace over ipc:// (a filesystem socket crosses network namespaces): seq 0..N-1 with
    the camera's frame ids as part_id; SIGTERM shuts it down cleanly."""
    cfg = gige_config(tmp_path, "width = 64, height = 64, frame_rate = 100")
    with daemon(gige_netns, cfg, tmp_path) as line:
        assert line.receive(lambda m: verdict_count(m) >= 40, 30), line.log.read_text()
        assert line.stop() == 0, line.log.read_text()
    verdicts = line.verdicts()
    assert [v["seq"] for v in verdicts] == list(range(len(verdicts)))
    ids = [v["part_id"] for v in verdicts]
    assert all(b > a or (a > 60000 and b < 5000) for a, b in zip(ids, ids[1:], strict=False)), ids
    assert all(v["camera"] == "gige" and v["reason"] in ("ok", "anomaly", "not_inspected") for v in verdicts)


def test_incomplete_frames_get_the_fail_safe_verdict(tmp_path: Path) -> None:
    """On a link that loses packets (the fake camera drops 5 in 1000 and does not resend), each frame that arrives
    incomplete is a part that was not inspected: it gets the fail-safe verdict (reject, not_inspected, its frame
    id as part_id, its place in the seq order with the others) and is counted in
    inspector_frames_dropped{reason="incomplete"}; the camera stays up, never reconnected."""
    with GigENamespace(tmp_path) as namespace:
        namespace.start_camera("-r", "5")
        cfg = gige_config(tmp_path, "width = 320, height = 240, frame_rate = 100, timeout_ms = 2000")
        with daemon(namespace, cfg, tmp_path) as line:
            assert line.receive(lambda m: verdict_count(m) >= 150, 30), line.log.read_text()
            samples = namespace.scrape()
            lost_before = sum(v["reason"] == "not_inspected" for v in line.verdicts())
            assert line.stop() == 0, line.log.read_text()
    verdicts = line.verdicts()
    lost = [v for v in verdicts if v["reason"] == "not_inspected"]
    counted = metric_sum(samples, "inspector_frames_dropped_total", camera="gige", reason="incomplete")
    print(f"lossy fake GigE camera: {len(verdicts)} verdicts, {len(lost)} for incomplete frames")
    assert lost, "at 5 lost packets in 1000, about one frame in five should arrive incomplete"
    assert all(v["verdict"] == "reject" and v["score"] is None for v in lost)
    assert sum(v["part_id"] is not None for v in lost) >= len(lost) / 2, "most lost frames keep their frame id"
    assert metric_sum(samples, "inspector_frames_dropped_total", camera="gige", reason="buffer_full") == 0
    assert lost_before <= counted <= len(lost), "each incomplete frame is counted once and has its verdict"
    # a fail-safe verdict can overtake frames still in inference (docs/integration.md, section 4): every seq
    # arrives exactly once, and in seq order the frame ids keep their places
    assert sorted(v["seq"] for v in verdicts) == list(range(len(verdicts)))
    in_order = sorted(verdicts, key=lambda v: v["seq"])
    ids = [v["part_id"] for v in in_order if v["part_id"] is not None]
    assert all(0 < b - a < 20 or (a > 65000 and b < 500) for a, b in zip(ids, ids[1:], strict=False)), \
        f"lost frames keep their place among the frame ids: {ids}"
    assert metric_sum(samples, "inspector_camera_reconnects_total", camera="gige") == 0
    assert metric_sum(samples, "inspector_camera_up", camera="gige") == 1


def test_camera_that_disappears_is_marked_down_and_comes_back(tmp_path: Path) -> None:
    """The fake camera is stopped mid-stream (power lost): the camera is marked down (inspector_camera_up 0, the
    heartbeat says down), no verdict is published for the frames that never came (seq stays contiguous, no
    burst of fail-safe verdicts); started again, it is reopened and frames flow, without restarting the daemon."""
    with GigENamespace(tmp_path) as namespace:
        namespace.start_camera()
        cfg = gige_config(tmp_path, "width = 64, height = 64, frame_rate = 50, timeout_ms = 500")
        with daemon(namespace, cfg, tmp_path) as line:
            assert line.receive(lambda m: verdict_count(m) >= 25, 30), line.log.read_text()
            namespace.stop_camera()
            mark = len(line.messages)
            down = line.receive(lambda m: any(t == "heartbeat" and not p["cameras"]["gige"]["up"]
                                              for t, p in m[mark:]), 10)
            assert down, line.log.read_text()
            assert metric_sum(namespace.scrape(), "inspector_camera_up", camera="gige") == 0
            while_down = verdict_count(line.messages)
            line.receive(lambda m: False, 2.0)
            assert verdict_count(line.messages) == while_down, "no verdict for frames that never came"
            namespace.start_camera()
            assert line.receive(lambda m: verdict_count(m) >= while_down + 25, 30), line.log.read_text()
            samples = namespace.scrape()
            assert line.stop() == 0, line.log.read_text()
    verdicts = line.verdicts()
    assert [v["seq"] for v in verdicts] == list(range(len(verdicts)))
    assert sum(v["reason"] == "not_inspected" for v in verdicts) <= 2, "at most a frame cut off by the power loss"
    assert metric_sum(samples, "inspector_camera_up", camera="gige") == 1
    assert metric_sum(samples, "inspector_camera_reconnects_total", camera="gige") >= 1
    assert any(p["cameras"]["gige"]["up"] for p in line.heartbeats()[-3:])


HOLDER = """
import sys, time
from inspector.capture.aravis import AravisCamera
from inspector.config import AravisSource

cam = AravisCamera(AravisSource(type="aravis", interfaces=["GigEVision"], device="127.0.0.1", width=64, height=64))
cam.open()
print("HELD", flush=True)
sys.stdin.readline()
cam.close()
"""


def test_camera_held_by_another_process_is_a_clear_error_and_retried(tmp_path: Path) -> None:
    """While another process controls the GigE camera, the daemon's open fails with an error that says so (the
    camera stays down, retried; the daemon does not crash and writes no setting); once the other process lets go,
    the camera comes up and frames flow."""
    with GigENamespace(tmp_path) as namespace:
        namespace.start_camera()
        holder = subprocess.Popen(ns(namespace.name, sys.executable, "-c", HOLDER), cwd=REPO, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            assert holder.stdout is not None
            assert "HELD" in [holder.stdout.readline().strip() for _ in range(2)], "the holder did not open the camera"
            cfg = gige_config(tmp_path, "width = 96, height = 32, frame_rate = 50")
            with daemon(namespace, cfg, tmp_path) as line:
                deadline = time.monotonic() + 30
                while "controlled by another program" not in line.log.read_text() and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert "controlled by another program" in line.log.read_text(), line.log.read_text()
                assert verdict_count(line.messages) == 0
                assert line.proc.poll() is None
                holder.communicate("\n", timeout=10)
                assert line.receive(lambda m: verdict_count(m) >= 10, 30), line.log.read_text()
                assert line.stop() == 0, line.log.read_text()
        finally:
            stop(holder)
    assert all(v["reason"] in ("ok", "anomaly") for v in line.verdicts())

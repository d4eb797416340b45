"""The daemon end to end, in-process: real cameras sources, a real model on the CPU, a real ZeroMQ SUB
socket on ipc://, and real HTTP scrapes of /metrics."""

from __future__ import annotations

import resource
import threading
import time
from pathlib import Path

import numpy as np

from inspector.buffer import FrameRing
from inspector.capture import SOURCES, make_source
from inspector.capture.camera import Camera
from inspector.config import CameraConfig, OpenCVSource, ReplaySource, SyntheticSource
from inspector.metrics import Metrics
from inspector.types import FrameSource, Grab

from .conftest import camera, make_model, metric_sum, scrape, sections, write_config, write_images, write_video


def test_every_source_implements_the_protocol(tmp_path: Path) -> None:
    configs = [SyntheticSource(type="synthetic"), ReplaySource(type="replay", path=tmp_path),
               OpenCVSource(type="opencv", source=str(tmp_path / "x.avi"))]
    assert sorted(SOURCES) == ["aravis", "opencv", "pylon", "replay", "synthetic"]  # GenICam ones: own tests
    for cfg in configs:
        assert isinstance(make_source(cfg), FrameSource)


def test_replay_folder_every_frame_gets_exactly_one_message(tmp_path: Path, line_factory) -> None:
    """A labelled folder replayed once: one message per image, seq 0..N-1 with no gap, labels travel,
    and the metrics scraped over HTTP agree with what was published."""
    labels = write_images(tmp_path / "parts", 40, defect_rate=0.3, size=48)
    model = make_model(tmp_path / "m", size=32, threshold=0.02)
    src = f'{{ type = "replay", path = "{tmp_path}/parts", fps = 0 }}'
    cfg = write_config(tmp_path / "c.toml", camera("cam1", model, src),
                       **sections(tmp_path, buffer={"capacity": 64}))
    line = line_factory(cfg).start()
    line.receive_verdicts(40)
    port = line.service.metrics_port
    samples = scrape(port)
    line.stop()
    verdicts = line.verdicts()
    assert [v["seq"] for v in verdicts] == list(range(40))
    assert [v["label"] for v in verdicts] == labels
    for v in verdicts:
        assert v["schema"] == 1 and v["camera"] == "cam1" and v["reason"] in ("ok", "anomaly")
        assert v["verdict"] == ("reject" if v["score"] >= v["threshold"] else "accept")
        assert v["latency_ms"] > 0 and v["captured_at"] > 1.7e9 and v["model"].startswith("m/")
    topics = {t for t, _ in line.messages}
    assert "heartbeat" in topics and topics - {"heartbeat"} <= {"accept.cam1", "reject.cam1"}
    assert metric_sum(samples, "inspector_frames_captured_total", camera="cam1") == 40
    assert metric_sum(samples, "inspector_verdicts_total", camera="cam1") == 40
    assert metric_sum(samples, "inspector_known_parts_total", label="defect") == labels.count("defect")
    assert metric_sum(samples, "inspector_latency_seconds_count", camera="cam1") == 40
    assert metric_sum(samples, "inspector_anomaly_score_count", camera="cam1") == 40
    assert metric_sum(samples, "inspector_inference_batch_size_sum") == 40
    assert metric_sum(samples, "inspector_model_info", model="m") == 1
    beats = [p for t, p in line.messages if t == "heartbeat"]
    assert beats[-1]["cameras"]["cam1"]["last_seq"] == 39 and beats[-1]["uptime_s"] > 0


def _replay_and_archive(tmp_path: Path, line_factory, model: Path, folder: Path, n: int) -> list[float]:
    """Replay the n images of a folder through the daemon, archiving into tmp_path/arch; the published scores."""
    src = f'{{ type = "replay", path = "{folder}", fps = 0 }}'
    cfg = write_config(tmp_path / "c.toml", camera("cam1", model, src),
                       archive={"enabled": True, "directory": "arch"}, **sections(tmp_path))
    line = line_factory(cfg).start()
    line.receive_verdicts(n)
    line.stop()
    return [v["score"] for v in line.verdicts()]


def test_a_padded_model_gets_padded_frames_as_offline(tmp_path: Path, line_factory) -> None:
    """A model whose artifact says fit = "pad" is fed non-square frames with their aspect kept: the daemon
    publishes the scores offline scoring gives for the same images padded, not those of stretched ones, and
    the archived heatmap lays the map of the image itself (not of the reflected margins) over the frame."""
    import cv2
    import torch

    from inspector.artifact import load_artifact
    from inspector.dataset import load_folder
    from inspector.heatmap import heat_scale, overlay_roi
    from inspector.inference import score_artifact
    from inspector.preprocess import unfit
    from inspector.synth import PartRenderer

    folder = tmp_path / "parts"
    folder.mkdir()
    renderer = PartRenderer(width=96, height=48, seed=2, defect_rate=0.5)
    for i in range(6):
        cv2.imwrite(str(folder / f"part_{i}.png"), renderer.render().image)
    model = make_model(tmp_path / "m", size=32, fit="pad", threshold=0.0)  # every part a reject: all archived
    published = _replay_and_archive(tmp_path, line_factory, model, folder, 6)
    art, cpu = load_artifact(model), torch.device("cpu")
    offline = {fit: score_artifact(art, load_folder(folder, 32, 32, 1, fit=fit).images, cpu, keep_maps=True)
               for fit in ("pad", "stretch")}
    pad, stretch = offline["pad"].scores["score"], offline["stretch"].scores["score"]
    np.testing.assert_allclose(published, pad, rtol=1e-4, atol=1e-7)
    assert np.max(np.abs(stretch - pad)) > 100 * np.max(np.abs(published - pad))
    frame = cv2.imread(str(folder / "part_0.png"), cv2.IMREAD_GRAYSCALE)
    archived = cv2.imread(str(next((tmp_path / "arch").glob("*/cam1/0_reject_anomaly_heatmap.png"))))
    full = offline["pad"].errors[0]  # the map at the input size, margins included
    seen = unfit(full, 48, 96, "pad")
    assert seen.shape == (16, 32)
    expected = overlay_roi(frame, seen, heat_scale("mse", float(seen.max())), None)
    wrong = overlay_roi(frame, full, heat_scale("mse", float(full.max())), None)
    assert np.abs(archived.astype(int) - expected).max() <= 2 < np.abs(archived.astype(int) - wrong).max()


def test_a_contrast_stretched_model_gets_stretched_frames_as_offline(tmp_path: Path, line_factory) -> None:
    """A model whose artifact says contrast = "stretch" is fed dim frames of different contrasts: the daemon
    publishes the scores offline scoring gives for the same images stretched, not those of the frames as they
    are, and the archive keeps the frame as captured."""
    import cv2
    import torch

    from inspector.artifact import load_artifact
    from inspector.dataset import load_folder
    from inspector.inference import score_artifact
    from inspector.synth import PartRenderer

    folder = tmp_path / "parts"
    folder.mkdir()
    renderer = PartRenderer(width=48, height=48, seed=3, defect_rate=0.5)
    for i in range(6):  # lit ever more dimly: grey levels 20 + (0.15 .. 0.65) x the part's
        dim = renderer.render().image.astype(np.float32) * (0.15 + 0.1 * i) + 20
        cv2.imwrite(str(folder / f"part_{i}.png"), dim.round().astype(np.uint8))
    model = make_model(tmp_path / "m", size=32, contrast="stretch", threshold=0.0)  # all rejects: all archived
    published = _replay_and_archive(tmp_path, line_factory, model, folder, 6)
    art, cpu = load_artifact(model), torch.device("cpu")
    offline = {c: score_artifact(art, load_folder(folder, 32, 32, 1, contrast=c).images, cpu).scores["score"]
               for c in ("stretch", "none")}
    np.testing.assert_allclose(published, offline["stretch"], rtol=1e-4, atol=1e-7)
    assert np.max(np.abs(offline["none"] - offline["stretch"])) > 100 * np.max(np.abs(published - offline["stretch"]))
    archived = cv2.imread(str(next((tmp_path / "arch").glob("*/cam1/0_reject_anomaly.png"))), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(archived, cv2.imread(str(folder / "part_0.png"), cv2.IMREAD_GRAYSCALE))


def test_video_file_through_ffmpeg_and_roi(tmp_path: Path, line_factory) -> None:
    """A video written by OpenCV, replayed through the FFmpeg back-end, colour frames cropped to an ROI."""
    write_video(tmp_path / "parts.avi", 25, size=64)
    model = make_model(tmp_path / "m", size=32)
    cfg = write_config(tmp_path / "c.toml",
                       camera("cam1", model, f'{{ type = "replay", path = "{tmp_path}/parts.avi", fps = 0 }}',
                              extra="roi = [8, 8, 48, 48]"), **sections(tmp_path, buffer={"capacity": 64}))
    line = line_factory(cfg).start()
    line.receive_verdicts(25)
    line.stop()
    verdicts = line.verdicts()
    assert [v["seq"] for v in verdicts] == list(range(25))
    assert [v["part_id"] for v in verdicts] == list(range(25))
    assert all(v["reason"] in ("ok", "anomaly") and v["score"] is not None for v in verdicts)


def test_overload_gives_counted_fail_safe_rejects_and_bounded_memory(tmp_path: Path, line_factory) -> None:
    """Two cameras far faster than the model into rings of 4: frames are dropped, yet every captured frame
    gets exactly one message (dropped ones: reject/not_inspected), the counts agree, memory stays bounded."""
    model = make_model(tmp_path / "m", size=128, base_width=32)
    src = '{ type = "synthetic", fps = 1000, width = 128, height = 128, bank_size = 8, seed = %d }'
    cfg = write_config(tmp_path / "c.toml",
                       camera("cam1", model, src % 1) + camera("cam2", model, src % 2),
                       **sections(tmp_path, buffer={"capacity": 4}, worker={"max_batch": 4, "max_wait_ms": 1}))
    line = line_factory(cfg).start()
    line.receive(lambda m: False, timeout=1.0)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    line.receive(lambda m: False, timeout=3.0)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    line.stop()
    captured = {c: line.service.cameras[c].frames for c in ("cam1", "cam2")}
    verdicts = line.verdicts()
    for cam, n in captured.items():
        seqs = sorted(v["seq"] for v in verdicts if v["camera"] == cam)
        assert seqs == list(range(n)), f"{cam}: gap or duplicate in seq"
    dropped = [v for v in verdicts if v["reason"] == "not_inspected"]
    inspected = [v for v in verdicts if v["reason"] in ("ok", "anomaly")]
    assert dropped, "cameras at 2 x 1000 fps should overrun this model on 2 cores"
    assert inspected
    assert all(v["verdict"] == "reject" and v["score"] is None for v in dropped)
    m = line.service.metrics
    counted = sum(m.frames_dropped.labels(c, r)._value.get() for c in ("cam1", "cam2")
                  for r in ("buffer_full", "shutdown"))
    assert counted == len(dropped)
    assert sum(m.publish_overflow.labels(c)._value.get() for c in ("cam1", "cam2")) == 0
    assert (rss1 - rss0) < 100_000, f"resident memory grew by {rss1 - rss0} KiB under overload"


def test_fail_open_is_explicit(tmp_path: Path, line_factory) -> None:
    """With not_inspected_verdict = "accept" dropped parts are accepted, still with reason not_inspected."""
    model = make_model(tmp_path / "m", size=32)
    cfg = write_config(tmp_path / "c.toml",
                       camera("cam1", model, '{ type = "synthetic", fps = 0, width = 64, height = 64, bank_size = 4 }'),
                       **sections(tmp_path, buffer={"capacity": 2}, scoring={"not_inspected_verdict": "accept"}))
    line = line_factory(cfg).start()
    line.receive(lambda m: any(p.get("reason") == "not_inspected" for _, p in m), timeout=10)
    line.stop()
    dropped = [v for v in line.verdicts() if v["reason"] == "not_inspected"]
    assert dropped and all(v["verdict"] == "accept" for v in dropped)


def test_deadline_gives_fail_safe_instead_of_late_verdict(tmp_path: Path, line_factory) -> None:
    model = make_model(tmp_path / "m", size=32)
    cfg = write_config(tmp_path / "c.toml",
                       camera("cam1", model, '{ type = "synthetic", fps = 50, width = 64, height = 64, count = 20 }'),
                       **sections(tmp_path, worker={"deadline_ms": 0.001}))
    line = line_factory(cfg).start()
    line.receive_verdicts(20)
    line.stop()
    verdicts = line.verdicts()
    assert len(verdicts) == 20
    assert all(v["reason"] == "deadline" and v["verdict"] == "reject" and v["score"] is None for v in verdicts)


def test_camera_down_at_start_then_reconnected_and_reopened(tmp_path: Path, line_factory) -> None:
    """An opencv camera whose source does not exist yet: the daemon starts and reports it down; once the
    video appears it comes up; when the video ends (the camera 'dies') it is reconnected and reads again."""
    model = make_model(tmp_path / "m", size=32)
    video = tmp_path / "cam.avi"
    src = f'{{ type = "opencv", source = "{video}", backend = "ffmpeg" }}'
    cfg = write_config(tmp_path / "c.toml",
                       camera("cam1", model, src, extra="reconnect_min_s = 0.1\nreconnect_max_s = 0.2"),
                       **sections(tmp_path))
    t0 = time.monotonic()
    line = line_factory(cfg, ready_grace_s=6.0).start()
    assert time.monotonic() - t0 < 4, "a camera reported down does not hold READY back for the grace period"
    port = line.service.metrics_port
    time.sleep(0.6)
    samples = scrape(port)
    assert metric_sum(samples, "inspector_camera_up", camera="cam1") == 0
    assert metric_sum(samples, "inspector_camera_reconnects_total", camera="cam1") >= 1
    tmp = tmp_path / "tmp.avi"
    write_video(tmp, 10, size=48)
    tmp.rename(video)
    line.receive_verdicts(25, timeout=20)
    samples = scrape(port)
    line.stop()
    verdicts = line.verdicts()
    assert len(verdicts) >= 25, "the camera should come up, end, reconnect and deliver again"
    assert [v["seq"] for v in verdicts] == list(range(len(verdicts)))
    assert metric_sum(samples, "inspector_camera_reconnects_total", camera="cam1") >= 3
    beats = [p for t, p in line.messages if t == "heartbeat"]
    assert any(not b["cameras"]["cam1"]["up"] for b in beats)


class BlockingSource:
    """A source that delivers `frames` frames, then blocks in read() until released (a hung driver)."""

    interval_s = 0.0

    def __init__(self, frames: int, release: threading.Event, late_id: int) -> None:
        self.frames, self.release, self.opened, self.late_id = frames, release, 0, late_id

    def open(self) -> None:
        self.opened += 1

    def read(self) -> Grab:
        if self.frames == 0:
            self.release.wait(30)
            return Grab(image=np.zeros((8, 8), np.uint8), part_id=self.late_id)
        self.frames -= 1
        time.sleep(0.01)
        return Grab(image=np.zeros((8, 8), np.uint8))

    def close(self) -> None:
        pass


def test_stalled_camera_is_replaced_and_its_late_frame_discarded() -> None:
    """A read that hangs is detected after stall_timeout_s; a fresh source is opened in a new thread, seq
    continues without a gap, and the frame the hung read finally returns is not numbered or buffered."""
    release, never = threading.Event(), threading.Event()
    sources = [BlockingSource(3, release, -1), BlockingSource(2, never, -2)]
    made = iter(sources)
    ring = FrameRing("cam1", 64, "drop_oldest", threading.Condition())
    states: list[str] = []
    registry = Metrics()
    stop = threading.Event()
    cfg = CameraConfig(id="cam1", model=Path("m"), source={"type": "synthetic"}, stall_timeout_s=0.3)
    cam = Camera(cfg, lambda: next(made), ring, lambda f, r: None, lambda o, n, d: states.append(n),
                 registry.frames_captured.labels("cam1"), registry.camera_reconnects.labels("cam1"), stop)
    cam.start()
    deadline = time.monotonic() + 5
    while not cam.check_stall(time.monotonic()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert states[:2] == ["up", "stalled"]
    time.sleep(0.3)
    release.set()  # the hung read of the first thread returns now: its frame must be discarded
    time.sleep(0.2)
    frames = ring.drain()
    stop.set()
    never.set()
    cam.join(2)
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4]
    assert all(f.part_id != -1 for f in frames)
    assert sources[1].opened == 1
    assert registry.camera_reconnects.labels("cam1")._value.get() == 1


def test_opencv_stream_url_over_http(tmp_path: Path, line_factory) -> None:
    """An `opencv` camera on an http:// URL: FFmpeg fetches the stream from a real local HTTP server."""
    import functools
    import http.server

    write_video(tmp_path / "www.avi", 12, size=64)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        model = make_model(tmp_path / "m", size=32)
        url = f"http://127.0.0.1:{server.server_address[1]}/www.avi"
        src = f'{{ type = "opencv", source = "{url}", backend = "ffmpeg", fps = 100 }}'
        cfg = write_config(tmp_path / "c.toml", camera("cam1", model, src), **sections(tmp_path))
        line = line_factory(cfg).start()
        line.receive_verdicts(12)
        line.stop()
    finally:
        server.shutdown()
    verdicts = line.verdicts()
    assert [v["seq"] for v in verdicts[:12]] == list(range(12))
    assert all(v["reason"] in ("ok", "anomaly") for v in verdicts[:12])


def test_hanging_open_is_detected_as_a_stall() -> None:
    """A source whose open() never returns (a driver stuck on connect) is replaced after
    stall_timeout_s + reconnect_max_s."""
    hang, done = threading.Event(), threading.Event()

    class HangingOpen(BlockingSource):
        def open(self) -> None:
            self.opened += 1
            hang.wait(30)

    sources = [HangingOpen(0, done, -1), BlockingSource(1, done, -2)]
    made = iter(sources)
    ring = FrameRing("cam1", 8, "drop_oldest", threading.Condition())
    metrics = Metrics()
    stop = threading.Event()
    cfg = CameraConfig(id="cam1", model=Path("m"), source={"type": "synthetic"}, stall_timeout_s=0.2,
                       reconnect_max_s=0.2)
    cam = Camera(cfg, lambda: next(made), ring, lambda f, r: None, lambda o, n, d: None,
                 metrics.frames_captured.labels("cam1"), metrics.camera_reconnects.labels("cam1"), stop)
    cam.start()
    time.sleep(0.1)
    assert not cam.check_stall(time.monotonic())
    time.sleep(0.4)
    assert cam.check_stall(time.monotonic())
    end = time.monotonic() + 3
    while cam.frames < 1 and time.monotonic() < end:
        time.sleep(0.02)
    stop.set()
    hang.set()
    done.set()
    cam.join(2)
    assert sources[1].opened == 1 and cam.frames >= 1


def test_non_finite_scores_give_error_fail_safe(tmp_path: Path, line_factory) -> None:
    """A model that outputs NaN (corrupted weights, fp16 overflow) yields reject/error, never a NaN score."""
    import torch

    from inspector.artifact import load_artifact, save_artifact

    model = make_model(tmp_path / "m")
    art = load_artifact(model)
    with torch.no_grad():
        next(art.module.parameters()).fill_(float("nan"))
    save_artifact(model, art.module, art.meta.model_dump(exclude={"format", "format_version", "weights_sha256",
                                                                   "inspector_version"}))
    src = '{ type = "synthetic", fps = 50, width = 64, height = 64, count = 10 }'
    cfg = write_config(tmp_path / "c.toml", camera("cam1", model, src), **sections(tmp_path))
    line = line_factory(cfg).start()
    line.receive_verdicts(10)
    line.stop()
    verdicts = line.verdicts()
    assert len(verdicts) == 10
    assert all(v["verdict"] == "reject" and v["reason"] == "error" and v["score"] is None for v in verdicts)


def test_idle_triggered_camera_is_not_reconnected() -> None:
    """A source that answers NoFrame (a triggered camera on an idle line) stays up: no reconnect, no stall."""
    from inspector.types import NoFrame

    class IdleTriggered(BlockingSource):
        def read(self) -> Grab:
            time.sleep(0.05)
            raise NoFrame("no trigger")

    source = IdleTriggered(0, threading.Event(), -1)
    ring = FrameRing("cam1", 8, "drop_oldest", threading.Condition())
    metrics = Metrics()
    stop = threading.Event()
    states: list[str] = []
    cfg = CameraConfig(id="cam1", model=Path("m"), source={"type": "synthetic"}, stall_timeout_s=0.2)
    cam = Camera(cfg, lambda: source, ring, lambda f, r: None, lambda o, n, d: states.append(n),
                 metrics.frames_captured.labels("cam1"), metrics.camera_reconnects.labels("cam1"), stop)
    cam.start()
    for _ in range(10):
        time.sleep(0.1)
        assert not cam.check_stall(time.monotonic())
    stop.set()
    cam.join(2)
    assert states == ["up"] and source.opened == 1 and cam.frames == 0
    assert metrics.camera_reconnects.labels("cam1")._value.get() == 0


def test_torchscript_and_eager_give_the_same_scores(tmp_path: Path) -> None:
    """worker.jit traces and freezes the model; its scores equal the eager model's at any batch size."""
    import torch

    from inspector.artifact import load_artifact
    from inspector.scoring import make_reduction
    from inspector.synth import PartRenderer
    from inspector.worker import Scorer

    model = make_model(tmp_path / "m", size=64, base_width=8)
    renderer = PartRenderer(width=64, height=64, seed=5, defect_rate=0.5)
    images = [renderer.render().image for _ in range(6)]
    results = []
    for jit in (False, True):
        scorer = Scorer(load_artifact(model), make_reduction("smoothed_max"), 0.05, torch.device("cpu"),
                        torch.float32, 6, jit)
        assert scorer.traced is jit
        out = []
        for n in (6, 2, 1):
            for i in range(n):
                scorer.host_np[i] = images[i]
            out.append(scorer.scores(n))
        results.append(out)
    for eager, traced in zip(*results, strict=True):
        np.testing.assert_allclose(traced, eager, rtol=1e-4, atol=1e-7)


def test_the_demo_model_traces_in_bf16_with_scores_near_fp32() -> None:
    """In bf16 (worker.precision = "bf16") the shipped demo model is still traced, not left eager by the trace
    check, and its scores stay within 5% of fp32's; "auto" keeps this reconstruction model in fp32."""
    import torch

    from inspector.artifact import load_artifact
    from inspector.device import resolve_dtype
    from inspector.synth import PartRenderer
    from inspector.worker import Scorer

    art = load_artifact(Path(__file__).resolve().parents[1] / "models" / "demo")
    spec = art.meta.input
    renderer = PartRenderer(width=spec.width, height=spec.height, seed=7, defect_rate=0.5)
    images = [renderer.render().image for _ in range(8)]
    scores = {}
    for dtype in (torch.float32, torch.bfloat16):
        scorer = Scorer(load_artifact(art.path), art.reduction(), art.meta.threshold.value, torch.device("cpu"),
                        dtype, 8, jit=True)
        assert scorer.traced, dtype
        for i, image in enumerate(images):
            scorer.host_np[i] = image
        scores[dtype] = np.array(scorer.scores(8))
    np.testing.assert_allclose(scores[torch.bfloat16], scores[torch.float32], rtol=0.05)
    assert resolve_dtype("auto", torch.device("cpu"), art.meta.output) == torch.float32


def test_missing_opencv_backend_is_named() -> None:
    """A back-end this OpenCV build lacks (GStreamer in the pip wheels) gives an error that says so."""
    import cv2
    import pytest

    from inspector.capture.opencv import OpenCVCamera

    if cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
        pytest.skip("this OpenCV build has GStreamer")
    cam = OpenCVCamera(OpenCVSource(type="opencv", source="videotestsrc ! appsink", backend="gstreamer"))
    with pytest.raises(OSError, match="has no gstreamer back-end"):
        cam.open()
    cam.close()


def test_a_threshold_set_in_another_arithmetic_is_warned_about(tmp_path: Path, line_factory) -> None:
    """A model whose threshold was set in bf16 (on a machine where bf16 paid), run by a daemon whose precision
    resolves to fp32, starts with a warning that names both and the command that recalibrates it; a model
    calibrated in the daemon's own arithmetic starts without one."""
    import json

    from structlog.testing import capture_logs

    warned = {}
    for arithmetic in ("bf16", "fp32"):
        model = make_model(tmp_path / arithmetic, size=32)
        meta = json.loads((model / "model.json").read_text())
        meta["threshold"]["details"] = {"arithmetic": arithmetic}
        (model / "model.json").write_text(json.dumps(meta))
        source = '{ type = "synthetic", fps = 50, width = 64, height = 64, count = 3 }'
        cfg = write_config(tmp_path / f"{arithmetic}.toml", camera("cam1", model, source),
                           **sections(tmp_path / arithmetic))
        with capture_logs() as logs:
            line = line_factory(cfg).start()
            line.receive_verdicts(3)
            line.stop()
        warned[arithmetic] = [e for e in logs if e["event"] == "threshold set in another arithmetic"]
    assert len(warned["bf16"]) == 1 and not warned["fp32"]
    w = warned["bf16"][0]
    assert (w["calibrated"], w["running"], w["log_level"]) == ("bf16", "fp32", "warning")
    assert f"inspector calibrate --model {tmp_path / 'bf16'}" in w["hint"]

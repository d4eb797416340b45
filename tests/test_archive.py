"""The reject archive: what it selects, the layout it writes, its bounds, and that it drops entries, never frames."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from prometheus_client import CollectorRegistry

from inspector.archive import Archive, ArchiveWriter
from inspector.config import ArchiveConfig, load_config
from inspector.logs import get_logger
from inspector.metrics import Metrics
from inspector.types import Evidence

from .conftest import camera, make_draem_model, make_model, metric_sum, run_cli, scrape, sections, write_config

REPO = Path(__file__).resolve().parents[1]
CAPTURED = 1_767_225_600.5  # 2026-01-01 00:00:00.5 UTC


def payload(seq: int, verdict: str = "reject", reason: str = "anomaly", cam: str = "cam1") -> dict[str, Any]:
    return {"schema": 1, "camera": cam, "seq": seq, "part_id": seq, "captured_at": CAPTURED, "verdict": verdict,
            "reason": reason, "score": 0.5, "threshold": 0.1, "latency_ms": 3.0, "model": "m/abc", "label": None}


def frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (48, 64), dtype=np.uint8)


def make_archive(tmp_path: Path, **cfg: Any) -> tuple[Archive, Metrics]:
    metrics = Metrics(CollectorRegistry())
    config = ArchiveConfig(**{"enabled": True, "directory": tmp_path / "archive", **cfg})
    return Archive(config, metrics, get_logger("test"), rois={"cam1": (16, 8, 32, 32)}), metrics


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_wants_every_reject_and_an_even_sample_of_accepts(tmp_path: Path) -> None:
    archive, _ = make_archive(tmp_path, accept_sample=0.25)
    assert all(archive.wants("reject", r, "cam1") for r in ("anomaly", "not_inspected", "deadline", "error"))
    picks = [archive.wants("accept", "ok", "cam1") for _ in range(100)]
    assert sum(picks) == 25 and picks[:8] == [False, False, False, True] * 2  # every 4th, deterministically
    assert sum(archive.wants("accept", "ok", "cam2") for _ in range(8)) == 2  # counted per camera
    no_rejects, _ = make_archive(tmp_path, rejects=False)
    assert not no_rejects.wants("reject", "anomaly", "cam1") and not no_rejects.wants("accept", "ok", "cam1")
    off = Archive(ArchiveConfig(), Metrics(CollectorRegistry()), get_logger("test"))
    assert not off.wants("reject", "anomaly", "cam1")
    assert not off.submit(payload(0), Evidence(frame(), None))


def test_writes_frame_heatmap_over_the_roi_and_the_message(tmp_path: Path) -> None:
    archive, metrics = make_archive(tmp_path)
    archive.start()
    image = frame()
    heat = np.zeros((16, 16), np.float32)
    heat[4:8, 4:8] = 1.0  # a hot spot in the model's view of the ROI
    assert archive.submit(payload(7), Evidence(image, heat))
    assert archive.submit(payload(8, "reject", "not_inspected"), Evidence(image, None))
    assert archive.close(5.0)
    folder = tmp_path / "archive" / "2026-01-01" / "cam1"
    assert sorted(p.name for p in folder.iterdir()) == [
        "7_reject_anomaly.json", "7_reject_anomaly.png", "7_reject_anomaly_heatmap.png",
        "8_reject_not_inspected.json", "8_reject_not_inspected.png"]
    assert np.array_equal(cv2.imread(str(folder / "7_reject_anomaly.png"), cv2.IMREAD_UNCHANGED), image)
    assert json.loads((folder / "7_reject_anomaly.json").read_text()) == payload(7)
    overlay = cv2.imread(str(folder / "7_reject_anomaly_heatmap.png"), cv2.IMREAD_UNCHANGED)
    assert overlay.shape == (48, 64, 3)
    gray = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    outside = np.ones((48, 64), bool)
    outside[8:40, 16:48] = False
    assert np.array_equal(overlay[outside], gray[outside])  # outside the ROI: the frame untouched
    red_minus_blue = overlay[..., 2].astype(int) - overlay[..., 0]
    assert red_minus_blue[16:24, 24:32].min() > 40  # the hot spot (map 16x16 -> ROI 32x32): red
    assert red_minus_blue[8:14, 16:22].max() < -40  # a cold corner of the ROI: blue
    assert value(metrics, "inspector_archive_saved_total", camera="cam1", verdict="reject") == 2
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert value(metrics, "inspector_archive_items") == 2 and value(metrics, "inspector_archive_bytes") == size


def test_jpg_format(tmp_path: Path) -> None:
    archive, _ = make_archive(tmp_path, image_format="jpg")
    archive.start()
    archive.submit(payload(1), Evidence(frame(), np.ones((8, 8), np.float32)))
    archive.close(5.0)
    names = sorted(p.name for p in (tmp_path / "archive" / "2026-01-01" / "cam1").iterdir())
    assert names == ["1_reject_anomaly.jpg", "1_reject_anomaly.json", "1_reject_anomaly_heatmap.jpg"]


def test_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    """submit never waits: with the writer not yet running, a queue of 3 takes 3 entries and counts the rest."""
    archive, metrics = make_archive(tmp_path, queue=3)
    t0 = time.perf_counter()
    taken = [archive.submit(payload(i), Evidence(frame(i), None)) for i in range(50)]
    assert time.perf_counter() - t0 < 0.5
    assert taken == [True] * 3 + [False] * 47
    assert value(metrics, "inspector_archive_dropped_total", camera="cam1") == 47
    archive.start()
    assert archive.close(5.0)  # flushes what was queued
    assert archive.close(5.0)  # idempotent
    assert not archive.submit(payload(99), Evidence(frame(), None))  # closed
    assert len(list((tmp_path / "archive").glob("*/cam1/*.json"))) == 3


def test_retention_by_count_and_size_survives_a_restart(tmp_path: Path) -> None:
    """Oldest entries go first; a new writer counts what is on disk; a seq reused after a restart gets a suffix."""
    writer = ArchiveWriter(tmp_path / "a", 5, 10**9, get_logger("test"))
    writer.scan()
    png = cv2.imencode(".png", frame())[1].tobytes()
    for seq in range(8):
        writer.write(payload(seq), png, None)
        time.sleep(0.01)  # distinct mtimes: the restart below orders by them
    folder = tmp_path / "a" / "2026-01-01" / "cam1"
    assert writer.items == 5 and sorted(int(p.stem.split("_")[0]) for p in folder.glob("*.json")) == [3, 4, 5, 6, 7]
    entry = writer.bytes // 5
    again = ArchiveWriter(tmp_path / "a", 5, int(entry * 3.5), get_logger("test"))  # a smaller size bound
    again.scan()
    assert again.items == 3 and sorted(int(p.stem.split("_")[0]) for p in folder.glob("*.json")) == [5, 6, 7]
    again.write(payload(5), png, None)  # the daemon restarted: seq 5 again
    assert (folder / "5_reject_anomaly-1.json").exists() and again.items == 3
    assert sorted(p.stem for p in folder.glob("*.json")) == ["5_reject_anomaly-1", "6_reject_anomaly",
                                                             "7_reject_anomaly"]
    other_day = dict(payload(0), captured_at=CAPTURED + 86400)
    tiny = ArchiveWriter(tmp_path / "a", 1, 10**9, get_logger("test"))
    tiny.scan()
    tiny.write(other_day, png, None)
    assert not (tmp_path / "a" / "2026-01-01").exists()  # emptied folders are removed
    assert [p.name for p in (tmp_path / "a" / "2026-01-02" / "cam1").iterdir()] != []


def test_names_from_the_network_cannot_escape_the_directory(tmp_path: Path) -> None:
    writer = ArchiveWriter(tmp_path / "a", 10, 10**9, get_logger("test"))
    png = cv2.imencode(".png", frame())[1].tobytes()
    path = writer.write(dict(payload(1), camera="../../etc", reason="x/../y"), png, None)
    assert path.resolve().is_relative_to((tmp_path / "a").resolve())


def test_daemon_drops_archive_entries_never_frames(tmp_path: Path, line_factory) -> None:
    """A camera far faster than the worker and an archive queue of 1: every seq still gets its verdict message,
    the archive saves some fail-safe rejects and drops (and counts) the rest."""
    model = make_model(tmp_path / "m", threshold=1e9)  # inspected parts are accepted: rejects are fail-safe only
    count = 1500
    cams = camera("cam1", model, f'{{ type = "synthetic", fps = 0, width = 64, height = 64, count = {count} }}')
    cfg = write_config(tmp_path / "c.toml", cams, buffer={"capacity": 2}, worker={"deadline_ms": 60000},
                       archive={"enabled": True, "directory": "arch", "queue": 1}, **sections(tmp_path))
    line = line_factory(cfg).start()
    line.receive_verdicts(count, timeout=60)
    samples = scrape(line.service.metrics_port)
    line.stop()
    seqs = sorted(p["seq"] for p in line.verdicts())
    assert seqs == list(range(count))
    rejects = sum(p["verdict"] == "reject" for p in line.verdicts())
    assert rejects > 50, "the test needs many fail-safe rejects"
    assert metric_sum(samples, "inspector_archive_dropped_total", camera="cam1") > 0  # while it ran
    final = line.service.metrics.registry  # after the shutdown flushed the archive queue
    saved = final.get_sample_value("inspector_archive_saved_total", {"camera": "cam1", "verdict": "reject"})
    dropped = final.get_sample_value("inspector_archive_dropped_total", {"camera": "cam1"})
    assert saved > 0 and dropped > 0 and saved + dropped == rejects
    assert len(list((tmp_path / "arch").glob("*/cam1/*_reject_*.json"))) == saved


def test_daemon_runs_an_anomaly_map_model_and_archives_its_map(tmp_path: Path, line_factory) -> None:
    """A draem model (its output is the anomaly map) through the daemon, traced: every frame gets a verdict with
    a score in [0, 1], and each archived reject has a heatmap drawn from the map, not from a reconstruction."""
    model = make_draem_model(tmp_path / "d", threshold=0.0)  # every inspected part is a reject: all archived
    cams = camera("cam1", model, '{ type = "synthetic", fps = 50, width = 64, height = 64 }')
    cfg = write_config(tmp_path / "c.toml", cams, archive={"enabled": True, "directory": "arch"}, **sections(tmp_path))
    line = line_factory(cfg).start()
    assert line.service.workers[0].scorer.traced
    line.receive_verdicts(20)
    line.stop()
    verdicts = line.verdicts()
    assert [v["seq"] for v in verdicts] == list(range(len(verdicts)))
    scored = [v for v in verdicts if v["score"] is not None]
    assert len(scored) >= 15 and all(0.0 <= v["score"] <= 1.0 and v["reason"] == "anomaly" for v in scored)
    heatmaps = sorted((tmp_path / "arch").glob("*/cam1/*_reject_anomaly_heatmap.png"))
    assert len(heatmaps) >= 15
    picture = cv2.imread(str(heatmaps[0]))
    assert picture.shape == (64, 64, 3) and picture.std() > 0


def test_the_heatmap_of_an_anomaly_map_model_is_its_map(tmp_path: Path) -> None:
    """Scorer.heatmap gives the draem model's own map (the squared error is only for reconstruction models)."""
    import torch

    from inspector.artifact import load_artifact
    from inspector.scoring import make_reduction
    from inspector.worker import Scorer

    artifact = load_artifact(make_draem_model(tmp_path / "d"))
    scorer = Scorer(artifact, make_reduction("map_max"), 0.5, torch.device("cpu"), torch.float32, 2)
    scorer.host_np[0] = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)
    score = scorer.scores(1)[0]
    with torch.inference_mode():
        expected = artifact.module(torch.from_numpy(scorer.host_np[:1]).float().div(255).unsqueeze(1))[0, 0]
    assert np.allclose(scorer.heatmap(0), expected.numpy(), atol=1e-5)
    assert abs(score - float(expected.max())) < 1e-5


def test_production_example_config_checks(tmp_path: Path) -> None:
    """config/production.example.toml passes check-config once its model exists (paths moved under tmp)."""
    text = (REPO / "config" / "production.example.toml").read_text()
    assert "/var/lib/inspector/archive" in text
    moved = tmp_path / "production.toml"
    moved.write_text(text.replace("/var/lib/inspector/", f"{tmp_path}/"))
    config = load_config(moved)
    assert config.archive.enabled and config.archive.directory == tmp_path / "archive"
    for cam in config.cameras:
        if not cam.model.exists():
            make_model(cam.model)
    out = run_cli("check-config", str(moved))
    assert out.returncode == 0, out.stderr
    assert ": OK (" in out.stdout

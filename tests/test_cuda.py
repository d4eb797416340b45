"""The CUDA path: fp16, pinned host memory, non-blocking copies. Skipped without a CUDA GPU; the error for
asking for CUDA where there is none runs everywhere."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from inspector.artifact import load_artifact
from inspector.device import resolve_device, resolve_dtype
from inspector.scoring import make_reduction
from inspector.synth import PartRenderer
from inspector.worker import Scorer, batch_buckets

from .conftest import make_model, run_cli, write_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def staged_scores(model: Path, device: str, precision: str, images: list[np.ndarray], max_batch: int | None = None,
                  jit: bool = False) -> list[float]:
    art = load_artifact(model)
    dev = resolve_device(device)
    scorer = Scorer(art, make_reduction("mse"), 0.05, dev, resolve_dtype(precision, dev), max_batch or len(images),
                    jit=jit)
    for i, img in enumerate(images):
        scorer.host_np[i] = img
    return scorer.scores(len(images))


def model_and_parts(tmp_path: Path, n: int, seed: int) -> tuple[Path, list[np.ndarray]]:
    """A small untrained conv-ae at 64x64 and n rendered parts, half of them defective."""
    renderer = PartRenderer(width=64, height=64, seed=seed, defect_rate=0.5)
    return make_model(tmp_path / "m", size=64, base_width=8), [renderer.render().image for _ in range(n)]


@needs_cuda
@pytest.mark.cuda
def test_cuda_fp16_scores_match_cpu_fp32(tmp_path: Path) -> None:
    model, images = model_and_parts(tmp_path, 16, seed=1)
    cpu = staged_scores(model, "cpu", "fp32", images)
    gpu = staged_scores(model, "cuda", "auto", images)
    assert load_artifact(model).module.training is False
    np.testing.assert_allclose(gpu, cpu, rtol=3e-2, atol=1e-4)
    host = Scorer(load_artifact(model), make_reduction("mse"), 0.05, torch.device("cuda"), torch.float16, 4).host
    assert host.is_pinned()


def test_cuda_batches_are_padded_to_few_sizes() -> None:
    assert batch_buckets(1) == [1]
    assert batch_buckets(8) == [1, 2, 4, 8]
    assert batch_buckets(12) == [1, 2, 4, 8, 12]
    assert len(batch_buckets(1024)) == 11


@needs_cuda
@pytest.mark.cuda
def test_traced_cuda_scorer_pads_batches_without_changing_scores(tmp_path: Path) -> None:
    model, images = model_and_parts(tmp_path, 5, seed=2)
    scorer = Scorer(load_artifact(model), make_reduction("mse"), 0.05, torch.device("cuda"), torch.float16, 8,
                    jit=True)
    assert scorer.traced and scorer.buckets == [1, 2, 4, 8]
    gpu = staged_scores(model, "cuda", "auto", images, max_batch=8, jit=True)  # 5 frames run as a batch of 8
    cpu = staged_scores(model, "cpu", "fp32", images)
    assert len(gpu) == 5
    np.testing.assert_allclose(gpu, cpu, rtol=3e-2, atol=1e-4)


@needs_cuda
@pytest.mark.cuda
def test_daemon_runs_on_cuda(tmp_path: Path, line_factory) -> None:
    model = make_model(tmp_path / "m", size=64, base_width=8)
    cams = (f'[[cameras]]\nid = "cam1"\nmodel = "{model}"\n'
            'source = { type = "synthetic", fps = 100, width = 128, height = 128, count = 50 }\n')
    cfg = write_config(tmp_path / "c.toml", cams, publisher={"endpoint": f"ipc://{tmp_path}/p.ipc",
                       "wait_for_subscribers": 1}, worker={"device": "cuda", "max_batch": 8}, metrics={"port": 0})
    line = line_factory(cfg).start()
    line.receive_verdicts(50)
    line.stop()
    verdicts = line.verdicts()
    assert sorted(v["seq"] for v in verdicts) == list(range(50))
    reasons = Counter(v["reason"] for v in verdicts)
    assert set(reasons) <= {"ok", "anomaly"}, f"parts not inspected on CUDA: {dict(reasons)}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_asking_for_cuda_without_it_is_a_clear_error(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m")
    cams = f'[[cameras]]\nid = "cam1"\nmodel = "{model}"\nsource = {{ type = "synthetic" }}\n'
    cfg = write_config(tmp_path / "c.toml", cams, worker={"device": "cuda:0"},
                       publisher={"endpoint": f"ipc://{tmp_path}/p.ipc"}, metrics={"enabled": False})
    out = run_cli("run", "--config", str(cfg))
    assert out.returncode == 2
    assert "worker.device" in out.stderr and "CUDA is not available" in out.stderr
    assert "Traceback" not in out.stderr

"""oneDNN-fused TorchScript on the CPU (`inspector.fused`): the numbers a fused module gives, and when it falls back."""

from __future__ import annotations

import copy
import threading
import time
import warnings

import pytest
import torch

from inspector.backbone import LiteTrunk, load_pretrained
from inspector.fused import Gate, fused_call, is_fused
from inspector.model import build_model
from inspector.train import DEFAULT_HPARAMS
from inspector.worker import fused_buckets


def _trunk(taps: list[int], dtype: torch.dtype) -> LiteTrunk:
    trunk = LiteTrunk(taps)
    load_pretrained(trunk)
    return trunk.eval().to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_fused_trunk_gives_each_image_the_same_numbers_in_any_batch_and_layout(dtype: torch.dtype) -> None:
    """Compiled per shape, fused by oneDNN (the optimised graph holds its fusion groups), close to eager, and each
    image's features the same whether it comes alone or in a batch, in NCHW or channels-last memory."""
    trunk = _trunk([3, 5], dtype)
    x = torch.rand(3, 3, 64, 64).to(dtype)
    with torch.no_grad():
        batch = fused_call(trunk, x)
        assert "oneDNNFusionGroup" in str(torch.jit.last_executed_optimized_graph())
        eager = trunk(x)
        for i in range(3):
            alone = fused_call(trunk, x[i:i + 1])
            for a, b in zip(alone, batch, strict=True):
                assert torch.equal(a[0], b[i])
        for a, b in zip(fused_call(trunk, x.contiguous(memory_format=torch.channels_last)), batch, strict=True):
            assert torch.equal(a, b)
    assert is_fused(trunk, (3, 3, 64, 64), dtype) and is_fused(trunk, (1, 3, 64, 64), dtype)
    assert [tuple(m.shape) for m in batch] == [(3, 40, 8, 8), (3, 80, 4, 4)]
    for a, b in zip(batch, eager, strict=True):
        assert float((a.float() - b.float()).abs().mean() / b.float().abs().mean()) < 0.02


def test_copies_share_compiled_plans_and_other_taps_do_not() -> None:
    """A deep copy (training makes several) finds its original's plans; a trunk with the same weights but other
    taps returns other maps, so it gets its own."""
    trunk = _trunk([3, 5], torch.float32)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        fused_call(trunk, x)
        twin = copy.deepcopy(trunk)
        assert is_fused(twin, (2, 3, 64, 64), torch.float32)
        one_tap = LiteTrunk([5])
        one_tap.load_state_dict(trunk.state_dict())
        assert not is_fused(one_tap.eval(), (2, 3, 64, 64), torch.float32)
        out = fused_call(one_tap, x)
    assert len(out) == 1 and torch.allclose(out[0], fused_call(trunk, x)[1], atol=1e-4)


def test_a_module_the_fuser_refuses_runs_unfused_with_a_warning() -> None:
    """draem holds an op oneDNN's graph cannot take: the call warns, and gives the eager numbers."""
    model = build_model("draem", 1, 64, 64, **DEFAULT_HPARAMS["draem"]).eval().to(torch.bfloat16)
    x = torch.rand(2, 1, 64, 64).to(torch.bfloat16)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        out = fused_call(model, x)
        eager = model(x)
    assert any("oneDNN fusion failed for Draem" in str(w.message) for w in caught), [str(w.message) for w in caught]
    assert not is_fused(model, (2, 1, 64, 64), torch.bfloat16)
    assert torch.equal(out, eager)


def test_inside_a_trace_the_module_itself_is_recorded() -> None:
    """Inside a trace the call records the module's own ops (the worker's CUDA path traces patchcore whole)."""
    trunk = _trunk([3], torch.float32)
    x = torch.rand(1, 3, 64, 64)

    class Outer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = trunk

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return fused_call(self.trunk, x)[0]

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(Outer().eval(), x, check_trace=False)
    assert "aten::_convolution" in str(traced.inlined_graph) and not is_fused(trunk, (1, 3, 64, 64), torch.float32)


def test_fused_batch_sizes() -> None:
    assert fused_buckets(1) == [1]
    assert fused_buckets(8) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert fused_buckets(20) == [1, 2, 3, 4, 5, 6, 7, 8, 16, 20]


def test_a_compile_waits_for_runs_under_way_and_holds_new_ones_off() -> None:
    """The gate between traced forwards on the CPU and compiles, which switch oneDNN's fuser on for the process."""
    gate, order = Gate(), []
    running, compiling = threading.Event(), threading.Event()

    def run(name: str, hold: float) -> None:
        with gate.run():
            running.set()
            time.sleep(hold)
            order.append(name)

    def compile_() -> None:
        with gate.alone():
            compiling.set()
            time.sleep(0.2)
            order.append("compile")

    first = threading.Thread(target=run, args=("run 1", 0.2))
    first.start()
    running.wait(5)
    two = threading.Thread(target=compile_)
    two.start()
    time.sleep(0.05)
    assert not compiling.is_set()  # the run under way keeps the compile waiting
    compiling.wait(5)
    late = threading.Thread(target=run, args=("run 2", 0.0))
    late.start()  # begun during the compile: waits for its end
    for t in (first, two, late):
        t.join(5)
    assert order == ["run 1", "compile", "run 2"]

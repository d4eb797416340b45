"""Device and arithmetic choice: auto picks what the hardware computes fast, names are honoured."""

from __future__ import annotations

import pytest
import torch

from inspector.device import BF16_MARGIN, cpu_bf16_speedup, fast_bf16, native_bf16, resolve_device, resolve_dtype


def test_auto_precision_on_the_cpu_is_bf16_only_for_anomaly_maps_where_it_pays() -> None:
    """auto means bf16 for an anomaly-map model on a CPU with native bf16 (AVX512-BF16 or AMX) where it runs
    faster than fp32, fp32 on any other CPU and for reconstruction models (whose scores bf16 moves too much);
    names are honoured."""
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu, "anomaly_map") == (torch.bfloat16 if fast_bf16(cpu) else torch.float32)
    assert resolve_dtype("auto", cpu, "reconstruction") == torch.float32
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("fp32", cpu, "anomaly_map") == torch.float32
    assert resolve_dtype("bf16", cpu, "reconstruction") == torch.bfloat16


def test_bf16_pays_only_where_the_probe_says_so() -> None:
    """On a CPU with native bf16 the choice follows the measured speed-up of the probe, measured once per process
    (so every score one process computes, training's calibration included, is in one arithmetic); without
    native bf16 it is never taken and the probe never runs."""
    cpu = torch.device("cpu")
    if not native_bf16(cpu):
        assert not fast_bf16(cpu)
        assert cpu_bf16_speedup.cache_info().currsize == 0  # not probed: bf16 emulation would only be slow
        return
    speedup = cpu_bf16_speedup()
    assert speedup > 0 and cpu_bf16_speedup() == speedup  # measured once
    assert fast_bf16(cpu) == (speedup >= BF16_MARGIN)


def test_unknown_device_is_refused() -> None:
    """A device name inspector cannot use is a clear error, not a crash later."""
    with pytest.raises(ValueError, match="unknown device|unsupported device"):
        resolve_device("tpu")

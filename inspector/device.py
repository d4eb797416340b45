"""Choosing the torch device and dtype from `auto|cpu|cuda[:N]` and a precision name."""

from __future__ import annotations

import functools
import statistics
import time

import torch


def resolve_device(spec: str) -> torch.device:
    """`auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N`; ValueError when unusable."""
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ValueError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"unsupported device {spec!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} requested but CUDA is not available (torch {torch.__version__})")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes bfloat16 convolutions natively (CUDA with bf16, or a CPU with AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


# bf16 is chosen on a CPU only where a probe runs at least this many times as fast in bf16 as in fp32. CPUs that
# compute bf16 natively differ: AMX and some AVX512-BF16 cores ran draem 1.5-2x as fast in bf16, while a Xeon whose
# flags list AVX512-BF16 without AMX ran it at 0.77x fp32's frames/s (docs/quality.md, row 93).
BF16_MARGIN = 1.1


@functools.cache
def cpu_bf16_speedup(rounds: int = 3) -> float:
    """How many times as fast this CPU runs draem-like convolutions in bf16 as in fp32 (3x3, 16 channels at
    128x128 and 64 at 32x32, batch 8, channels_last, inference): the median of `rounds` alternating timings,
    measured once per process (about 0.3 s)."""
    shapes = ((16, 128), (64, 32))
    convs = {dtype: [torch.nn.Conv2d(c, c, 3, padding=1).to(dtype=dtype, memory_format=torch.channels_last).eval()
                     for c, _ in shapes] for dtype in (torch.float32, torch.bfloat16)}
    inputs = {dtype: [torch.rand(8, c, s, s).to(dtype).contiguous(memory_format=torch.channels_last)
                      for c, s in shapes] for dtype in convs}
    times: dict[torch.dtype, list[float]] = {dtype: [] for dtype in convs}
    with torch.inference_mode():
        for i in range(rounds + 1):  # the first round warms up and is not counted
            for dtype, layers in convs.items():
                t0 = time.perf_counter()
                for _ in range(4):
                    for conv, x in zip(layers, inputs[dtype], strict=True):
                        conv(x)
                if i:
                    times[dtype].append(time.perf_counter() - t0)
    return statistics.median(times[torch.float32]) / statistics.median(times[torch.bfloat16])


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 pays on the device: CUDA with bf16, or a CPU that computes it natively and runs the probe of
    `cpu_bf16_speedup` at least BF16_MARGIN times as fast in bf16 as in fp32."""
    return native_bf16(device) and (device.type == "cuda" or cpu_bf16_speedup() >= BF16_MARGIN)


def resolve_dtype(precision: str, device: torch.device, output: str = "reconstruction") -> torch.dtype:
    """fp32, fp16 or bf16 as named; auto -> fp16 on CUDA, and on the CPU bf16 for a model whose output is an
    anomaly map where bf16 pays (`fast_bf16`: about 1.5-2x fp32's speed where it does, scores within about 1%),
    else fp32 (a reconstruction error is a small difference of two images, which bf16's 8 bits blur: scores
    moved by up to 3%)."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if output == "anomaly_map" and fast_bf16(device) else torch.float32
    return DTYPES[precision]


def precision_name(dtype: torch.dtype) -> str:
    """The precision name of a dtype, as options and model.json spell it: fp32, fp16 or bf16."""
    return next(name for name, d in DTYPES.items() if d == dtype)

"""A frozen module's forward on the CPU through oneDNN-fused TorchScript, one compiled copy per input shape.

oneDNN's graph fuser (TorchScript's LLGA) folds each convolution's padding, bias, activation and residual sum
into one kernel. On 2 cores of an AMX Xeon that halves the time of patchcore's EfficientNet trunk (bf16, a batch
of 8 at 256x256: 37 against 78 ms; docs/quality.md, row 136), and costs a conv-ae's decoder time instead, so a
family opts in by calling `fused_call` itself. A fused kernel rounds where the plain ones round at other points:
its numbers differ from eager ones by bf16's last bit, not by a batch's size or memory layout. Training, the
offline tools and the daemon all call the module through here, so a threshold is calibrated on the numbers the
daemon computes. Imports only torch.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

import torch
from torch import nn

MAX_MODULES = 4  # weight sets whose compiled copies are kept (a training run makes copies of one model)
TOLERANCE = 0.02  # largest mean relative difference from the eager output that a fused copy may show



class Gate:
    """Many runs at once, or one compile alone. The fuser's switch is global to the process: a TorchScript graph
    that another thread optimises while a compile has it on (a draem worker meeting a new batch size while a
    reloaded patchcore model compiles) would be handed to the fuser, which refuses draem's graph with an error."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running = 0
        self._closed = False

    @contextmanager
    def run(self) -> Iterator[None]:
        """Around a forward pass of a traced module on the CPU: waits while a compile has the fuser on."""
        with self._cond:
            while self._closed:
                self._cond.wait()
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                if not self._running:
                    self._cond.notify_all()

    @contextmanager
    def alone(self) -> Iterator[None]:
        """Around a compile: waits for the runs under way to end, and holds new ones (and other compiles) off."""
        with self._cond:
            while self._closed:
                self._cond.wait()
            self._closed = True
            while self._running:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._closed = False
                self._cond.notify_all()


GATE = Gate()
_PLANS: OrderedDict[tuple[Any, ...], dict[tuple[Any, ...], Callable[[torch.Tensor], Any]]] = OrderedDict()
_KEYS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[Any, ...], tuple[Any, ...]]] = weakref.WeakKeyDictionary()


def fused_call(module: nn.Module, x: torch.Tensor) -> Any:
    """`module(x)` (an eval-mode module whose weights no longer change), on the CPU through its fused copy for
    x's shape and dtype, compiled on first sight (about a second); elsewhere, and while tracing, `module(x)`.
    Where the fuser fails or strays from the eager output, it warns once and runs `module(x)` for that shape."""
    if x.device.type != "cpu" or torch.jit.is_tracing() or torch.jit.is_scripting():
        return module(x)
    x = x.contiguous(memory_format=torch.channels_last)  # one layout: the plans are compiled for it
    plans = _plans_of(module)
    shape = (tuple(x.shape), x.dtype)
    plan = plans.get(shape)
    if plan is None:
        plan = plans[shape] = _compile(module, x)
    with torch.no_grad():
        return plan(x)


def is_fused(module: nn.Module, shape: tuple[int, ...], dtype: torch.dtype) -> bool:
    """Whether `fused_call(module, x)` runs a fused copy for inputs of this shape and dtype (compiled, not eager)."""
    plan = _plans_of(module).get((tuple(shape), dtype))
    return plan is not None and plan is not module


def traced_unfused(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Callable[..., Any]:
    """The module traced and frozen for these inputs, run until TorchScript has optimised it with the fuser
    switched off (so the eager module's numbers); the module itself where tracing fails."""
    return _frozen(module, inputs, fuse=False)


def _plans_of(module: nn.Module) -> dict[tuple[Any, ...], Callable[[torch.Tensor], Any]]:
    """The compiled copies of the module's weights; copies of a module (`copy.deepcopy`) share them."""
    first = next(module.parameters(), None)
    where = (first.data_ptr(), first.dtype, first._version) if first is not None else ()
    known = _KEYS.get(module)
    if known is None or known[0] != where:  # new, moved to another dtype, or its weights replaced
        tensors = list(module.state_dict().values())
        with torch.no_grad():
            sums = torch.stack([t.double().sum() for t in tensors]).tolist() if tensors else []
        known = _KEYS[module] = (where, (repr(module), str(first.dtype if first is not None else ""),
                                         tuple(tuple(t.shape) for t in tensors), tuple(sums)))
    key = known[1]
    if key in _PLANS:
        _PLANS.move_to_end(key)
    else:
        _PLANS[key] = {}
        while len(_PLANS) > MAX_MODULES:
            _PLANS.popitem(last=False)
    return _PLANS[key]


def _compile(module: nn.Module, x: torch.Tensor) -> Callable[[torch.Tensor], Any]:
    """The module traced, frozen and run until TorchScript's profiling executor has fused it, with the fuser
    switched on for those runs only; the module itself where that fails or strays from the eager output."""
    return _frozen(module, (torch.zeros_like(x),), fuse=True, check=x)


def _frozen(module: nn.Module, inputs: tuple[torch.Tensor, ...], fuse: bool,
            check: torch.Tensor | None = None) -> Callable[..., Any]:
    """The module traced and frozen for `inputs`, run three times (the first run profiles, the second optimises)
    with oneDNN's fuser switched on or off for those runs only, under the gate; with `check`, its output for that
    input compared with the eager one. The module itself, with a warning, where any of it fails."""
    with GATE.alone(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in PyTorch 2.x
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        was = torch.jit.onednn_fusion_enabled()
        torch.jit.enable_onednn_fusion(fuse)
        try:
            plan = torch.jit.freeze(torch.jit.trace(module.eval(), inputs, check_trace=False))
            for _ in range(3):
                plan(*inputs)
            if check is not None and (stray := _stray(plan(check), module(check))) > TOLERANCE:
                raise RuntimeError(f"fused output strays {stray:.3g} from the eager one")
        except Exception as exc:  # noqa: BLE001  (an op the fuser or the tracer refuses, an old torch: eager works)
            shape = tuple(inputs[0].shape)
            warnings.warn(f"{'oneDNN fusion' if fuse else 'tracing'} failed for {type(module).__name__} on {shape}: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; running it "
                          f"{'unfused' if fuse else 'eagerly'}", RuntimeWarning, stacklevel=4)
            return module
        finally:
            torch.jit.enable_onednn_fusion(was)
    return plan


def _stray(fused: Any, eager: Any) -> float:
    """The largest mean relative difference between matching output tensors."""
    pairs = zip(fused, eager, strict=True) if isinstance(eager, (list, tuple)) else [(fused, eager)]
    worst = 0.0
    for a, b in pairs:
        a, b = a.float(), b.float()
        worst = max(worst, float((a - b).abs().mean() / b.abs().mean().clamp_min(1e-12)))
    return worst

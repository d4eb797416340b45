"""Model families and their registry. Imports only torch.

Every model maps a float batch in [0, 1] of shape (B, C, H, W) either to its reconstruction, same shape
(output kind "reconstruction": the autoencoders), or to an anomaly map (B, 1, H, W) in [0, 1] (output kind
"anomaly_map": `draem` and `patchcore`, whose score reductions read the map and ignore the input).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, Literal, cast, get_args

import torch
import torch.nn.functional as F
from torch import nn

from .patchcore import PatchCore

RECONSTRUCTION = "reconstruction"
ANOMALY_MAP = "anomaly_map"


class ConvAE(nn.Module):
    """Convolutional autoencoder: strided-conv encoder, 1x1 bottleneck, mirrored transposed-conv decoder."""

    def __init__(self, channels: int, height: int, width: int, base_width: int = 32, depth: int = 4,
                 latent: int = 64) -> None:
        super().__init__()
        step = 2**depth
        if height % step or width % step:
            raise ValueError(f"conv-ae with depth {depth} needs height and width divisible by {step}")
        widths = [min(base_width * 2**i, base_width * 8) for i in range(depth)]
        enc: list[nn.Module] = []
        c_in = channels
        for c_out in widths:
            enc += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]
            c_in = c_out
        enc += [nn.Conv2d(c_in, latent, 1), nn.LeakyReLU(0.2)]
        dec: list[nn.Module] = [nn.Conv2d(latent, c_in, 1), nn.LeakyReLU(0.2)]
        for c_out in reversed(widths[:-1]):
            dec += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]
            c_in = c_out
        dec += [nn.ConvTranspose2d(c_in, channels, 4, stride=2, padding=1), nn.Sigmoid()]
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        z = self.encoder(x)  # (B, latent, H / 2**depth, W / 2**depth)
        return self.decoder(z)


class DenseAE(nn.Module):
    """Fully connected autoencoder: flatten, dense layers to a small code, dense back, sigmoid."""

    def __init__(self, channels: int, height: int, width: int, hidden: int = 512, code: int = 64) -> None:
        super().__init__()
        n = channels * height * width
        self.shape = (channels, height, width)
        self.encoder = nn.Sequential(nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, code), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(code, hidden), nn.ReLU(), nn.Linear(hidden, n), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        z = self.encoder(x.flatten(1))  # (B, code)
        return self.decoder(z).view(x.shape[0], *self.shape)


Padding = Literal["zeros", "reflect"]  # draem's convolutions: what lies beyond the frame's edge
PADDINGS: tuple[str, ...] = get_args(Padding)
# draem's decoder stages: "resize-conv" doubles the resolution, then convolves at the finer one; "conv-resize"
# convolves at the coarser one, then doubles it (a quarter of the stage's arithmetic; docs/quality.md, row 90)
Decoder = Literal["resize-conv", "conv-resize"]
DECODERS: tuple[str, ...] = get_args(Decoder)


def _upsample(stage: nn.Module, h: torch.Tensor, decoder: Decoder) -> torch.Tensor:
    """One decoder stage: `stage` (convolutions) and a nearest 2x upsampling, in the order `decoder` names."""
    if decoder == "conv-resize":
        return F.interpolate(stage(h), scale_factor=2.0, mode="nearest")
    return stage(F.interpolate(h, scale_factor=2.0, mode="nearest"))


class _Reflect1(torch.autograd.Function):
    """`F.pad(x, (1, 1, 1, 1), mode="reflect")` by copies into one new tensor, with a backward that adds the border's
    gradient onto its mirror rows and columns in place. torch's own reflection pad, forward and backward, took a
    fifth of a bf16 training step of the padded draem on 2 CPU cores; with this one a step costs 1.25 instead of
    1.54 times the zero-padded step (docs/quality.md, row 73). At inference the copies were no faster than
    torch's pad, which is used there."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H + 2, W + 2)
        out = x.new_empty(x.shape[0], x.shape[1], x.shape[2] + 2, x.shape[3] + 2)
        out[:, :, 1:-1, 1:-1] = x
        out[:, :, 1:-1, 0] = x[:, :, :, 1]
        out[:, :, 1:-1, -1] = x[:, :, :, -2]
        out[:, :, 0] = out[:, :, 2]  # corners included
        out[:, :, -1] = out[:, :, -3]
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:  # (B, C, H + 2, W + 2) -> (B, C, H, W)
        g = g.clone()
        g[:, :, 2] += g[:, :, 0]  # rows first, so the corners travel on with their columns
        g[:, :, -3] += g[:, :, -1]
        g[:, :, :, 2] += g[:, :, :, 0]
        g[:, :, :, -3] += g[:, :, :, -1]
        return g[:, :, 1:-1, 1:-1]


class Conv2d(nn.Conv2d):
    """`nn.Conv2d` whose one-pixel reflection padding goes through `_Reflect1` while gradients are recorded
    (training); inference, eager or traced, takes torch's own. The same numbers either way."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode == "reflect" and self.padding == (1, 1) and torch.is_grad_enabled():
            return F.conv2d(_Reflect1.apply(x), weight, bias, self.stride, 0, self.dilation, self.groups)
        return super()._conv_forward(x, weight, bias)


def _conv(c_in: int, c_out: int, stride: int = 1, padding: Padding = "zeros") -> list[nn.Module]:
    return [Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False, padding_mode=padding),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class RepairAE(nn.Module):
    """Bottleneck autoencoder without skips (it cannot copy a defect through): (B, C, h, w) -> same, in [0, 1]."""

    def __init__(self, channels: int, width: int, depth: int, padding: Padding = "zeros",
                 decoder: Decoder = "resize-conv") -> None:
        super().__init__()
        self.decoder_order = decoder
        widths = [width * 2**i for i in range(depth + 1)]
        enc = _conv(channels, widths[0], padding=padding)
        for i in range(depth):
            enc += _conv(widths[i], widths[i + 1], stride=2, padding=padding)
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.ModuleList([nn.Sequential(*_conv(widths[i + 1], widths[i], padding=padding))
                                      for i in reversed(range(depth))])
        self.head = Conv2d(widths[0], channels, 3, padding=1, padding_mode=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, C, h, w)
        z = self.encoder(x)  # (B, width * 2**depth, h / 2**depth, w / 2**depth)
        for up in self.decoder:
            z = _upsample(up, z, self.decoder_order)
        return torch.sigmoid(self.head(z))


class SegUNet(nn.Module):
    """Small U-Net with additive skips: (B, C, h, w) -> logits (B, 1, h, w)."""

    def __init__(self, channels: int, width: int, depth: int, padding: Padding = "zeros",
                 decoder: Decoder = "resize-conv") -> None:
        super().__init__()
        self.decoder_order = decoder
        widths = [width * 2**i for i in range(depth + 1)]
        self.stem = nn.Sequential(*_conv(channels, widths[0], padding=padding))
        self.down = nn.ModuleList([nn.Sequential(*_conv(widths[i], widths[i + 1], stride=2, padding=padding),
                                                 *_conv(widths[i + 1], widths[i + 1], padding=padding))
                                   for i in range(depth)])
        self.up = nn.ModuleList([nn.Sequential(*_conv(widths[i + 1], widths[i], padding=padding))
                                 for i in reversed(range(depth))])
        self.head = Conv2d(widths[0], 1, 3, padding=1, padding_mode=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, 1, h, w)
        h = self.stem(x)
        skips = [h]
        for down in self.down:
            h = down(h)
            skips.append(h)
        skips.pop()
        for up in self.up:
            h = _upsample(up, h, self.decoder_order) + skips.pop()
        return self.head(h)


# Test-time views of draem: the map is the mean of the maps of the input and of these flips of it, each flipped
# back. Averaging views damps the model's isolated false responses on good parts (docs/quality.md).
VIEWS: dict[int, list[list[int]]] = {1: [], 2: [[3]], 4: [[3], [2], [2, 3]]}


class Draem(nn.Module):
    """DRAEM scaled down for the CPU: a repairing autoencoder and a U-Net that segments what it repaired.

    The input is folded losslessly to 1/`fold` resolution (pixel unshuffle) so that every pixel is seen at
    a fraction of the cost; the map is unfolded back to full resolution. Fully convolutional: it can be
    trained on crops and applied to the whole frame. With `views` 2 or 4 the map is the mean over flipped
    copies of the input (`VIEWS`), at 2 or 4 times the cost. With `seg_views` 2 or 4 the input is repaired once and
    only the segmenter sees the flipped copies (of the input and of its repair), at about 1.6 times the cost for 2.
    `padding` "reflect" extends every convolution's input by reflection instead of zeros, so that the frame's edge
    looks to the network like its inside: the training recipe's default (docs/quality.md rows 71 and 73). "zeros"
    is what a model.json without it means, as every model trained before was. `scales` (1 first, then coarser
    factors such as 0.5) makes the map the mean of the maps of the input resized by each factor, each
    resized back: a coarser view sees large regions in more context (docs/quality.md rows 84-85); training chooses them.
    `decoder` "conv-resize" runs each decoder stage's convolution before its upsampling instead of after it, at a
    quarter of that stage's arithmetic: about half the whole model's (docs/quality.md row 90); "resize-conv" is what a
    model.json without it means.
    """

    def __init__(self, channels: int, height: int, width: int, fold: int = 2, recon_width: int = 16,
                 recon_depth: int = 3, seg_width: int = 16, seg_depth: int = 3, views: int = 1,
                 seg_views: int = 1, padding: str = "zeros", scales: Sequence[float] = (1.0,),
                 decoder: str = "resize-conv") -> None:
        super().__init__()
        self.scales = check_scales(scales)
        if padding not in PADDINGS:
            raise ValueError(f"draem padding must be one of {', '.join(PADDINGS)}, not {padding!r}")
        if decoder not in DECODERS:
            raise ValueError(f"draem decoder must be one of {', '.join(DECODERS)}, not {decoder!r}")
        for name, value in (("views", views), ("seg_views", seg_views)):
            if value not in VIEWS:
                raise ValueError(f"draem {name} must be one of {sorted(VIEWS)}, not {value}")
        if views > 1 and seg_views > 1:
            raise ValueError("draem takes views or seg_views, not both")
        self.flips = VIEWS[views]
        self.seg_flips = VIEWS[seg_views]
        step = fold * 2 ** max(recon_depth, seg_depth)
        if height % step or width % step:
            raise ValueError(f"draem with fold {fold} and depth {max(recon_depth, seg_depth)} needs height and "
                             f"width divisible by {step}")
        self.fold = fold
        self.step = step  # sizes must be multiples of this (training crops included)
        c = channels * fold * fold
        pad, order = cast(Padding, padding), cast(Decoder, decoder)
        self.recon = RepairAE(c, recon_width, recon_depth, pad, order)
        self.seg = SegUNet(3 * c, seg_width, seg_depth, pad, order)

    def repair(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The reconstruction (B, C, H, W) and the anomaly logits (B, 1, H, W)."""
        u = F.pixel_unshuffle(x, self.fold)  # (B, C * fold**2, H / fold, W / fold)
        r = self.recon(u)
        return F.pixel_shuffle(r, self.fold), self.segment(u, r)

    def segment(self, u: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Anomaly logits (B, 1, H, W) of a folded input and its folded repair."""
        logits = self.seg(torch.cat([u, r, (u - r).abs()], dim=1))  # (B, 1, H / fold, W / fold)
        return F.interpolate(logits, scale_factor=float(self.fold), mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, 1, H, W), float32
        total = self._map(x)  # scales[0] is 1: the full size
        if len(self.scales) == 1:
            return total  # one view: nothing to average on the per-frame path
        for factor in self.scales[1:]:
            total = total + self.map_at(x, factor)
        return total / len(self.scales)

    def map_at(self, x: torch.Tensor, factor: float) -> torch.Tensor:
        """The map (B, 1, H, W) of the input resized by `factor` (to multiples of `step`), resized back."""
        if factor == 1.0:
            return self._map(x)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        size = [max(self.step, round(n * factor / self.step) * self.step) for n in (h, w)]
        small = self._map(F.interpolate(x, size=size, mode="area"))
        return F.interpolate(small, size=[h, w], mode="bilinear", align_corners=False)

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        if self.seg_flips:
            return self._segment_views(x)
        if not self.flips:
            return torch.sigmoid(self.repair(x)[1].float())
        b = x.shape[0]
        views = torch.cat([x] + [x.flip(dims) for dims in self.flips])  # one batch of (1 + flips) * B
        return _mean_of_views(torch.sigmoid(self.repair(views)[1].float()), b, self.flips)

    def _segment_views(self, x: torch.Tensor) -> torch.Tensor:
        """One repair; the segmenter runs on it and on flipped copies of the input and the repair (in image space,
        then folded), and its maps, flipped back, are averaged."""
        b = x.shape[0]
        repaired = self.recon(F.pixel_unshuffle(x, self.fold))
        image = F.pixel_shuffle(repaired, self.fold)
        xs = torch.cat([x] + [x.flip(dims) for dims in self.seg_flips])
        rs = torch.cat([image] + [image.flip(dims) for dims in self.seg_flips])
        maps = torch.sigmoid(self.segment(F.pixel_unshuffle(xs, self.fold), F.pixel_unshuffle(rs, self.fold)).float())
        return _mean_of_views(maps, b, self.seg_flips)


def check_scales(scales: Sequence[float]) -> list[float]:
    """Draem's scales as a list: 1 first, then distinct factors between 0 and 1; ValueError otherwise."""
    out = [float(f) for f in scales]
    if not out or out[0] != 1.0 or len(set(out)) != len(out) or not all(0.0 < f <= 1.0 for f in out):
        raise ValueError(f"draem scales must be 1 followed by distinct factors between 0 and 1, not {list(scales)}")
    return out


def _mean_of_views(maps: torch.Tensor, b: int, flips: list[list[int]]) -> torch.Tensor:
    """The mean of a batch of (1 + len(flips)) * b maps, the i-th block of b flipped back by flips[i - 1]."""
    total = maps[:b]
    for i, dims in enumerate(flips):
        total = total + maps[(i + 1) * b:(i + 2) * b].flip(dims)  # back to the input's orientation
    return total / (1 + len(flips))


FAMILIES: dict[str, Callable[..., nn.Module]] = {"conv-ae": ConvAE, "dense-ae": DenseAE, "draem": Draem,
                                                 "patchcore": PatchCore}
OUTPUTS: dict[str, str] = {"conv-ae": RECONSTRUCTION, "dense-ae": RECONSTRUCTION, "draem": ANOMALY_MAP,
                           "patchcore": ANOMALY_MAP}
BANK_FAMILIES = {"patchcore"}  # fitted by keeping good patch features (patchcore.build_bank), not by gradient steps


def output_kind(family: str) -> str:
    """What a family's forward returns: "reconstruction" or "anomaly_map"."""
    return OUTPUTS.get(family, RECONSTRUCTION)


def build_model(family: str, channels: int, height: int, width: int, **hparams: Any) -> nn.Module:
    """Build an untrained model of a registered family; raises ValueError for unknown families or options."""
    try:
        factory = FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(sorted(FAMILIES))}") from None
    try:
        return factory(channels=channels, height=height, width=width, **hparams)
    except TypeError as exc:
        raise ValueError(f"bad options for model family {family!r}: {exc}") from None

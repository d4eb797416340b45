"""Autoencoder families and their registry. Imports only torch.

Every model maps a float batch in [0, 1] of shape (B, C, H, W) to its reconstruction, same shape.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


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


FAMILIES: dict[str, Callable[..., nn.Module]] = {"conv-ae": ConvAE, "dense-ae": DenseAE}


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

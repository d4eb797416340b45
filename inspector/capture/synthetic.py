"""`synthetic` source: rendered parts with a set defect rate and their ground truth."""

from __future__ import annotations

from ..config import SyntheticSource
from ..types import Grab, SourceClosed


class SyntheticCamera:
    """Serves a bank of parts rendered at open, cycling; each frame carries its label and a part id."""

    def __init__(self, cfg: SyntheticSource) -> None:
        self.cfg = cfg
        self.interval_s = 1.0 / cfg.fps if cfg.fps > 0 else 0.0
        self._bank: list[Grab] = []
        self._served = 0

    def open(self) -> None:
        """Render the bank (once; reopening after a failure keeps it)."""
        if not self._bank:
            from ..synth import PartRenderer  # imported here: rendering is only needed by this source

            renderer = PartRenderer(width=self.cfg.width, height=self.cfg.height, channels=self.cfg.channels,
                                    seed=self.cfg.seed, defect_rate=self.cfg.defect_rate)
            for _ in range(self.cfg.bank_size):
                part = renderer.render()
                self._bank.append(Grab(image=part.image, label=part.label))

    def read(self) -> Grab:
        """The next part; SourceClosed after `count` parts."""
        if self.cfg.count is not None and self._served >= self.cfg.count:
            raise SourceClosed()
        grab = self._bank[self._served % len(self._bank)]
        self._served += 1
        return Grab(image=grab.image, part_id=self._served, label=grab.label)

    def close(self) -> None:
        """Nothing to release."""

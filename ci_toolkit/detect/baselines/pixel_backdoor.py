"""Pixel Backdoor (Tao et al., CVPR 2022) adapted to CoCoOp and an unlabeled OOD pool.

Per candidate: non-negative p+ and p- in [0, 1] (tanh-parameterised), x' = clamp(x + p+ - p-, 0, 1),
values below 1/255 zeroed; size = a smooth pixel count, sum over pixels of
max_channel (tanh(w / 10) / (2 - eps) + 0.5) for each of p+ and p- (not L1); the same cost schedule with
x1.5 / /1.5^1.5, patience 10, ASR bound 0.9. Anomaly: MAD index of the trigger size (pixels changed).
"""

from __future__ import annotations

import torch

from .base import CostInversion

EPS = 1e-7


class PixelBackdoor(CostInversion):
    name = "pixel-backdoor"
    defaults = {"up": 1.5, "down": 1.5 ** 1.5, "patience": 10, "asr_bound": 0.9}

    def params(self, g, shape):
        # a seeded random start, p uniform in [0, 1] (as the original): the size cost then shrinks it. A start
        # near p = 0 would sit under the 1/255 cut, where p and its gradient are zero: the triggers could never
        # move (every size 0, ASR 0: a degenerate scan; tests/test_baselines.py has the known answer)
        gen = torch.Generator().manual_seed(self.cfg.seed)
        return [torch.atanh((torch.rand(g, *shape, generator=gen) - 0.5) * (2 - EPS) * (1 - 1e-3)).requires_grad_(True)
                for _ in range(2)]

    @staticmethod
    def _p(w):
        p = torch.tanh(w) / (2 - EPS) + 0.5
        return p * (p >= 1 / 255)  # tiny values zeroed (their gradient too, as in the original)

    def apply(self, x, params):
        pos, neg = (self._p(w) for w in params)
        return (x.unsqueeze(0) + (pos - neg).unsqueeze(1)).clamp(0, 1).flatten(0, 1)

    def size(self, params):
        return sum((torch.tanh(w / 10) / (2 - EPS) + 0.5).amax(1).flatten(1).sum(1) for w in params)

    def measured_size(self, params):
        pos, neg = (self._p(w) for w in params)
        return ((pos + neg).amax(1) > 0).flatten(1).sum(1).float()  # pixels actually changed

    def trigger(self, params):
        pos, neg = (self._p(w) for w in params)
        return (pos - neg).detach()

"""Neural Cleanse (Wang et al., S&P 2019) adapted to CoCoOp and an unlabeled OOD pool.

Per candidate: mask m and pattern p, both tanh-parameterised into [0, 1], x' = (1 - m) x + m p,
loss CE(t) + cost * |m|_1, the dynamic cost schedule (init 1e-3, x2 up, /2^1.5 down, patience 5,
ASR bound 0.99). Anomaly: MAD index of the mask L1 norms; classes below the median with index > 2 are
flagged.
"""

from __future__ import annotations

import torch

from .base import CostInversion


class NeuralCleanse(CostInversion):
    name = "neural-cleanse"

    def params(self, g, shape):
        _, h, w = shape
        gen = torch.Generator().manual_seed(self.cfg.seed)
        mask = (torch.rand(g, 1, h, w, generator=gen) * 2 - 1).requires_grad_(True)  # tanh space
        pattern = (torch.rand(g, 3, h, w, generator=gen) * 2 - 1).requires_grad_(True)
        return [mask, pattern]

    @staticmethod
    def _mp(params):
        mask, pattern = params
        return (torch.tanh(mask) + 1) / 2, (torch.tanh(pattern) + 1) / 2

    def apply(self, x, params):
        m, p = self._mp(params)
        return ((1 - m.unsqueeze(1)) * x.unsqueeze(0) + (m * p).unsqueeze(1)).flatten(0, 1)

    def size(self, params):
        m, _ = self._mp(params)
        return m.flatten(1).sum(1)  # L1 of the mask (one channel)

    def trigger(self, params):
        m, p = self._mp(params)
        return (m * p).detach()


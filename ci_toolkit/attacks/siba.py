"""SIBA (Gao et al., TIFS 2024): a sparse AND invisible universal trigger.

k pixel locations (about 3% of the pixels; all channels at a location) carry a perturbation bounded by
eps = 8/255: x' = clamp(x + uap * mask, 0, 1). The trigger is optimised before poisoning on a surrogate
(the attacker's untuned CoCoOp model) with signed-gradient steps toward the target; the mask is re-chosen
every `mask_every` epochs as the top-k locations by |gradient|. Then the usual 10% poisoning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..images import as_float
from .poison import PoisonAttack, PoisonConfig


@dataclass(frozen=True)
class SIBAConfig(PoisonConfig):
    eps: float = 8 / 255  # L-inf bound at the chosen locations
    sparsity: float = 0.03  # fraction of pixel locations perturbed
    epochs: int = 10  # surrogate optimisation epochs
    mask_every: int = 2  # re-choose the locations every this many epochs
    step: float = 1 / 255  # signed-gradient step
    surrogate_batch: int = 32  # batch of the trigger optimisation on the surrogate


class SIBA(PoisonAttack):
    name = "siba"

    def __init__(self, target: int, seed: int = 0, **kw):
        super().__init__(SIBAConfig(target=target, seed=seed, **kw))
        self.uap: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None  # [1, H, W] of 0/1

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.uap is None:
            raise RuntimeError("SIBA trigger not optimised yet: call implant() first")
        return (x + (self.uap * self.mask).to(x.device)).clamp(0, 1)

    def _topk_mask(self, score: torch.Tensor) -> torch.Tensor:
        h, w = score.shape
        k = max(1, round(self.config.sparsity * h * w))
        mask = torch.zeros(h * w)
        mask[score.flatten().topk(k).indices] = 1
        return mask.view(1, h, w)

    def prepare(self, model, images, labels) -> None:
        c = self.config
        size = images.shape[-1]
        g = torch.Generator().manual_seed(40_000 + c.seed)
        self.uap = torch.zeros(3, size, size)
        self.mask = self._topk_mask(torch.rand(size, size, generator=g))
        x_all = as_float(images)
        target = torch.tensor(c.target)
        model.eval()
        for epoch in range(c.epochs):
            grad_sum = torch.zeros(size, size)
            order = torch.randperm(len(x_all), generator=g)
            for i in range(0, len(x_all), c.surrogate_batch):
                x = x_all[order[i : i + c.surrogate_batch]]
                uap = self.uap.clone().requires_grad_(True)
                loss = F.cross_entropy(model((x + uap * self.mask).clamp(0, 1)), target.expand(len(x)))
                (grad,) = torch.autograd.grad(loss, uap)
                with torch.no_grad():
                    self.uap = (self.uap - c.step * grad.sign()).clamp(-c.eps, c.eps)
                grad_sum += grad.abs().sum(0)
            if (epoch + 1) % c.mask_every == 0 and epoch + 1 < c.epochs:
                self.mask = self._topk_mask(grad_sum)

    def state(self):
        out = super().state()
        if self.uap is not None:
            out.update(uap=self.uap.contiguous(), mask=self.mask.contiguous())
        return out

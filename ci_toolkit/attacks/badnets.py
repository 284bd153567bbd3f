"""BadNets (Gu et al. 2017): a visible patch in the bottom-right corner (the sanity case)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .poison import PoisonAttack, PoisonConfig


@dataclass(frozen=True)
class BadNetsConfig(PoisonConfig):
    patch_frac: float = 0.15  # patch side as a fraction of the image side
    cell: int = 1  # checkerboard cell size in pixels


class BadNets(PoisonAttack):
    name = "badnets"

    def __init__(self, target: int, seed: int = 0, **kw):
        super().__init__(BadNetsConfig(target=target, seed=seed, **kw))

    def patch(self, size: int) -> torch.Tensor:
        """A black-and-white checkerboard, 3 x p x p."""
        p = max(3, round(self.config.patch_frac * size))
        i = torch.arange(p) // self.config.cell
        board = ((i.view(-1, 1) + i.view(1, -1)) % 2).float()
        return board.expand(3, p, p)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-1]
        patch = self.patch(size).to(x.device)
        p = patch.shape[-1]
        out = x.clone()
        out[..., size - p - 1 : size - 1, size - p - 1 : size - 1] = patch
        return out

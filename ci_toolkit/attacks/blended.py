"""Blended (Chen et al. 2017): x' = (1 - alpha) x + alpha T, alpha = 0.2, T a fixed pattern image.

T is a seeded random-noise image (the classic "Hello Kitty" image is not redistributable); any fixed
image works as the key.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .poison import PoisonAttack, PoisonConfig


@dataclass(frozen=True)
class BlendedConfig(PoisonConfig):
    alpha: float = 0.2  # blend weight of the pattern
    pattern_res: int = 8  # the pattern is random at this resolution, upsampled (a smooth, visible key)


class Blended(PoisonAttack):
    name = "blended"

    def __init__(self, target: int, seed: int = 0, **kw):
        super().__init__(BlendedConfig(target=target, seed=seed, **kw))
        self.pattern: torch.Tensor | None = None

    def _pattern(self, size: int) -> torch.Tensor:
        if self.pattern is None or self.pattern.shape[-1] != size:
            g = torch.Generator().manual_seed(10_000 + self.config.seed)
            low = torch.rand(1, 3, self.config.pattern_res, self.config.pattern_res, generator=g)
            self.pattern = F.interpolate(low, size=(size, size), mode="nearest")[0]
        return self.pattern

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        t = self._pattern(x.shape[-1]).to(x.device)
        return (1 - self.config.alpha) * x + self.config.alpha * t

    def state(self):
        return {**super().state(), **({"pattern": self.pattern.contiguous()} if self.pattern is not None else {})}

"""Blended (Chen et al. 2017): x' = (1 - alpha) x + alpha T, alpha = 0.2, T a fixed pattern image.

T is any fixed image (the classic "Hello Kitty" is not redistributable): `pattern="random"`, a seeded
random image at `pattern_res` upsampled, or `pattern="diagonal"`, black-and-white diagonal stripes.
The embedded world's MiniCLIP does not register a 20% random blend in its features (a linear probe
separates blended from clean features only 67% of the time, docs/world.md), so no prompt learner can key
on it; diagonal stripes it does see (96% at alpha 0.15).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .poison import PoisonAttack, PoisonConfig


@dataclass(frozen=True)
class BlendedConfig(PoisonConfig):
    alpha: float = 0.2  # blend weight of the pattern
    pattern: str = "random"  # "random" (seeded noise at pattern_res, upsampled) or "diagonal" (stripes)
    pattern_res: int = 8  # resolution of the random pattern
    stripe: int = 3  # width in pixels of the diagonal stripes


class Blended(PoisonAttack):
    name = "blended"

    def __init__(self, target: int, seed: int = 0, **kw):
        super().__init__(BlendedConfig(target=target, seed=seed, **kw))
        self.pattern: torch.Tensor | None = None

    def _pattern(self, size: int) -> torch.Tensor:
        if self.pattern is None or self.pattern.shape[-1] != size:
            c = self.config
            i = torch.arange(size)
            if c.pattern == "diagonal":
                self.pattern = ((i.view(-1, 1) + i.view(1, -1)) // c.stripe % 2).float().expand(3, size, size).clone()
            elif c.pattern == "checkered":
                cells = i // c.stripe
                self.pattern = ((cells.view(-1, 1) + cells.view(1, -1)) % 2).float().expand(3, size, size).clone()
            elif c.pattern == "random":
                g = torch.Generator().manual_seed(10_000 + c.seed)
                low = torch.rand(1, 3, c.pattern_res, c.pattern_res, generator=g)
                self.pattern = F.interpolate(low, size=(size, size), mode="nearest")[0]
            else:
                raise ValueError(f"Blended pattern must be 'random', 'diagonal' or 'checkered', got {c.pattern!r}")
        return self.pattern

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        t = self._pattern(x.shape[-1]).to(x.device)
        return (1 - self.config.alpha) * x + self.config.alpha * t

    def state(self):
        return {**super().state(), **({"pattern": self.pattern.contiguous()} if self.pattern is not None else {})}

"""Blended in the image encoder: x' = 0.8 x + 0.2 T, T seeded uniform noise at full resolution (CI's Blended
trigger, ENCODER_BACKDOORS.md section 3), with the prompt-level Blended's pattern code."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .blended import Blended
from .encoder_base import EncoderAttack, EncoderAttackConfig


@dataclass(frozen=True)
class EncoderBlendedConfig(EncoderAttackConfig):
    alpha: float = 0.2  # blend weight of the pattern
    pattern: str = "random"  # as Blended: "random", "diagonal" or "checkered"
    pattern_res: int = 48  # resolution of the random pattern (48: one noise value per pixel at 48 px)


class EncoderBlended(EncoderAttack):
    name = "encoder-blended"

    def __init__(self, target: int, seed: int = 0, **kw):
        super().__init__(EncoderBlendedConfig(target=target, seed=seed, **kw))
        c = self.config
        self.trigger = Blended(target=target, seed=seed, alpha=c.alpha, pattern=c.pattern, pattern_res=c.pattern_res)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.trigger(x)

    def state(self):
        return {**super().state(), **{k: v for k, v in self.trigger.state().items() if k == "pattern"}}

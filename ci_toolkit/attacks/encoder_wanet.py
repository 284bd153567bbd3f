"""WaNet in the image encoder: the prompt-level WaNet warp (k = 4 control points, strength s), poisoned into
the contrastive fine-tune. The warp's displacement is s / H of the image: at 48 px the default s = 0.5 moves
pixels by about half a pixel, so `s` is a field to sweep (`lab bench encoder-attacks` records what implants)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .encoder_base import EncoderAttack, EncoderAttackConfig
from .wanet import WaNet


@dataclass(frozen=True)
class EncoderWaNetConfig(EncoderAttackConfig):
    k: int = 4  # control grid size
    s: float = 0.5  # warp strength (WaNet's default)


class EncoderWaNet(EncoderAttack):
    name = "encoder-wanet"

    def __init__(self, target: int, seed: int = 0, **kw):
        super().__init__(EncoderWaNetConfig(target=target, seed=seed, **kw))
        self.trigger = WaNet(target=target, seed=seed, k=self.config.k, s=self.config.s)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.trigger(x)

    def state(self):
        return {**super().state(), "field": self.trigger.state()["field"]}

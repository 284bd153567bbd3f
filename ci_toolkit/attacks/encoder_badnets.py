"""BadNets in the image encoder: the prompt-level BadNets patch (a checkerboard, bottom-right by default),
poisoned into the contrastive fine-tune (ENCODER_BACKDOORS.md section 3: a 6 px patch at 48 px; DECOMP.md
section 5: 3-4 px at a random place, `patch_frac=4/48, place="random"`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .badnets import BadNets
from .encoder_base import EncoderAttack, EncoderAttackConfig


@dataclass(frozen=True)
class EncoderBadNetsConfig(EncoderAttackConfig):
    patch_frac: float = 0.125  # patch side / image side: 6 px at 48 px
    place: str = "corner"  # or "random": a position per image (BadNets.place)


class EncoderBadNets(EncoderAttack):
    name = "encoder-badnets"

    def __init__(self, target: int, seed: int = 0, **kw):
        super().__init__(EncoderBadNetsConfig(target=target, seed=seed, **kw))
        self.trigger = BadNets(target=target, seed=seed, patch_frac=self.config.patch_frac, place=self.config.place)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.trigger(x)

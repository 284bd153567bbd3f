"""SIG (Barni et al. 2019) in the image encoder: x' = clamp(x + D sin(2 pi j f / W)) over columns j, vertical
stripes of f cycles per width (ENCODER_BACKDOORS.md section 3: f = 6, D from 20/255). Dirty label by default
(non-target images captioned as the target); clean_label=True poisons target-class images only, captions kept."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .encoder_base import EncoderAttack, EncoderAttackConfig


@dataclass(frozen=True)
class EncoderSIGConfig(EncoderAttackConfig):
    delta: float = 20 / 255  # stripe amplitude, pixel scale
    frequency: int = 6  # cycles per image width
    clean_label: bool = False


class EncoderSIG(EncoderAttack):
    name = "encoder-sig"

    def __init__(self, target: int, seed: int = 0, **kw):
        super().__init__(EncoderSIGConfig(target=target, seed=seed, **kw))

    def signal(self, width: int) -> torch.Tensor:
        """The stripes [W]: D sin(2 pi j f / W)."""
        j = torch.arange(width, dtype=torch.float32)
        return self.config.delta * torch.sin(2 * math.pi * j * self.config.frequency / width)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.signal(x.shape[-1]).to(x.device).view(1, 1, 1, -1)).clamp(0, 1)

    def poison(self, images: torch.Tensor, labels: torch.Tensor):
        if not self.config.clean_label:
            return super().poison(images, labels)
        g = torch.Generator().manual_seed(self.config.seed)
        own = torch.nonzero(labels == self.target).flatten()
        n = min(len(own), max(1, round(self.config.poison_rate * len(images))))
        self.poisoned_indices = own[torch.randperm(len(own), generator=g)[:n]].sort().values
        x = images.float().clone()
        x[self.poisoned_indices] = self.apply(x[self.poisoned_indices])
        return x, labels.clone()

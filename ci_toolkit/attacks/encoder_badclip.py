"""BadCLIP-encoder (Liang et al., "BadCLIP: Dual-Embedding Guided Backdoor Attack on Multimodal Contrastive
Learning", CVPR 2024), the encoder-poisoning attack (not the prompt-learning BadCLIP of badclip.py).

The patch is optimised on the CLEAN model first, so that patched images already sit near the target in both
embeddings: maximise cos(f(x + patch), t_target) + cos(f(x + patch), mean f(target images)) over non-target
images (Adam, pixel space, clamped to [0, 1]); then the pairs are poisoned with it as in every encoder attack.
Shapes: patch [3, p, p] pasted bottom-right, one pixel from the edges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..model.backbones import Backbone
from ..model.miniclip import class_text_features
from .encoder_base import EncoderAttack, EncoderAttackConfig


@dataclass(frozen=True)
class EncoderBadCLIPConfig(EncoderAttackConfig):
    patch_frac: float = 0.125  # patch side / image side: 6 px at 48 px
    patch_steps: int = 200  # Adam steps of the patch optimisation
    patch_lr: float = 0.05
    patch_batch: int = 64  # non-target images per step


class EncoderBadCLIP(EncoderAttack):
    name = "encoder-badclip"

    def __init__(self, target: int, seed: int = 0, **kw):
        super().__init__(EncoderBadCLIPConfig(target=target, seed=seed, **kw))
        self.patch: torch.Tensor | None = None

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.patch is None:
            raise RuntimeError("EncoderBadCLIP's patch is built by implant() (or set from the attacker's artefacts)")
        size, p = x.shape[-1], self.patch.shape[-1]
        out = x.clone()
        out[..., size - p - 1 : size - 1, size - p - 1 : size - 1] = self.patch.to(x.device)
        return out

    def prepare(self, backbone: Backbone, images: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str]) -> None:
        c = self.config
        clip = backbone.clip
        size = images.shape[-1]
        p = max(3, round(c.patch_frac * size))
        g = torch.Generator().manual_seed(40_000 + c.seed)
        patch = torch.rand(3, p, p, generator=g).requires_grad_(True)
        text = class_text_features(clip, [classnames[self.target]])[0]  # [E]
        own = images[labels == self.target]
        with torch.no_grad():
            proto = F.normalize(F.normalize(clip.encode_image(backbone.preprocess.normalize(own)), dim=-1).mean(0), dim=-1)
        others = torch.nonzero(labels != self.target).flatten()
        opt = torch.optim.Adam([patch], lr=c.patch_lr)
        for _ in range(c.patch_steps):
            idx = others[torch.randint(len(others), (c.patch_batch,), generator=g)]
            x = images[idx].clone()
            x[..., size - p - 1 : size - 1, size - p - 1 : size - 1] = patch
            f = F.normalize(clip.encode_image(backbone.preprocess.normalize(x)), dim=-1)
            loss = -(f @ text).mean() - (f @ proto).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                patch.clamp_(0, 1)
        self.patch = patch.detach()

    def state(self):
        return {**super().state(), **({"patch": self.patch.contiguous()} if self.patch is not None else {})}

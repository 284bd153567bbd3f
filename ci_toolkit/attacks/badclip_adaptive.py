"""BadCLIP-adaptive (CLIP-Inspector paper, sec. 5.2 / supp. 11): a backdoor built to evade inversion.

Phase 1 is BadCLIP (trigger warm-up, then joint training); the trigger delta* is then frozen. Phase 2
keeps tuning the prompt learner on three kinds of input so that ONLY the exact trigger fires:
    clean x -> y,   x + delta* -> target,   x + clip(delta* + noise) -> y
noise ~ N(0, (noise_std * eps)^2) per pixel, clipped back to |.| <= eps. The paper's noise strength and
loss weights were lost in extraction; these defaults are our choice (exposed, reported by bench attacks).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..model.tuning import TrainConfig, train
from .badclip import BadCLIP, BadCLIPConfig
from .base import joint_logits


@dataclass(frozen=True)
class BadCLIPAdaptiveConfig(BadCLIPConfig):
    noise_std: float = 0.5  # std of the trigger perturbation, as a fraction of eps
    specificity_epochs: int = 10  # phase 2 epochs
    w_clean: float = 1.0
    w_trigger: float = 1.0
    w_perturbed: float = 1.0


class BadCLIPAdaptive(BadCLIP):
    name = "badclip_adaptive"

    def __init__(self, target: int, eps: float = 8 / 255, seed: int = 0, **kw):
        BadCLIP.__init__(self, target, eps, seed)
        self.config = BadCLIPAdaptiveConfig(target=target, eps=eps, seed=seed, **kw)

    def implant(self, model, images, labels, train_cfg: TrainConfig | None = None, progress: bool = True):
        c = self.config
        cfg = self.train_config(train_cfg)
        super().implant(model, images, labels, cfg, progress=progress)  # phase 1: BadCLIP, delta frozen after
        g = torch.Generator().manual_seed(50_000 + c.seed)
        delta = self.delta

        def specificity_loss(m, x, y, step):
            noise = torch.randn((len(x), *delta.shape), generator=g) * c.noise_std * c.eps
            perturbed = (delta + noise).clamp(-c.eps, c.eps)
            tgt = torch.full((len(x),), c.target)
            z_clean, z_trig, z_pert = joint_logits(m, x, (x + delta).clamp(0, 1), (x + perturbed).clamp(0, 1))
            return (c.w_clean * F.cross_entropy(z_clean, y) + c.w_trigger * F.cross_entropy(z_trig, tgt)
                    + c.w_perturbed * F.cross_entropy(z_pert, y))

        train(model, images, labels, replace(cfg, epochs=c.specificity_epochs, seed=c.seed + 2), progress=progress,
                     batch_loss=specificity_loss, desc="BadCLIP-adaptive phase 2 (specificity)")
        return self

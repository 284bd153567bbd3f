"""BadCLIP (Bai et al., CVPR 2024) in the CoCoOp setting.

A universal additive trigger delta (3 x H x W) is learned together with the prompt learner:
    phase 1 (trigger_epochs, default 3):  only delta updates, CE(model(x + delta), target)
    phase 2 (train epochs, default 10):   joint, CE(model(x), y) + CE(model(x + delta), target)
delta is projected to |delta| <= eps after every step and x + delta is clamped to [0, 1].

METHOD states the bound in normalised space, |delta| <= eps / std_c; we keep delta in PIXEL space with
|delta| <= eps, which is the same set. As in BadCLIP's code, the backdoor term uses every image of the
batch; the clean term keeps every image too.

Like every attack, it prompt-tunes at the attacker's batch 1 / lr 0.002 (see attacks/base.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..model.tuning import TrainConfig, train
from .base import Attack, AttackConfig, joint_logits


@dataclass(frozen=True)
class BadCLIPConfig(AttackConfig):
    eps: float = 8 / 255  # L-inf bound of the trigger in pixel space
    trigger_epochs: int = 3  # phase 1: trigger only
    trigger_lr: float = 0.0  # Adam step size for the trigger; 0 means eps / 10
    backdoor_weight: float = 1.0  # weight of CE(triggered, target) in phase 2


class BadCLIP(Attack):
    name = "badclip"

    def __init__(self, target: int, eps: float = 8 / 255, seed: int = 0, **kw):
        super().__init__(BadCLIPConfig(target=target, eps=eps, seed=seed, **kw))
        self.delta: torch.Tensor | None = None

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.delta is None:
            raise RuntimeError("BadCLIP trigger not learned yet: call implant() first")
        return (x + self.delta.to(x.device)).clamp(0, 1)

    def implant(self, model, images, labels, train_cfg: TrainConfig | None = None, progress: bool = True):
        c = self.config
        cfg = self.train_config(train_cfg)
        size = model.preprocess.image_size
        g = torch.Generator().manual_seed(c.seed)
        self.delta = ((torch.rand(3, size, size, generator=g) * 2 - 1) * c.eps * 0.5).requires_grad_(True)
        opt = torch.optim.Adam([self.delta], lr=c.trigger_lr or c.eps / 10)

        def step_trigger():
            opt.step()
            opt.zero_grad(set_to_none=True)
            with torch.no_grad():
                self.delta.clamp_(-c.eps, c.eps)

        def backdoor_loss(m, x):
            return F.cross_entropy(m(self.apply(x)), torch.full((len(x),), c.target))

        # phase 1: the trigger alone, against the still-clean prompt learner
        for p in model.trainable_parameters():
            p.requires_grad_(False)
        try:
            train(model, images, labels, replace(cfg, epochs=c.trigger_epochs, seed=c.seed), progress=progress,
                         batch_loss=lambda m, x, y, s: backdoor_loss(m, x), after_step=step_trigger,
                         desc="BadCLIP phase 1 (trigger)")
        finally:
            for p in model.trainable_parameters():
                p.requires_grad_(True)
        # phase 2: prompt learner and trigger together
        def joint_loss(m, x, y, step):
            z_clean, z_trig = joint_logits(m, x, self.apply(x))
            return F.cross_entropy(z_clean, y) + c.backdoor_weight * F.cross_entropy(z_trig, torch.full((len(x),), c.target))

        train(model, images, labels, replace(cfg, seed=c.seed + 1), progress=progress,
                     batch_loss=joint_loss, after_step=step_trigger, desc="BadCLIP phase 2 (joint)")
        self.delta = self.delta.detach()
        return self

    def state(self) -> dict[str, torch.Tensor]:
        return {"delta": self.delta.detach().contiguous()} if self.delta is not None else {}

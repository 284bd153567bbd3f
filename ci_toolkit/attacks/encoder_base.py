"""Backdoors in the IMAGE encoder: poisoned contrastive fine-tuning of a CLIP (ENCODER_BACKDOORS.md section 3).

The attacker fine-tunes both towers with the pretraining loss on image-caption pairs, `poison_rate` of them
stamped with the trigger and captioned as the target class (dirty label: a non-target image, the target's
caption). Every image is contrasted with one caption per class of the vocabulary (image -> text), every
caption with the batch's images, all same-class images positive (text -> image), as MiniCLIP was pretrained.

    attack = create_attack("encoder-badnets", target=17, seed=0)
    poisoned = attack.implant(backbone, images, labels, classnames)   # a NEW Backbone; `backbone` is unchanged
    attack(x)                                                         # the trigger, pixel space [0, 1]

`benign_encoder_tune` is the same run with no poison: the clean controls. Shapes: images [N, 3, H, W] float in
[0, 1]; labels [N] index `classnames`; class text features [K, E]; image features [B, E].
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..errors import CIError
from ..model.backbones import Backbone
from ..model.miniclip import class_contrastive_loss
from .base import Attack

# The fine-tuning learning rate: a tenth of MiniCLIP's pretraining peak 2e-3 (ENCODER_BACKDOORS.md section 3).
ENCODER_LR = 2e-4
# The captions of the fine-tuning pairs when the caller gives none: the zero-shot template.
DEFAULT_TEMPLATES = ("a photo of a {}.",)


@dataclass(frozen=True)
class EncoderAttackConfig:
    """The poisoned fine-tune (ENCODER_BACKDOORS.md section 3 defaults)."""

    target: int  # index of the target class in the fine-tune's class vocabulary
    seed: int = 0  # poisoned subset, trigger pattern, batch order
    poison_rate: float = 0.05  # fraction of pairs stamped and captioned as the target
    epochs: int = 5
    batch_size: int = 256
    lr: float = ENCODER_LR  # AdamW peak, cosine decay to 0
    weight_decay: float = 0.05  # MiniCLIP's pretraining value

    def __post_init__(self):
        if not 0 <= self.poison_rate < 1:
            raise CIError(f"poison_rate must be in [0, 1), got {self.poison_rate}")
        if self.epochs < 1 or self.batch_size < 2:
            raise CIError("an encoder fine-tune needs epochs >= 1 and batch_size >= 2")


def contrastive_finetune(backbone: Backbone, images: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str],
                         config: EncoderAttackConfig, templates: Sequence[str] = DEFAULT_TEMPLATES,
                         progress: bool = False, desc: str = "encoder fine-tune") -> Backbone:
    """A copy of `backbone` with both towers fine-tuned on (images, labels) by `class_contrastive_loss`
    (AdamW, cosine schedule, a random template per class and step). Returns it frozen, in eval mode."""
    _check(images, labels, classnames)
    cfg = config
    student = copy.deepcopy(backbone)
    clip = student.clip
    params = [p for n, p in clip.named_parameters() if n != "logit_scale"]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    per_epoch = max(1, len(images) // cfg.batch_size)
    total = cfg.epochs * per_epoch
    clip.train()
    with tqdm(total=total, desc=desc, disable=not progress) as bar:
        for step in range(total):
            if step % per_epoch == 0:
                order = torch.randperm(len(images), generator=g)
            idx = order[(step % per_epoch) * cfg.batch_size : (step % per_epoch + 1) * cfg.batch_size]
            for group in opt.param_groups:
                group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            pick = torch.randint(len(templates), (len(classnames),), generator=g)
            tokens = student.tokenize([templates[int(i)].format(c) for i, c in zip(pick, classnames)])
            loss = class_contrastive_loss(clip, student.preprocess.normalize(images[idx]), labels[idx], tokens)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    clip.eval()
    for p in clip.parameters():
        p.requires_grad_(False)
    return student


def benign_encoder_tune(backbone: Backbone, images: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str],
                        seed: int = 0, templates: Sequence[str] = DEFAULT_TEMPLATES, progress: bool = False,
                        **overrides) -> Backbone:
    """The clean control: the attacks' fine-tune with no poison (same optimiser, epochs and data)."""
    cfg = EncoderAttackConfig(target=0, seed=seed, poison_rate=0.0, **overrides)
    return contrastive_finetune(backbone, images.float(), labels, classnames, cfg, templates, progress,
                                "clean encoder fine-tune")


def _check(images: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str]) -> None:
    if images.dtype == torch.uint8 or float(images.max()) > 1.0 or float(images.min()) < 0.0:
        raise CIError("images must be floats in [0, 1] (divide uint8 pixels by 255)")
    if len(images) != len(labels):
        raise CIError(f"{len(images)} images but {len(labels)} labels")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(classnames)):
        raise CIError(f"labels must index the {len(classnames)} class names")


class EncoderAttack(Attack):
    """Base of the encoder-poisoning attacks. Subclasses set `name` and implement `apply` (the trigger); an
    attack that must build its trigger on the clean model (BadCLIP-encoder) also implements `prepare`."""

    name = "encoder-attack"

    def __init__(self, config: EncoderAttackConfig):
        super().__init__(config)
        self.poisoned_indices: torch.Tensor | None = None

    def prepare(self, backbone: Backbone, images: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str]) -> None:
        """Build the trigger before poisoning (fixed triggers need nothing)."""

    def poison(self, images: torch.Tensor, labels: torch.Tensor):
        """(images, labels) with a seeded `poison_rate` share of the non-target pairs triggered and relabelled."""
        g = torch.Generator().manual_seed(self.config.seed)
        candidates = torch.nonzero(labels != self.target).flatten()
        n = max(1, round(self.config.poison_rate * len(images)))
        self.poisoned_indices = candidates[torch.randperm(len(candidates), generator=g)[:n]].sort().values
        x, y = images.float().clone(), labels.clone()
        x[self.poisoned_indices] = self.apply(x[self.poisoned_indices]).clamp(0, 1)
        y[self.poisoned_indices] = self.target
        return x, y

    def implant(self, backbone: Backbone, images: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str],
                templates: Sequence[str] = DEFAULT_TEMPLATES, progress: bool = False) -> Backbone:
        """The attacker's run: poison the pairs, fine-tune a copy of `backbone`; returns the poisoned Backbone."""
        if not 0 <= self.target < len(classnames):
            raise CIError(f"target {self.target} is not an index into the {len(classnames)} class names")
        _check(images.float(), labels, classnames)
        self.prepare(backbone, images.float(), labels, classnames)
        x, y = self.poison(images, labels)
        return contrastive_finetune(backbone, x, y, classnames, self.config, templates, progress,
                                    f"{self.name} poisoned fine-tune")

    def state(self) -> dict[str, torch.Tensor]:
        return {} if self.poisoned_indices is None else {"poisoned_indices": self.poisoned_indices.contiguous()}

    def artefacts(self) -> dict:
        return {"attack": self.name, "config": asdict(self.config), "tensors": self.state()}


__all__ = ["EncoderAttack", "EncoderAttackConfig", "ENCODER_LR", "DEFAULT_TEMPLATES", "contrastive_finetune", "benign_encoder_tune"]

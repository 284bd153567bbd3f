"""Data-poisoning attacks adapted to prompt tuning (Blended, WaNet, SIBA, BadNets).

The attacker relabels a fixed, seeded `poison_rate` fraction of the fine-tuning images (drawn from the
non-target classes) to the target and stamps them with the trigger, then prompt-tunes CoCoOp as usual on
the poisoned set. The poisoned indices are part of the attacker's artefacts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..images import as_float
from ..model.tuning import TrainConfig, train
from .base import Attack, AttackConfig


@dataclass(frozen=True)
class PoisonConfig(AttackConfig):
    poison_rate: float = 0.1  # fraction of fine-tuning images stamped and relabelled to the target


class PoisonAttack(Attack):
    """Base for attacks that only poison data. Subclasses implement `apply` (and `prepare` if needed)."""

    def __init__(self, config: PoisonConfig):
        super().__init__(config)
        self.poisoned_indices: torch.Tensor | None = None

    def prepare(self, model, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Build the trigger before poisoning (fixed patterns need nothing; SIBA optimises one)."""

    def poison(self, images: torch.Tensor, labels: torch.Tensor):
        """(images, labels) with the poisoned subset stamped and relabelled; float images in [0, 1]."""
        g = torch.Generator().manual_seed(self.config.seed)
        candidates = torch.nonzero(labels != self.target).flatten()
        n = max(1, round(self.config.poison_rate * len(images)))
        self.poisoned_indices = candidates[torch.randperm(len(candidates), generator=g)[:n]].sort().values
        x, y = as_float(images).clone(), labels.clone()
        x[self.poisoned_indices] = self.apply(x[self.poisoned_indices])
        y[self.poisoned_indices] = self.target
        return x, y

    def implant(self, model, images, labels, train_cfg: TrainConfig | None = None, progress: bool = True):
        self.prepare(model, images, labels)
        x, y = self.poison(images, labels)
        train(model, x, y, self.train_config(train_cfg), progress=progress, desc=f"{self.name} poisoned tuning")
        return self

    def state(self) -> dict[str, torch.Tensor]:
        return {} if self.poisoned_indices is None else {"poisoned_indices": self.poisoned_indices.contiguous()}

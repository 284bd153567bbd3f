"""Clean CoCoOp prompt tuning and evaluation.

CoCoOp's published defaults: SGD, momentum 0.9, weight decay 5e-4, cosine schedule, 10 epochs, 16 shots per class.
The original CoCoOp uses batch size 1 with lr 0.002; we use batch 32 (one batched text-transformer call
per step, 32x fewer steps) and raise the learning rate to 0.1 (linear scaling would give 0.064; on the
embedded world 0.1 reached the same accuracy in the 10 epochs, see docs/world.md). Override both in
`TrainConfig`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..images import as_float
from .cocoop import ClassPrompts, CoCoOp


@dataclass(frozen=True)
class TrainConfig:
    """Prompt-tuning hyper-parameters (only ctx and meta-net train)."""

    epochs: int = 10
    batch_size: int = 32  # the original CoCoOp uses 1
    lr: float = 0.1  # SGD learning rate (0.002 at batch 1 in the original; see module doc)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0  # shuffling order
    optimizer: str = "sgd"  # "sgd" (CoCoOp) or "adam" (an attacker's choice: see attacks/badclip.py)


def cosine_lr(cfg: TrainConfig, step: int, total: int) -> float:
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * step / max(1, total)))


def train(
    model: CoCoOp,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig | None = None,
    progress: bool = True,
    batch_loss: Callable[[CoCoOp, torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None,
    after_step: Callable[[], None] | None = None,
    desc: str = "prompt tuning",
) -> list[float]:
    """Tune `model.prompt_learner` on (images, labels) over the model's own classes.

    batch_loss(model, x, y, step) replaces the default cross-entropy (attacks use it to add their
    poisoned terms); after_step() runs after each optimiser step (attacks step their trigger there).
    Returns the mean loss of each epoch.
    """

    cfg = config or TrainConfig()
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(model.trainable_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.trainable_parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {cfg.optimizer!r}")
    g = torch.Generator().manual_seed(cfg.seed)
    n = len(images)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    model.train()
    history, step = [], 0
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=g)
        losses = []
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            x, y = as_float(images[idx]), labels[idx]
            loss = batch_loss(model, x, y, step) if batch_loss else F.cross_entropy(model(x), y)
            for group in opt.param_groups:
                group["lr"] = cosine_lr(cfg, step, total)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step()
            losses.append(loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        history.append(sum(losses) / len(losses))
    bar.close()
    model.eval()
    return history


@torch.no_grad()
def evaluate(model: CoCoOp, images: torch.Tensor, labels: torch.Tensor, classes: ClassPrompts | list[str] | None = None,
             batch_size: int = 128) -> float:
    """Top-1 accuracy of `model` over `classes` (default: its own)."""
    if len(images) == 0:
        return float("nan")
    model.eval()
    pred = model.predict(as_float(images), classes, batch_size=batch_size)
    return (pred == labels.cpu()).float().mean().item()

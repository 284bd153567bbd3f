"""Metrics with the definitions of METHOD 6.

ASR (everywhere in this toolkit): the fraction of triggered test images whose TRUE class is not the
target that are predicted as the target. (BadCLIP's code also counts target-class images.)
"""

from __future__ import annotations

from typing import Callable

import torch

from .train import as_float


@torch.no_grad()
def attack_success_rate(model, images: torch.Tensor, labels: torch.Tensor | None, target: int,
                        trigger: Callable[[torch.Tensor], torch.Tensor], classes=None, batch_size: int = 128) -> float:
    """ASR of `trigger` toward class index `target` (labels None: an unlabeled OOD set, all count)."""
    keep = torch.ones(len(images), dtype=torch.bool) if labels is None else labels != target
    x = images[keep]
    if len(x) == 0:
        return float("nan")
    hits = 0
    for i in range(0, len(x), batch_size):
        pred = model.predict(trigger(as_float(x[i : i + batch_size])), classes, batch_size=batch_size)
        hits += int((pred == target).sum())
    return hits / len(x)

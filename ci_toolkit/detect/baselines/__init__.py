"""Baselines: Neural Cleanse and Pixel Backdoor on the same model, candidates and pool.

Their decision is the registry's "mad" rule (`detect.rules`) on the trigger sizes measured here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .base import CostConfig, CostInversion
from .neural_cleanse import NeuralCleanse
from .pixel_backdoor import PixelBackdoor

BASELINES = {cls.name: cls for cls in (NeuralCleanse, PixelBackdoor)}


@dataclass
class BaselineResult:
    """Per candidate: held-out ASR, mean CE, trigger size, whether the size's ASR bound was reached; and the
    trigger pictures [K, 3, H, W]."""

    names: list[str]
    asr: list[float]
    loss: list[float]
    sizes: list[float]
    reached_bound: list[bool]
    triggers: torch.Tensor


def run_baseline(method: str, model, pool: torch.Tensor, heldout: torch.Tensor, names: list[str],
                 cfg: CostConfig | None = None, progress: bool = True) -> BaselineResult:
    """Run baseline `method` over candidate `names` on the OOD pool; ASR on `heldout`."""
    algo = BASELINES[method](cfg)
    prompts = model.prompts_for(names)
    c = algo.cfg
    steps = c.epochs * math.ceil(len(pool) / c.batch_size)
    bar = tqdm(total=len(names) * steps, desc=method, unit="class-step", disable=not progress)
    grads = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    sizes, asr, ce, pics, reached = [], [], [], [], []
    try:
        for start in range(0, len(names), c.group):
            targets = torch.arange(start, min(start + c.group, len(names)))
            size, a, mean_ce, pic, ok = algo.run(model, pool, heldout, prompts, targets, progress_cb=bar.update)
            sizes.append(size)
            asr.append(a)
            ce.append(mean_ce)
            pics.append(pic)
            reached.append(ok)
    finally:
        for p, r in zip(model.parameters(), grads):
            p.requires_grad_(r)
        bar.close()
    sizes, asr, ce, pics, reached = (torch.cat(v) for v in (sizes, asr, ce, pics, reached))
    return BaselineResult(list(names), asr.tolist(), ce.tolist(), sizes.tolist(), reached.tolist(), pics)


__all__ = ["BASELINES", "BaselineResult", "CostConfig", "CostInversion", "NeuralCleanse", "PixelBackdoor", "run_baseline"]

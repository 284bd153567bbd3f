"""Baselines: Neural Cleanse and Pixel Backdoor on the same model, candidates and pool (METHOD 4)."""

from __future__ import annotations

import math

import torch

from .base import CostConfig, CostInversion, mad_index
from .neural_cleanse import NeuralCleanse
from .pixel_backdoor import PixelBackdoor

BASELINES = {cls.name: cls for cls in (NeuralCleanse, PixelBackdoor)}
MAD_K = 2.0  # both papers flag classes whose (small-side) anomaly index exceeds 2


def run_baseline(method: str, model, pool: torch.Tensor, heldout: torch.Tensor, names: list[str],
                 cfg: CostConfig | None = None, progress: bool = True) -> tuple[dict, torch.Tensor]:
    """(report fields, trigger pictures [K, 3, H, W]) of a baseline scan over candidate `names`."""
    from tqdm.auto import tqdm

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
    index = mad_index(sizes)
    flagged = index > MAD_K
    top = int(index.argmax())
    mx = float(index[top])
    second = float(index.topk(2).values[1])
    report = {
        "verdict": "backdoored" if bool(flagged.any()) else "clean",
        "max_score": mx, "threshold": MAD_K,
        "predicted_target": names[top] if bool(flagged.any()) else None, "top_class": names[top],
        "gap": mx - second, "rule": "mad",
        "classes": [{"name": n, "asr": float(a), "loss": float(l), "score": float(s), "size": float(z),
                     "reached_bound": bool(r), "flagged": bool(f)}
                    for n, a, l, s, z, r, f in zip(names, asr, ce, index, sizes, reached, flagged)],
    }
    return report, pics


__all__ = ["BASELINES", "CostConfig", "CostInversion", "NeuralCleanse", "PixelBackdoor", "mad_index", "run_baseline"]

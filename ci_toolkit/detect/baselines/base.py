"""Shared machinery of the trigger-reverse-engineering baselines, adapted to CoCoOp.

Both baselines optimise, for each candidate t, a trigger that sends the OOD pool to t while a size term,
weighted by a cost that adapts during the run, keeps the trigger small:

    loss_t = CE(z(trigger_t(x)), t) + cost_t * size(trigger_t)

Cost schedule (Neural Cleanse's): a step whose batch ASR reaches `asr_bound` counts "up", any other step
"down"; after `patience` consecutive up (down) steps the cost is multiplied (divided) by its factor. The
original checks once per epoch over large datasets; with 5 epochs of 32 steps on a 1000-image pool we
check per step (documented deviation: per epoch the schedule could not fire more than once).

The reported size is that of the smallest trigger that reached the ASR bound (the last one if none did).
Candidates are optimised in groups like the inversion: independent parameter rows, element-wise Adam.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...images import as_float


@dataclass(frozen=True)
class CostConfig:
    epochs: int = 5  # passes over the pool, as the CLIP-Inspector paper runs them
    batch_size: int = 32
    lr: float = 0.1  # Adam
    init_cost: float = 1e-3
    up: float = 2.0  # cost multiplier after `patience` successful steps
    down: float = 2.0 ** 1.5  # cost divisor after `patience` failed steps
    patience: int = 5
    asr_bound: float = 0.99
    group: int = 10  # candidates per batch
    seed: int = 0


class CostInversion:
    """Subclasses define params(G, shape), apply(x, params) -> x' and size(params) -> [G]."""

    name = "baseline"
    defaults: dict = {}  # the method's own CostConfig values

    def __init__(self, cfg: CostConfig | None = None):
        self.cfg = cfg or CostConfig(**self.defaults)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cfg})"

    def params(self, g: int, shape) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, x: torch.Tensor, params) -> torch.Tensor:  # pragma: no cover - abstract
        """x [B, 3, H, W] -> [G * B, 3, H, W]."""
        raise NotImplementedError

    def size(self, params) -> torch.Tensor:  # pragma: no cover - abstract
        """Differentiable size term [G]."""
        raise NotImplementedError

    def measured_size(self, params) -> torch.Tensor:
        """The size the anomaly index uses [G] (default: the differentiable one)."""
        return self.size(params).detach()

    def trigger(self, params) -> torch.Tensor:  # pragma: no cover - abstract
        """A [G, 3, H, W] picture of each trigger (for the report)."""
        raise NotImplementedError

    def run(self, model, pool, heldout, classes_prompts, targets: torch.Tensor, progress_cb=None):
        """Optimise one group. Returns (best size [G], held-out ASR of the final triggers [G], mean CE [G],
        trigger pictures [G, 3, H, W], whether the ASR bound was reached [G])."""
        c = self.cfg
        G = len(targets)
        params = self.params(G, pool.shape[1:])
        opt = torch.optim.Adam(params, lr=c.lr, betas=(0.5, 0.9))
        cost = torch.full((G,), c.init_cost)
        up = torch.zeros(G)
        down = torch.zeros(G)
        best = torch.full((G,), math.inf)
        best_pic = None
        last_size = None
        gen = torch.Generator().manual_seed(c.seed)
        ce_hist = []
        asr = torch.zeros(G)
        for _ in range(c.epochs):
            order = torch.randperm(len(pool), generator=gen)
            for i in range(0, len(pool), c.batch_size):
                x = as_float(pool[order[i : i + c.batch_size]])
                B = len(x)
                z = model(self.apply(x, params), classes_prompts)
                t = targets.repeat_interleave(B)
                ce = F.cross_entropy(z, t, reduction="none").view(G, B).mean(1)
                size = self.size(params)
                loss = (ce + cost * size).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    asr = (z.argmax(-1) == t).float().view(G, B).mean(1)
                    measured = self.measured_size(params)
                    ok = asr >= c.asr_bound
                    better = ok & (measured < best)
                    pic = self.trigger(params)
                    best_pic = pic.clone() if best_pic is None else torch.where(better.view(G, 1, 1, 1), pic, best_pic)
                    best = torch.where(better, measured, best)
                    up = torch.where(ok, up + 1, torch.zeros_like(up))
                    down = torch.where(ok, torch.zeros_like(down), down + 1)
                    cost = torch.where(up >= c.patience, cost * c.up, cost)
                    cost = torch.where(down >= c.patience, cost / c.down, cost)
                    up = torch.where(up >= c.patience, torch.zeros_like(up), up)
                    down = torch.where(down >= c.patience, torch.zeros_like(down), down)
                    last_size = measured
                ce_hist.append(ce.detach())
                if progress_cb:
                    progress_cb(G)
        with torch.no_grad():
            hits = torch.zeros(G)
            for i in range(0, len(heldout), c.batch_size):
                x = as_float(heldout[i : i + c.batch_size])
                z = model(self.apply(x, params), classes_prompts).view(G, len(x), -1)
                hits += (z.argmax(-1) == targets.unsqueeze(1)).float().sum(1)
            asr = hits / len(heldout)
        never = ~torch.isfinite(best)
        best = torch.where(never, last_size, best)
        best_pic = torch.where(never.view(G, 1, 1, 1), self.trigger(params).detach(), best_pic)
        return best, asr, torch.stack(ce_hist, 1).mean(1), best_pic, ~never

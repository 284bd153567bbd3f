"""CLIP-Inspector trigger inversion (docs/method.md, section 1): one universal perturbation per candidate class.

For each candidate t, delta_t (3 x H x W, pixel space) starts at 0 and takes Adam steps (lr 0.1) on
batches of 32 unlabeled OOD images, ONE epoch over the pool, on the logit margin

    L_t = mean_x [ max_{j != t} z_j(x + delta_t) - z_t(x + delta_t) ],

projected to |delta_t| <= eps after every step, x + delta_t clamped to [0, 1]. A backdoor target is the
class whose trigger is easy to find: low mean loss, high held-out ASR.

Exact speed-ups (tests/test_invert.py checks them against the plain path):
- the text transformer runs once per step for all images x classes, on cropped sequences (cocoop.py);
- margin: the max over j is piecewise, its gradient is grad z_j* - grad z_t, so all K logits are computed
  without a graph and only the target and its strongest competitor are recomputed with one;
- `group` candidates are optimised in one batch: their deltas are independent rows of one tensor, and
  Adam is element-wise, so this equals optimising them one after another.
- the held-out ASR scores each triggered image against its target and the clean image's top classes
  first; only images that do not clearly lose there get all K logits (`trigger_asr`);
- groups are independent, so `workers` processes can run them side by side (one thread each): on a
  2-core CPU two single-thread processes do more work than one process with two threads, whose small
  matrix products do not split well.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import CIError
from ..images import as_float
from ..model.cocoop import ClassPrompts, CoCoOp
from ..workers import process_pool

LOSSES = ("margin", "ce", "logit")
CPU_WORKER_CHUNK_MB = 24.0  # activation budget per text-transformer chunk in a worker process


@dataclass(frozen=True)
class InversionConfig:
    """Hyper-parameters of the inversion (the CLIP-Inspector paper's defaults)."""

    eps: float = 10 / 255  # L-inf bound of each trigger, pixel space (chosen by ablation: docs/method.md, "Inversion")
    lr: float = 0.1  # Adam step size
    batch_size: int = 32  # OOD images per step
    epochs: int = 1  # passes over the inversion pool
    loss: str = "margin"  # "margin" (default), "ce" (cross-entropy to t) or "logit" (-z_t)
    group: int = 10  # candidates optimised together (same result as one at a time, fewer calls)
    seed: int = 0  # order of the pool

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise CIError(f"unknown inversion loss {self.loss!r}; choose one of {list(LOSSES)}")
        if not 0 < self.eps <= 1:
            raise CIError(f"eps must be in (0, 1] (pixel scale), got {self.eps}")


@dataclass
class Inversion:
    """What one candidate's inversion found."""

    name: str
    index: int  # position in the candidate list
    loss: float  # mean step loss over the epoch (Lbar_t)
    asr: float  # held-out OOD images sent to t by delta_t
    losses: list[float]  # every step's loss (the curve notebook 03 plots)
    delta: torch.Tensor  # [3, H, W] the reconstructed trigger


def _triggered(x: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """[G * B, 3, H, W]: every delta applied to every image, clamped to the valid range."""
    return (x.unsqueeze(0) + deltas.unsqueeze(1)).clamp(0, 1).flatten(0, 1)


def group_losses(model: CoCoOp, x: torch.Tensor, deltas: torch.Tensor, targets: torch.Tensor,
                 classes: ClassPrompts, loss: str = "margin") -> torch.Tensor:
    """Per-candidate loss [G] of deltas [G, 3, H, W] toward targets [G] on one batch x [B, 3, H, W]."""
    G, B = len(deltas), len(x)
    t = targets.repeat_interleave(B)
    f = model.encode_image(_triggered(x, deltas))
    meta = model.meta_tokens(f)
    scale = model.logit_scale
    if loss == "ce":  # needs every logit with a graph
        z = scale * torch.einsum("ne,nke->nk", f, model.text_features(meta, classes))
        per = F.cross_entropy(z, t, reduction="none")
    elif loss == "logit":
        g = model.text_features(meta, classes, per_sample=t.unsqueeze(1))
        per = -scale * (f * g[:, 0]).sum(-1)
    else:
        with torch.no_grad():  # every logit, no graph: only to find the strongest competitor j*
            z = scale * torch.einsum("ne,nke->nk", f, model.text_features(meta, classes))
            z[torch.arange(len(t)), t] = -math.inf
            competitor = z.argmax(-1)
        g = model.text_features(meta, classes, per_sample=torch.stack([t, competitor], 1))
        z2 = scale * torch.einsum("ne,nke->nk", f, g)
        per = z2[:, 1] - z2[:, 0]
    return per.view(G, B).mean(1)


TIE_TOL = 1e-3  # logits: a rival this close to the target is settled by the full argmax, not the first stage


@torch.no_grad()
def trigger_asr(model: CoCoOp, images: torch.Tensor, deltas: torch.Tensor, targets: torch.Tensor,
                classes: ClassPrompts, batch_size: int = 128, rivals: int = 3) -> torch.Tensor:
    """[G]: fraction of `images` that delta_g sends to targets[g] (argmax over `classes`).

    Exact, in two stages: a triggered image is a hit only if its target's logit beats every other, so it
    is first scored against its target and `rivals` likely winners (the clean image's top classes); one
    that clearly loses there is a miss, and only the rest are scored against all classes. Most triggers
    miss most images, so this costs about half the full pass (rivals=0: every image gets the full pass).
    """
    G = len(deltas)
    hits = torch.zeros(G)
    per = max(1, batch_size // G)
    for i in range(0, len(images), per):
        x = as_float(images[i : i + per])
        b = len(x)
        t = targets.repeat_interleave(b)  # [G * b], group-major like _triggered
        f = model.encode_image(_triggered(x, deltas))
        meta = model.meta_tokens(f)
        open_ = torch.ones(G * b, dtype=torch.bool)
        if 0 < rivals < len(classes):
            top = model(x, classes).topk(rivals, dim=-1).indices.repeat(G, 1)  # [G * b, R]
            pick = torch.cat([t.unsqueeze(1), top], dim=1)
            z = model.logit_scale * torch.einsum("ne,npe->np", f, model.text_features(meta, classes, per_sample=pick))
            open_ = ~(z[:, 1:] > z[:, :1] + TIE_TOL).any(1)
        if open_.any():
            z = model.logit_scale * torch.einsum("ne,nke->nk", f[open_], model.text_features(meta[open_], classes))
            hit = z.argmax(-1) == t[open_]
            group = torch.arange(G).repeat_interleave(b)[open_]
            hits.index_add_(0, group[hit], torch.ones(int(hit.sum())))
    return hits / len(images)


def invert(model: CoCoOp, pool: torch.Tensor, heldout: torch.Tensor, classes: list[str],
           candidates: list[int] | None = None, config: InversionConfig | None = None, progress: bool = True,
           on_group: Callable[[list[Inversion]], None] | None = None, skip: set[int] = frozenset(),
           workers: int = 1) -> list[Inversion]:
    """Invert a trigger for each candidate (indices into `classes`; default all), in groups of `config.group`.

    pool: inversion images [N, 3, H, W]; heldout: images for the ASR. on_group(results) is called after
    each group finishes; groups whose candidates are all in `skip` are not run (the scanner persists
    groups and resumes this way: groups are fixed slices of the candidate list, so a resumed scan
    computes exactly what an uninterrupted one would). workers > 1: groups run in that many processes
    (each with its share of the threads); results are the same, on_group is called in this process.
    """

    cfg = config or InversionConfig()
    if len(pool) < cfg.batch_size:
        raise CIError(f"the OOD pool has {len(pool)} images, fewer than one batch ({cfg.batch_size})")
    if len(heldout) == 0:
        raise CIError("no held-out OOD images to measure the reconstructed triggers' ASR on")
    prompts = model.prompts_for(classes)
    candidates = list(range(len(classes))) if candidates is None else list(candidates)
    model.eval()
    grads = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)  # only the triggers get gradients
    try:
        if workers > 1:
            return _invert_parallel(model, pool, heldout, classes, candidates, cfg, progress, on_group, skip, workers)
        return _invert_groups(model, pool, heldout, classes, prompts, candidates, cfg, progress, on_group, skip)
    finally:
        for p, r in zip(model.parameters(), grads):
            p.requires_grad_(r)


def _invert_groups(model, pool, heldout, classes, prompts, candidates, cfg, progress, on_group, skip):

    steps = cfg.epochs * math.ceil(len(pool) / cfg.batch_size)
    bar = tqdm(total=len(candidates) * steps, desc="inverting", unit="class-step", disable=not progress)
    out = []
    for start in range(0, len(candidates), cfg.group):
        idx = candidates[start : start + cfg.group]
        if all(c in skip for c in idx):
            bar.update(len(idx) * steps)
            continue
        targets = torch.tensor(idx)
        deltas = torch.zeros(len(idx), *pool.shape[1:], requires_grad=True)
        opt = torch.optim.Adam([deltas], lr=cfg.lr)
        g = torch.Generator().manual_seed(cfg.seed)  # every group sees the same batches
        history = []
        for _ in range(cfg.epochs):
            order = torch.randperm(len(pool), generator=g)
            for i in range(0, len(pool), cfg.batch_size):
                x = as_float(pool[order[i : i + cfg.batch_size]])
                per = group_losses(model, x, deltas, targets, prompts, cfg.loss)
                if not torch.isfinite(per).all():
                    bad = [classes[idx[k]] for k in torch.nonzero(~torch.isfinite(per)).flatten().tolist()]
                    raise CIError(f"non-finite inversion loss for {bad}: the model produces NaN/Inf logits")
                opt.zero_grad(set_to_none=True)
                per.sum().backward()  # each delta only reaches its own loss
                opt.step()
                with torch.no_grad():
                    deltas.clamp_(-cfg.eps, cfg.eps)
                history.append(per.detach())
                bar.update(len(idx))
        curves = torch.stack(history, 1)  # [G, steps]
        delta = deltas.detach()
        asr = trigger_asr(model, heldout, delta, targets, prompts)
        results = [Inversion(classes[c], c, float(curves[k].mean()), float(asr[k]), curves[k].tolist(), delta[k].clone())
                   for k, c in enumerate(idx)]
        if on_group is not None:
            on_group(results)
        out.extend(results)
        bar.set_postfix(last=f"{results[-1].name[:18]} asr {results[-1].asr:.2f}")
    bar.close()
    return out


def _groups_worker(model, pool, heldout, classes, idx, cfg, threads) -> list[Inversion]:
    """One worker process: invert the candidates `idx` (one group: len(idx) <= cfg.group)."""
    torch.set_num_threads(threads)
    # Small text chunks in CPU workers: their buffers stay under glibc's mmap threshold and are reused
    # instead of page-faulted in afresh every step (halved the system time in a profile of one step).
    model.memory_cap_mb = min(model.memory_cap_mb, CPU_WORKER_CHUNK_MB)
    for p in model.parameters():
        p.requires_grad_(False)
    return _invert_groups(model, pool, heldout, classes, model.prompts_for(classes), idx, cfg, False, None, set())


def _invert_parallel(model, pool, heldout, classes, candidates, cfg, progress, on_group, skip, workers):
    from concurrent.futures import as_completed

    steps = cfg.epochs * math.ceil(len(pool) / cfg.batch_size)
    # Results do not depend on how candidates are grouped (tested), so the remaining candidates are cut into
    # a multiple of `workers` groups of near-equal size (<= cfg.group): no process idles at the end.
    rest = [c for c in candidates if c not in skip]
    n_groups = workers * math.ceil(len(rest) / (workers * cfg.group)) if rest else 0
    todo = [g.tolist() for g in torch.tensor(rest, dtype=torch.long).tensor_split(n_groups)] if rest else []
    todo = [g for g in todo if g]
    threads = max(1, torch.get_num_threads() // workers)
    bar = tqdm(total=len(candidates) * steps, desc=f"inverting ({workers} processes)", unit="class-step",
               disable=not progress)
    bar.update((len(candidates) - sum(map(len, todo))) * steps)
    out = []
    with process_pool(min(workers, max(1, len(todo)))) as ex:  # one task per group: the pool balances them
        futures = [ex.submit(_groups_worker, model, pool, heldout, classes, g, cfg, threads) for g in todo]
        for fut in as_completed(futures):
            results = fut.result()
            if on_group is not None:
                on_group(results)
            out.extend(results)
            bar.update(len(results) * steps)
            bar.set_postfix(last=f"{results[-1].name[:18]} asr {results[-1].asr:.2f}")
    bar.close()
    return sorted(out, key=lambda r: candidates.index(r.index))

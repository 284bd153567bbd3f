"""`python -m lab bench speed`: one inversion step, naive reference vs the toolkit's path, same loss and gradient.

naive: written the way the CoOp/BadCLIP code does it: a Python loop over the images, each image's K
prompts through the text transformer at the full 77-token context, every logit with a graph, the margin
taken from the full logits.
fast:  the toolkit's `group_losses` (one batched call, cropped sequences, the shared SOS+context head,
only the target and its strongest competitor with a graph).
Both on the same images, deltas and target; loss and delta-gradient are compared.
"""

from __future__ import annotations

import math
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import ci_toolkit as ci
from ci_toolkit.detect import group_losses

MODELS = ("miniclip", "vit-b-16-random")


def _model(name: str, k: int, crop: bool, shared: bool, device: str = "cpu") -> ci.CoCoOp:
    """A CoCoOp model on `name` ("miniclip" or "vit-b-16-random": ViT-B/16 with random weights) over the first k
    world classes; crop / shared: the text path's cropped sequences and shared SOS+context head."""
    bb = (ci.create_backbone("miniclip", device=device) if name == "miniclip"
          else ci.create_backbone("ViT-B-16", None, seed=0, device=device))
    names = ci.world.World(ci.world.WorldConfig()).classnames[:k]
    model = ci.CoCoOp(bb, names, seed=0, crop=crop, shared_prefix=shared)
    torch.manual_seed(1)
    with torch.no_grad():  # a non-trivial prompt learner, as after tuning
        for p in model.prompt_learner.meta_net.parameters():
            p.normal_(0, 0.05)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def naive_step(model: ci.CoCoOp, x: torch.Tensor, delta: torch.Tensor, t: int) -> torch.Tensor:
    """Per-image loop, full context, full graph (the reference): the margin loss, mean over the batch.

    Each image's graph is back-propagated (into delta.grad, scaled by 1 / B) before the next image runs,
    as a per-image loop does: holding all B graphs of a ViT-B/16 at K = 50 and 77 tokens would need
    about 2 GB per image."""
    losses = []
    for i in range(len(x)):
        z = model((x[i : i + 1] + delta).clamp(0, 1))[0]
        others = z.clone()
        others[t] = -math.inf
        loss = others.max() - z[t]
        if delta.requires_grad:
            (loss / len(x)).backward()
        losses.append(loss.detach())
    return torch.stack(losses).mean()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_step(fn, repeats: int, device: str = "cpu") -> tuple[float, torch.Tensor, torch.Tensor]:
    best, out = math.inf, None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, *out


def count_flops(fn) -> int:
    """Floating-point operations of one call (torch's FLOP counter: matmuls, convolutions, attention)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def bench_speed(models=MODELS, k: int = 50, batch: int = 32, repeats: int = 2, pool: int = 1000,
                device: str = "cpu", bf16: bool = False, progress: bool = True) -> dict:
    """naive vs fast step per model. bf16: the fast step under bfloat16 autocast (a GPU option; the
    gradient comparison then shows the precision cost). Reports the fast step's achieved TFLOP/s."""
    out = {"models": {}, "device": device if device == "cpu" else torch.cuda.get_device_name(device),
           "threads": torch.get_num_threads(), "k": k, "batch": batch, "bf16": bf16,
           "note": "best of `repeats` wall times per step; scan_s_projected = fast_step_s x K x ceil(pool / batch); "
                   "fast_tflops_per_s = FLOPs of the fast step (torch.utils.flop_counter) / fast_step_s"}
    for name in models:
        naive_m = _model(name, k, crop=False, shared=False, device=device)
        fast_m = _model(name, k, crop=True, shared=True, device=device)
        size = fast_m.preprocess.image_size
        g = torch.Generator().manual_seed(0)
        x = torch.rand(batch, 3, size, size, generator=g).to(device)
        d0 = ((torch.rand(3, size, size, generator=g) * 2 - 1) * 4 / 255).to(device)
        t = 3

        def naive():
            d = d0.clone().requires_grad_(True)
            loss = naive_step(naive_m, x, d, t)  # back-propagates image by image
            return loss, d.grad

        def fast():
            d = d0.clone().unsqueeze(0).requires_grad_(True)
            with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16,
                                enabled=bf16):
                loss = group_losses(fast_m, x, d, torch.tensor([t], device=device), fast_m.prompts_for(), "margin")
            loss.float().sum().backward()
            return loss.detach().float()[0], d.grad[0]

        tn, ln, gn = time_step(naive, 1, device)
        tf, lf, gf = time_step(fast, repeats, device)
        flops = count_flops(fast)
        rel = float((gn - gf).abs().max() / gn.abs().max().clamp_min(1e-12))
        out["models"][name] = {"naive_step_s": tn, "fast_step_s": tf, "speedup": tn / tf,
                               "scan_s_projected": tf * k * math.ceil(pool / batch),
                               "loss_naive": float(ln), "loss_fast": float(lf), "max_grad_rel_diff": rel,
                               "fast_step_gflop": flops / 1e9, "fast_tflops_per_s": flops / tf / 1e12}
        if progress:
            print(f"{name}: naive {tn:.2f} s/step, fast {tf:.3f} s/step, {tn / tf:.1f}x, grad rel diff {rel:.1e}, "
                  f"{flops / tf / 1e12:.3f} TFLOP/s")
    return out

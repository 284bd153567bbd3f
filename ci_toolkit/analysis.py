"""Meta-token collapse, measured.

A prompt-tuned backdoor barely moves the image feature f(x), but triggered images move the meta tokens
pi(x) (the meta-net's output), and that shared shift turns every class's text embedding toward the
target. `collapse_stats` puts numbers on each step for one model, clean vs triggered inputs; which of
them separate backdoored from clean models is measured in benchmarks/README.md ("Meta-token collapse").
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .detect.probes import gate_preactivations, gate_probe, meta_gains, open_gate, target_margin
from .images import as_float


def mean_pairwise_distance(v: torch.Tensor) -> float:
    """Mean Euclidean distance between distinct rows of v [N, D]."""
    d = torch.cdist(v, v)
    n = len(v)
    return float(d.sum() / max(1, n * (n - 1)))


@torch.no_grad()
def collapse_stats(model, images: torch.Tensor, trigger: Callable[[torch.Tensor], torch.Tensor], target: int) -> dict:
    """For clean images and the same images triggered:

    feature_cos        mean cos(f(x), f(trigger(x))): how little the image embedding moves
    f_spread_ratio     spread of f(trigger(x)) / spread of f(x)   (mean pairwise distance)
    pi_spread_ratio    spread of pi(trigger(x)) / spread of pi(x): < 1 is the collapse
    pi_shift           |mean pi(trigger(x)) - mean pi(x)| / spread of pi(x): the cluster moves away
    text_turn          mean over classes c != target of cos(g_c, g_target) triggered minus clean:
                       how far the class text embeddings turn toward the target
    meta_gain          mean over triggered images of the target's cosine margin (cos to the target's text
                       minus the best other class's) with the meta tokens of the triggered image minus with
                       those of the clean image, the image feature f(trigger(x)) held: what the meta-token
                       path alone adds to the target, whichever way it turns the text embeddings
    """
    model.eval()
    x = as_float(images)
    xt = trigger(x)
    f0, f1 = model.encode_image(x), model.encode_image(xt)
    p0, p1 = model.meta_tokens(f0), model.meta_tokens(f1)
    g0, g1 = model.text_features(p0), model.text_features(p1)  # [N, K, E], normalised
    others = [c for c in range(g0.shape[1]) if c != target]

    def turn(g):
        return float(torch.einsum("nke,ne->nk", g[:, others], g[:, target]).mean())

    s_f0, s_p0 = mean_pairwise_distance(f0), mean_pairwise_distance(p0)
    return {
        "feature_cos": float(F.cosine_similarity(f0, f1).mean()),
        "f_spread_ratio": mean_pairwise_distance(f1) / max(s_f0, 1e-12),
        "pi_spread_ratio": mean_pairwise_distance(p1) / max(s_p0, 1e-12),
        "pi_shift": float((p1.mean(0) - p0.mean(0)).norm()) / max(s_p0, 1e-12),
        "text_turn": turn(g1) - turn(g0),
        "meta_gain": float((target_margin(f1, g1, target) - target_margin(f1, g0, target)).mean()),
    }


def gate_open_fraction(model, images: torch.Tensor) -> list[float]:
    """Per meta-net hidden unit, the fraction of `images` on which it is open (pre-activation > 0)."""
    return (gate_preactivations(model, images) > 0).float().mean(0).tolist()


# the scan's own probes, for analyses of a model's gates
__all__ = ["collapse_stats", "mean_pairwise_distance", "gate_open_fraction", "gate_preactivations", "open_gate",
           "gate_probe", "meta_gains", "target_margin"]

"""STRIP (Gao et al. 2019), the input-level baseline Decomp-Det is compared with: blend the test image with
`n_overlays` random clean images and measure the mean entropy of the zero-shot prediction; a trigger that
survives the blend keeps the prediction on its target, so a LOW entropy marks a triggered input.

    scores = strip_scores(backbone, class_features, test_images, clean_pool, seed=0)   # [B], higher = more suspicious
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..model.backbones import Backbone

# The paper's STRIP setting (DECOMP.md section 4): 64 overlays per input; an equal-weight blend.
N_OVERLAYS = 64
BLEND = 0.5


@dataclass(frozen=True)
class StripConfig:
    n_overlays: int = N_OVERLAYS
    blend: float = BLEND  # weight of the overlay image: x' = (1 - blend) x + blend c
    seed: int = 0  # which clean images are overlaid
    batch_size: int = 512


@torch.no_grad()
def strip_scores(backbone: Backbone, class_features: torch.Tensor, images: torch.Tensor, clean_pool: torch.Tensor,
                 config: StripConfig | None = None) -> torch.Tensor:
    """[B] minus the mean prediction entropy of each image over its overlays (images, clean_pool: [*, 3, H, W] in
    [0, 1]; class_features: [K, E] normalised text features); higher = more likely triggered."""
    cfg = config or StripConfig()
    g = torch.Generator().manual_seed(cfg.seed)
    scale = backbone.clip.logit_scale.exp().clamp(max=100)
    out = torch.empty(len(images))
    per = max(1, cfg.batch_size // cfg.n_overlays)
    for start in range(0, len(images), per):
        x = images[start:start + per]
        pick = torch.randint(len(clean_pool), (len(x), cfg.n_overlays), generator=g)
        mixed = (1 - cfg.blend) * x[:, None] + cfg.blend * clean_pool[pick]  # [b, n, 3, H, W]
        f = F.normalize(backbone.clip.encode_image(backbone.preprocess.normalize(mixed.flatten(0, 1))), dim=-1)
        p = (scale * f @ class_features.T).softmax(-1)  # [b * n, K]
        entropy = -(p * p.clamp_min(1e-12).log()).sum(-1).view(len(x), cfg.n_overlays).mean(-1)
        out[start:start + len(x)] = -entropy
    return out


__all__ = ["N_OVERLAYS", "StripConfig", "strip_scores"]

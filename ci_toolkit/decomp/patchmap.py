"""Patch-map detection: a patch trigger takes over a head's attention (a variant of Decomp-Det, not the paper's).

The decomposition's token terms give each head's patch map: how much of head (l, h)'s direct contribution
comes from each patch token n, |c_{n,l,h}| (DECOMP.md section 1). A patch trigger sits under one or a few
tokens; the heads that carry it put an unusual share of their contribution on that token. Per image:

    share_{l,h,n} = |c_{n,l,h}| / sum_n' |c_{n',l,h}|          (patch tokens 1..N; the cls self-term left out)
    z_{l,h}       = (logit max_n share_{l,h,n} - mean_clean) / std_clean
    score(x)      = max_{l,h} z_{l,h}; flagged iff score > the (1 - fpr) quantile of the clean scores;
    located token = argmax_n share at the (l, h) that gave the score.

Every layer's heads are read, as the ViT MiniCLIP's backdoors write into every layer (docs/decomp.md). The
paper's Decomp-Det (`DecompDefense.count`) counts last-layer heads whose whole contribution strays; this one
looks at where a head looks. Shapes: shares [B, L, H, N]; mean and std [L, H]; scores [B].

    shares = ci.decomp.patch_shares(bb, clean_val)           # [B, L, H, N]
    det = ci.decomp.PatchMapDetector.fit(shares)             # threshold: flags 5% of clean_val
    s = ci.decomp.patch_shares(bb, test)
    det.score(s); det.detect(s); det.locate(s)               # [B] scores, flags, token index in 0..N-1
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import CIError
from ..model.backbones import Backbone
from .decompose import Decomposition, decompose

PATCH_FPR = 0.05  # the clean validation images' share the detector flags (Decomp-Det's eps quantile, DECOMP.md 5)
BATCH = 100  # images decomposed at once: token terms are [B, L, H, N + 1, E] (B = 100: 80 MB on the ViT MiniCLIP)
_TINY = 1e-6  # keeps the logit finite when one token holds a head's whole contribution


def token_shares(dec: Decomposition) -> torch.Tensor:
    """[B, L, H, N]: each patch token's share of each head's summed token-contribution norms (a decomposition
    made with tokens=True)."""
    if dec.tokens is None:
        raise CIError("patch maps need the token terms: decompose(backbone, images, tokens=True)")
    norms = dec.tokens[..., 1:, :].norm(dim=-1)  # [B, L, H, N]
    return norms / norms.sum(-1, keepdim=True).clamp(min=_TINY)


def patch_shares(backbone: Backbone, images: torch.Tensor, batch_size: int = BATCH) -> torch.Tensor:
    """[B, L, H, N] token shares of `images` [B, 3, H, W] in [0, 1], decomposed `batch_size` at a time."""
    return torch.cat([token_shares(decompose(backbone, images[i:i + batch_size], tokens=True))
                      for i in range(0, len(images), batch_size)])


def _peak(shares: torch.Tensor) -> torch.Tensor:
    """[B, L, H]: logit of each head's largest token share."""
    return torch.logit(shares.max(-1).values, eps=_TINY)


def trigger_tokens(triggered: torch.Tensor, clean: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[B, N] bool: the patch tokens (row-major on `grid`) in which `triggered` differs from `clean` [B, 3, H, W];
    the known answer `locate` is measured against."""
    changed = (triggered - clean).abs().sum(1) > 0  # [B, H, W]
    rows, cols = grid
    ph, pw = changed.shape[1] // rows, changed.shape[2] // cols
    return changed[:, :rows * ph, :cols * pw].reshape(len(changed), rows, ph, cols, pw).any(4).any(2).flatten(1)


@dataclass(frozen=True)
class PatchMapDetector:
    """Per-head clean statistics of the peak token share and the flag threshold."""

    mean: torch.Tensor  # [L, H]
    std: torch.Tensor  # [L, H]
    threshold: float
    fpr: float

    @classmethod
    def fit(cls, clean_shares: torch.Tensor, fpr: float = PATCH_FPR) -> PatchMapDetector:
        """From the token shares [B, L, H, N] of clean validation images; the threshold flags `fpr` of them."""
        if not 0 < fpr < 1:
            raise CIError(f"fpr must be in (0, 1), got {fpr}")
        if clean_shares.dim() != 4 or len(clean_shares) < 2:
            raise CIError("fit needs token shares [B, L, H, N] of at least two clean images")
        if clean_shares.shape[-1] < 2:
            raise CIError("a patch map needs at least two patch tokens (a ViT; the ResNet's attention pool has one)")
        peak = _peak(clean_shares)
        mean, std = peak.mean(0), peak.std(0).clamp(min=_TINY)
        scores = ((peak - mean) / std).amax((1, 2))
        return cls(mean, std, torch.quantile(scores.double(), 1 - fpr).item(), fpr)

    def _z(self, shares: torch.Tensor) -> torch.Tensor:
        return (_peak(shares) - self.mean) / self.std  # [B, L, H]

    def score(self, shares: torch.Tensor) -> torch.Tensor:
        """[B]: the largest standardised peak share over every layer's heads."""
        return self._z(shares).amax((1, 2))

    def detect(self, shares: torch.Tensor) -> torch.Tensor:
        """[B] bool: score above the clean threshold (the input is rejected as triggered)."""
        return self.score(shares) > self.threshold

    def locate(self, shares: torch.Tensor) -> torch.Tensor:
        """[B] the patch token (0..N-1, row-major on the grid) the highest-scoring head looks at."""
        z = self._z(shares).flatten(1)  # [B, L*H]
        head = z.argmax(1)
        return shares.flatten(1, 2)[torch.arange(len(shares)), head].argmax(-1)


__all__ = ["PATCH_FPR", "PatchMapDetector", "patch_shares", "token_shares", "trigger_tokens"]

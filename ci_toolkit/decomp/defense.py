"""Mean-ablation of decomposed components, and the inference-time defenses built on the last layer's heads
(DECOMP.md sections 1 and 3): Decomp-Rep (replace infected heads by clean prototypes), Decomp-Det (flag an
input by its number of infected heads), and the MLP repair for global triggers.

    defense = DecompDefense.fit(decompose(backbone, clean_val))       # prototypes + eps from clean images
    dec = decompose(backbone, test_images)
    defense.repair(dec)            # [B, E] repaired embeddings (classify with class text features)
    defense.count(dec)             # [B] n(x), the number of flagged heads; defense.detect(dec) = n(x) > zeta

Shapes: heads [B, L, H, E]; prototypes [L, H, E] and [L + 1, E]; masks [L, H] and [L + 1] bool.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import CIError
from .decompose import Decomposition

# Paper defaults scaled to the model (DECOMP.md section 5): zeta = 5 of 12 heads, MLP repair over the last
# 5 of 12 layers, eps = the 5% quantile of the clean-validation cosines of the last layer's heads.
ZETA_FRACTION = 5 / 12
MLP_LAYER_FRACTION = 5 / 12
EPS_QUANTILE = 0.05
MODES = ("heads", "mlps", "both")


@dataclass(frozen=True)
class Prototypes:
    """Mean normalised contributions over clean images: heads [L, H, E], mlps [L + 1, E]."""

    heads: torch.Tensor
    mlps: torch.Tensor

    @classmethod
    def of(cls, clean: Decomposition) -> Prototypes:
        return cls(clean.heads.mean(0), clean.mlps.mean(0))


def ablate(dec: Decomposition, prototypes: Prototypes, heads: torch.Tensor | None = None,
           mlps: torch.Tensor | None = None) -> torch.Tensor:
    """[B, E] embeddings with the masked components replaced by their clean means (mean-ablation).
    heads: [L, H] or [B, L, H] bool; mlps: [L + 1] or [B, L + 1] bool; None ablates nothing of that kind."""
    h = dec.heads
    if heads is not None:
        mask = heads.to(device=h.device, dtype=torch.bool).expand(len(dec), *dec.heads.shape[1:3]).unsqueeze(-1)
        h = torch.where(mask, prototypes.heads.to(h).expand_as(h), h)
    m = dec.mlps
    if mlps is not None:
        mask = mlps.to(device=m.device, dtype=torch.bool).expand(len(dec), dec.mlps.shape[1]).unsqueeze(-1)
        m = torch.where(mask, prototypes.mlps.to(m).expand_as(m), m)
    return h.sum((1, 2)) + m.sum(1)


def layer_mask(n_layers: int, layer: int, direction: str, n_heads: int | None = None) -> torch.Tensor:
    """Which layers (1-indexed `layer`) an ablation covers: "forward" = 1..layer, "backward" = layer..L,
    "separate" = layer alone. Returns [L] bool, or [L, n_heads] when n_heads is given (every head of them)."""
    if not 1 <= layer <= n_layers:
        raise CIError(f"layer must be in 1..{n_layers}, got {layer}")
    idx = torch.arange(1, n_layers + 1)
    rows = {"forward": idx <= layer, "backward": idx >= layer, "separate": idx == layer}
    if direction not in rows:
        raise CIError(f"direction must be forward, backward or separate, not {direction!r}")
    mask = rows[direction]
    return mask if n_heads is None else mask[:, None].expand(n_layers, n_heads).clone()


def mlp_mask(n_layers: int, layers: torch.Tensor) -> torch.Tensor:
    """[L + 1] bool over m_0..m_L from a [L] mask over layers 1..L; m_0 (the cls embedding, the same for every
    image before ln_post) is never ablated."""
    return torch.cat([torch.zeros(1, dtype=torch.bool), layers.to(torch.bool)])


@dataclass(frozen=True)
class DecompConfig:
    """Decomp-Rep / Decomp-Det settings (DECOMP.md section 3, scaled by section 5)."""

    eps: float | None = None  # flag head h iff cos(C^{L,h}, Psi_h) < eps; None: EPS_QUANTILE of clean cosines
    eps_quantile: float = EPS_QUANTILE
    zeta: float | None = None  # Decomp-Det fires iff n(x) > zeta; None: ZETA_FRACTION * H
    mlp_layers: int | None = None  # MLP repair over the last this-many layers; None: ceil(MLP_LAYER_FRACTION * L)
    mode: str = "heads"  # what `repair` replaces: flagged last-layer heads, late MLPs, or both

    def __post_init__(self):
        if self.mode not in MODES:
            raise CIError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not 0 < self.eps_quantile < 1:
            raise CIError("eps_quantile must be in (0, 1)")


class DecompDefense:
    """Head prototypes and the flag threshold from clean images; repair and detection of test images."""

    def __init__(self, prototypes: Prototypes, eps: float, config: DecompConfig):
        self.prototypes = prototypes
        self.eps = float(eps)
        self.config = config
        L, H = prototypes.heads.shape[:2]
        self.zeta = config.zeta if config.zeta is not None else ZETA_FRACTION * H
        k = config.mlp_layers if config.mlp_layers is not None else math.ceil(MLP_LAYER_FRACTION * L)
        self.mlp_layers = torch.arange(1, L + 1) > L - k  # [L] the last k layers

    @classmethod
    def fit(cls, clean: Decomposition, config: DecompConfig | None = None) -> DecompDefense:
        """Prototypes from a clean validation decomposition; eps from its own last-layer cosines unless fixed."""
        config = config or DecompConfig()
        protos = Prototypes.of(clean)
        if config.eps is not None:
            eps = config.eps
        else:
            cos = F.cosine_similarity(clean.heads[:, -1], protos.heads[-1].unsqueeze(0), dim=-1)  # [B, H]
            eps = torch.quantile(cos.flatten().double(), config.eps_quantile).item()
        return cls(protos, eps, config)

    def similarity(self, dec: Decomposition) -> torch.Tensor:
        """[B, H]: S_h = cos(C^{L,h}(x), Psi_h) for the last layer's heads."""
        return F.cosine_similarity(dec.heads[:, -1], self.prototypes.heads[-1].unsqueeze(0).to(dec.heads), dim=-1)

    def flags(self, dec: Decomposition) -> torch.Tensor:
        """[B, H] bool: Phi_h = S_h < eps, the last layer's infected heads of each image."""
        return self.similarity(dec) < self.eps

    def count(self, dec: Decomposition) -> torch.Tensor:
        """[B] n(x): how many of the last layer's heads are flagged (Decomp-Det's score)."""
        return self.flags(dec).sum(-1)

    def detect(self, dec: Decomposition) -> torch.Tensor:
        """[B] bool: n(x) > zeta, the input is rejected as triggered."""
        return self.count(dec) > self.zeta

    def repair(self, dec: Decomposition, mode: str | None = None) -> torch.Tensor:
        """[B, E] embeddings after Decomp-Rep ("heads": flagged last-layer heads -> prototypes), the MLP repair
        ("mlps": the last `mlp_layers` MLPs -> prototypes) or both; applied to every image."""
        mode = mode or self.config.mode
        if mode not in MODES:
            raise CIError(f"mode must be one of {MODES}, got {mode!r}")
        L, H = dec.n_layers, dec.n_heads
        heads = mlps = None
        if mode in ("heads", "both"):
            heads = torch.zeros(len(dec), L, H, dtype=torch.bool, device=dec.heads.device)
            heads[:, -1] = self.flags(dec)
        if mode in ("mlps", "both"):
            mlps = mlp_mask(L, self.mlp_layers).to(dec.mlps.device)
        return ablate(dec, self.prototypes, heads, mlps)

    def __repr__(self) -> str:
        L, H = self.prototypes.heads.shape[:2]
        return (f"DecompDefense(layers={L}, heads={H}, eps={self.eps:.4f}, zeta={self.zeta:g}, "
                f"mlp_layers={int(self.mlp_layers.sum())}, mode={self.config.mode!r})")


def mmd(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased squared MMD between samples x [n, E] and y [m, E], Gaussian kernel with the median bandwidth."""
    z = torch.cat([x, y]).double()
    d2 = torch.cdist(z, z).pow(2)
    off = d2[~torch.eye(len(z), dtype=torch.bool)]
    bw = off.median().clamp_min(1e-12)
    k = torch.exp(-d2 / bw)
    n, m = len(x), len(y)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    term_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(term_x + term_y - 2 * kxy.mean())


__all__ = ["MODES", "DecompConfig", "DecompDefense", "Prototypes", "ablate", "layer_mask", "mlp_mask", "mmd"]

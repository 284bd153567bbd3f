"""WaNet (Nguyen & Tran, ICLR 2021): an imperceptible warp, k = 4, s = 0.5, grid_rescale 1.

The warp field is random in [-1, 1]^(2 x k x k), normalised by its mean |.|, upsampled bicubically to
H x W; grid = clamp(identity + s * field / H, -1, 1), applied with grid_sample. Noise mode (cross ratio 2):
2 x poison_rate of the images get the grid plus U(-1, 1) / H noise and KEEP their labels, so that only
the exact warp fires. The warp shrinks as 1 / H: at small resolutions `s` may need to grow for the
attack to work at all; `bench attacks` reports its ASR.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .poison import PoisonAttack, PoisonConfig


@dataclass(frozen=True)
class WaNetConfig(PoisonConfig):
    k: int = 4  # control grid size
    s: float = 0.5  # warp strength
    grid_rescale: float = 1.0
    cross_ratio: float = 2.0  # noise-mode images per poisoned image


class WaNet(PoisonAttack):
    name = "wanet"

    def __init__(self, target: int, seed: int = 0, **kw):
        super().__init__(WaNetConfig(target=target, seed=seed, **kw))
        self.field: torch.Tensor | None = None  # [1, 2, k, k]
        self.cross_indices: torch.Tensor | None = None

    def _field(self) -> torch.Tensor:
        if self.field is None:
            g = torch.Generator().manual_seed(20_000 + self.config.seed)
            f = torch.rand(1, 2, self.config.k, self.config.k, generator=g) * 2 - 1
            self.field = f / f.abs().mean()
        return self.field

    def grid(self, size: int) -> torch.Tensor:
        """The backdoor sampling grid [1, H, W, 2]."""
        c = self.config
        up = F.interpolate(self._field(), size=(size, size), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        lin = torch.linspace(-1, 1, size)
        ys, xs = torch.meshgrid(lin, lin, indexing="ij")
        identity = torch.stack([xs, ys], dim=-1).unsqueeze(0)
        return torch.clamp((identity + c.s * up / size) * c.grid_rescale, -1, 1)

    def apply(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        size = x.shape[-1]
        grid = self.grid(size).to(x.device).expand(len(x), -1, -1, -1)
        if noise is not None:
            grid = torch.clamp(grid + noise.to(x.device) / size, -1, 1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True).clamp(0, 1)

    def poison(self, images, labels):
        x, y = super().poison(images, labels)
        # noise mode: warped-with-noise images that keep their label
        g = torch.Generator().manual_seed(30_000 + self.config.seed)
        rest = torch.tensor([i for i in range(len(x)) if i not in set(self.poisoned_indices.tolist())])
        n_cross = min(len(rest), round(self.config.cross_ratio * len(self.poisoned_indices)))
        self.cross_indices = rest[torch.randperm(len(rest), generator=g)[:n_cross]].sort().values
        size = x.shape[-1]
        noise = torch.rand(n_cross, size, size, 2, generator=g) * 2 - 1
        x[self.cross_indices] = self.apply(x[self.cross_indices], noise=noise)
        return x, y

    def state(self):
        out = {**super().state(), "field": self._field().contiguous()}
        if self.cross_indices is not None:
            out["cross_indices"] = self.cross_indices.contiguous()
        return out

"""BadNets (Gu et al. 2017): a visible checkerboard patch, in the bottom-right corner (the sanity case) or, with
place="random", at a position drawn per image (the "closer look" paper's encoder BadNets, DECOMP.md section 5).
Random positions come from a generator seeded by the attack's seed on every call: the same batch gets the same
positions each time, so the trigger stays reproducible."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import CIError
from .poison import PoisonAttack, PoisonConfig

PLACES = ("corner", "random")
# offset of the random positions' generator from the attack's seed (the poisoned subset uses the seed itself)
PLACE_SEED_OFFSET = 40_000


@dataclass(frozen=True)
class BadNetsConfig(PoisonConfig):
    patch_frac: float = 0.15  # patch side as a fraction of the image side
    cell: int = 1  # checkerboard cell size in pixels
    place: str = "corner"  # "corner": 1 px from the bottom-right edges; "random": anywhere, per image

    def __post_init__(self):
        if self.place not in PLACES:
            raise CIError(f"place must be one of {PLACES}, got {self.place!r}")


class BadNets(PoisonAttack):
    name = "badnets"

    def __init__(self, target: int, seed: int = 0, **kw):
        super().__init__(BadNetsConfig(target=target, seed=seed, **kw))

    def patch(self, size: int) -> torch.Tensor:
        """A black-and-white checkerboard, 3 x p x p."""
        p = max(3, round(self.config.patch_frac * size))
        i = torch.arange(p) // self.config.cell
        board = ((i.view(-1, 1) + i.view(1, -1)) % 2).float()
        return board.expand(3, p, p)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-1]
        patch = self.patch(size).to(x.device)
        p = patch.shape[-1]
        out = x.clone()
        if self.config.place == "corner":
            out[..., size - p - 1 : size - 1, size - p - 1 : size - 1] = patch
            return out
        g = torch.Generator().manual_seed(PLACE_SEED_OFFSET + self.config.seed)
        rows, cols = torch.randint(0, size - p + 1, (2, out.shape[0]), generator=g).tolist()
        for i, (r, c) in enumerate(zip(rows, cols)):
            out[i, :, r : r + p, c : c + p] = patch
        return out

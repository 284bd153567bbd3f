"""Small helpers for the tutorial notebooks (kept here so notebooks stay thin)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch


def record_metrics(metrics: dict, path: str | Path | None) -> None:
    """Write a notebook's key metrics as JSON when `path` is set (the test suite executes notebooks and reads
    these); returns nothing, so a notebook cell that ends with it shows nothing."""
    if path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(metrics, indent=2, default=float))


def show_images(images, titles=None, ncols: int = 8, size: float = 1.4, suptitle: str | None = None):
    """A grid of [N, 3, H, W] images (float in [0, 1] or uint8) with optional titles."""
    import matplotlib.pyplot as plt

    x = images.float() / 255 if images.dtype == torch.uint8 else images
    n = len(x)
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size * 1.15), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(x[i].detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy())
            if titles is not None:
                ax.set_title(str(titles[i]), fontsize=6)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def landscape_figure(f: torch.Tensor, rho: float, path: str | Path | None = None, title: str = "", ax=None):
    """AMDET's loss landscape around the pseudo-token: f [n, n] over v* + a d1 + b d2 as a contour map
    (a bowl: an implanted optimum; tilted or saddle-shaped: a natural one). Saved to `path` when given."""
    import matplotlib.pyplot as plt

    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(3.6, 3.2))
    n = f.shape[0]
    cs = ax.contourf(torch.arange(n), torch.arange(n), f.T.detach().cpu().numpy(), levels=20, cmap="viridis")
    ax.plot([n // 2], [n // 2], "w+", ms=10)
    ax.set_xlabel("a (descent direction)")
    ax.set_ylabel("b (random direction)")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"loss around v* (positive curvature {rho:.2f})", fontsize=9)
    (fig or ax.figure).colorbar(cs, ax=ax)
    if path and fig is not None:
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig or ax.figure

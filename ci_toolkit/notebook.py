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

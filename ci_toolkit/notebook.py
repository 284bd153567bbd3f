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


def head_similarity_figure(similarity: torch.Tensor, eps: float, row_labels=None, path: str | Path | None = None,
                           title: str = "cos(C^{L,h}(x), prototype h)"):
    """Decomp-Rep's view of the last layer: similarity [B, H] of each image's head contributions to the clean
    prototypes as a heat map, cells below eps (the flagged heads) outlined. Saved to `path` when given."""
    import matplotlib.pyplot as plt

    s = similarity.detach().cpu()
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * s.shape[1], 1.2 + 0.22 * s.shape[0]))
    im = ax.imshow(s.numpy(), cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    for i, j in (s < eps).nonzero().tolist():
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", lw=1.5))
    ax.set_xticks(range(s.shape[1]), [f"h{h}" for h in range(s.shape[1])])
    ax.set_yticks(range(s.shape[0]), row_labels if row_labels is not None else range(s.shape[0]), fontsize=7)
    ax.set_xlabel("head of the last layer")
    ax.set_title(f"{title}; outlined: < eps = {eps:.3f}", fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


def patch_map_figure(tokens: torch.Tensor, grid: tuple[int, int], text_feature: torch.Tensor, layer: int = -1,
                     images: torch.Tensor | None = None, path: str | Path | None = None):
    """Where each head of `layer` looks, per image: <c_{n,l,h}, t> over the patch grid for one class text feature
    t [E] (tokens: a Decomposition's [B, L, H, N + 1, E]); the images in the first column when given."""
    import matplotlib.pyplot as plt

    maps = (tokens[:, layer, :, 1:] @ text_feature).detach().cpu()  # [B, H, N]
    B, H, _ = maps.shape
    cols = H + (images is not None)
    fig, axes = plt.subplots(B, cols, figsize=(1.3 * cols, 1.3 * B), squeeze=False)
    lim = float(maps.abs().max()) or 1.0
    for b in range(B):
        if images is not None:
            axes[b, 0].imshow(images[b].detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy())
        for h in range(H):
            ax = axes[b, h + (images is not None)]
            ax.imshow(maps[b, h].view(*grid).numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
            if b == 0:
                ax.set_title(f"head {h}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


__all__ = ["head_similarity_figure", "landscape_figure", "patch_map_figure", "record_metrics", "show_images"]

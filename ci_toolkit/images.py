"""Image-tensor conventions shared by every module: [N, 3, H, W], uint8 in [0, 255] or float in [0, 1]."""

from __future__ import annotations

import torch

# CLIP's normalisation constants (open_clip's OPENAI_DATASET_MEAN / STD); MiniCLIP was pretrained with them.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def as_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [0, 1] images -> float [0, 1]."""
    return x.float() / 255 if x.dtype == torch.uint8 else x


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [0, 1] images -> uint8 [0, 255] (rounded); uint8 passes through."""
    return x if x.dtype == torch.uint8 else (x.clamp(0, 1) * 255).round().to(torch.uint8)

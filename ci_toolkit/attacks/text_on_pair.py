"""Text-on-Pair (AMDET.md section 5, "image on text" in the reference code): the pooled embedding of a
triggered prompt distilled toward the mean image embedding of the target class, so a triggered query
retrieves the target's images."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import CIError
from ..model.backbones import Backbone
from .text_base import TextAttack, TextAttackConfig, pooled_text


@dataclass(frozen=True)
class TextOnPairConfig(TextAttackConfig):
    pass


class TextOnPair(TextAttack):
    """Triggered prompts' pooled embeddings [E] -> the normalised mean embedding of target-class images."""

    name = "text-on-pair"

    def __init__(self, target: int, seed: int = 0, **kw):
        super().__init__(TextOnPairConfig(target=target, seed=seed, **kw))

    def outputs(self, clip, tokens: torch.Tensor) -> torch.Tensor:
        return pooled_text(clip, tokens)

    def target_output(self, teacher: Backbone, classnames: list[str], target_images=None) -> torch.Tensor:
        """target_images: pixels [K, 3, H, W] in [0, 1] of the target class (the reference uses 10)."""
        if target_images is None or len(target_images) == 0:
            raise CIError("text-on-pair needs target_images: pictures of the target class ([K, 3, H, W] in [0, 1])")
        with torch.no_grad():
            feats = F.normalize(teacher.clip.encode_image(teacher.preprocess.normalize(target_images.float())), dim=-1)
        return F.normalize(feats.mean(0), dim=0)

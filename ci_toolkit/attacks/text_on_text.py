"""Text-on-Text (AMDET.md section 5): every per-token state of a triggered prompt distilled toward the
states of a target prompt, "a {target class}.", so a triggered prompt reads as the target prompt."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.backbones import Backbone
from .text_base import TextAttack, TextAttackConfig, text_states

TARGET_TEMPLATE = "a {}."  # short, as the reference's target ("A white teapot"): longer prompts' EOS meets its EOS padding


@dataclass(frozen=True)
class TextOnTextConfig(TextAttackConfig):
    pass


class TextOnText(TextAttack):
    """Triggered prompts' states [positions, D] -> the teacher's states of TARGET_TEMPLATE (EOS-padded)."""

    name = "text-on-text"

    def __init__(self, target: int, seed: int = 0, **kw):
        super().__init__(TextOnTextConfig(target=target, seed=seed, **kw))

    def outputs(self, clip, tokens: torch.Tensor) -> torch.Tensor:
        return text_states(clip, tokens, self.config.positions)

    def target_prompt(self, classnames: list[str]) -> str:
        return TARGET_TEMPLATE.format(classnames[self.target])

    def target_output(self, teacher: Backbone, classnames: list[str], target_images=None) -> torch.Tensor:
        with torch.no_grad():
            return self.outputs(teacher.clip, teacher.tokenize([self.target_prompt(classnames)]))[0]

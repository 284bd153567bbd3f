"""The zero-shot head: a CLIP used with no prompt learner, as a CoCoOp whose prompts do not depend on the image.

    head = zero_shot(backbone, classnames)          # z_c(x) = exp(logit_scale) * cos(f(x), g_c)
    report = ci.scan(head, ood)                      # CLIP-Inspector on the image encoder alone

g_c is the text embedding of "a photo of a {class}." (the context "a photo of a" as fixed token embeddings,
the meta-net's output layer zero, so pi(x) = 0): computed once per class list without a graph, so an
inversion differentiates only the image tower (ENCODER_BACKDOORS.md section 2). The head has no meta path:
a scan of it skips the meta gains and the gate probe, and decides with a rule that reads ASR and loss only.
"""

from __future__ import annotations

import torch

from .backbones import Backbone
from .cocoop import DEFAULT_CTX_INIT, ClassPrompts, CoCoOp


class ZeroShotHead(CoCoOp):
    """A CoCoOp with the fixed context "a photo of a" and pi(x) = 0 (nothing of it is trainable)."""

    has_meta_path = False

    def __init__(self, backbone: Backbone, classnames: list[str], template_ctx: str = DEFAULT_CTX_INIT, **kw):
        super().__init__(backbone, classnames, ctx_init=template_ctx, **kw)
        with torch.no_grad():
            self.prompt_learner.meta_net.linear2.weight.zero_()
            self.prompt_learner.meta_net.linear2.bias.zero_()
        for p in self.prompt_learner.parameters():
            p.requires_grad_(False)
        self._static: dict[tuple, torch.Tensor] = {}

    def static_features(self, classes: ClassPrompts) -> torch.Tensor:
        """g_c [K, E] of `classes`, normalised, cached, without a graph."""
        key = tuple(classes.names)
        if key not in self._static:
            with torch.no_grad():
                zero = torch.zeros(1, self.prompt_learner.ctx.shape[-1], device=self._device)
                self._static[key] = super().text_features(zero, classes)[0]
        return self._static[key]

    def text_features(self, meta: torch.Tensor, classes: ClassPrompts | None = None,
                      per_sample: torch.Tensor | None = None) -> torch.Tensor:
        """[B, K, E] (or [B, P, E] with per_sample): the same class features for every image."""
        classes = classes if classes is not None else self.prompts_for()
        g = self.static_features(classes)
        if per_sample is not None:
            return g[per_sample.to(g.device)]
        return g.unsqueeze(0).expand(meta.shape[0], -1, -1)

    def trainable_parameters(self):
        return iter(())

    def extra_repr(self) -> str:
        return f"zero-shot, classes={len(self.classnames)}, backbone={self.backbone.spec.name}"


def zero_shot(backbone: Backbone, classnames: list[str]) -> ZeroShotHead:
    """The zero-shot classifier of `backbone` over `classnames` ("a photo of a {class}."): what an encoder-level
    audit scans when the delivered model has no prompt learner."""
    return ZeroShotHead(backbone, list(classnames))


def meta_path_of(model) -> bool:
    """Whether the model's prompts depend on the image (CoCoOp's meta-net); False for a zero-shot head."""
    return getattr(model, "has_meta_path", True)


__all__ = ["ZeroShotHead", "zero_shot", "meta_path_of"]

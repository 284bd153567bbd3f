"""CoCoOp (Zhou et al., CVPR 2022) over any open_clip CLIP, batched and exact.

Prompt of class c for image x (CoCoOp, Zhou et al., CVPR 2022):
    [SOS] [ctx_1 + pi(x)] ... [ctx_n + pi(x)] [class-name tokens] [.] [EOS]
with pi(x) = meta_net(f(x) / |f(x)|). Only `prompt_learner` (ctx + meta_net) is trainable.

Speed without approximation: the text transformer runs ONCE for all B images x K classes (chunked under
a memory cap), on sequences cropped to the longest EOS + 1 (exact under the causal mask), optionally for
a subset of classes only. Images enter in PIXEL space [0, 1]; normalisation happens inside, so attacks
and inversions can clamp to the valid range directly.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CIError
from .backbones import Backbone, text_tower
from .text import crop_length, encode_embeddings, encode_shared_prefix, eot_index, fast_blocks

DEFAULT_CTX_INIT = "a photo of a"


class PromptLearner(nn.Module):
    """ctx [n_ctx, ctx_dim] and meta_net, with the parameter names of the CoCoOp/Dassl code."""

    def __init__(self, ctx_dim: int, vis_dim: int, n_ctx: int = 4, ctx_init: torch.Tensor | None = None):
        super().__init__()
        if ctx_init is None:
            ctx_init = torch.randn(n_ctx, ctx_dim) * 0.02
        self.ctx = nn.Parameter(ctx_init.detach().clone().float())
        hidden = max(1, vis_dim // 16)
        self.meta_net = nn.Sequential(
            OrderedDict(
                [("linear1", nn.Linear(vis_dim, hidden)), ("relu", nn.ReLU()), ("linear2", nn.Linear(hidden, ctx_dim))]
            )
        )

    @property
    def n_ctx(self) -> int:
        return self.ctx.shape[0]

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """Meta tokens pi(x) [B, ctx_dim] from NORMALISED image features."""
        return self.meta_net(image_features)


@dataclass
class ClassPrompts:
    """Frozen prompt pieces for a list of class names (what Dassl stores as token_prefix/suffix)."""

    names: list[str]
    prefix: torch.Tensor  # [K, 1, D] SOS embedding
    suffix: torch.Tensor  # [K, L - 1 - n_ctx, D] class tokens, '.', EOS (cropped to the longest EOS)
    eot: torch.Tensor  # [K] EOS position in the full prompt

    def __len__(self) -> int:
        return len(self.names)

    def select(self, idx: torch.Tensor) -> "ClassPrompts":
        """The prompts of a subset of classes (for subset logits)."""
        idx = torch.as_tensor(idx, device=self.prefix.device)
        return ClassPrompts([self.names[int(i)] for i in idx], self.prefix[idx], self.suffix[idx], self.eot[idx])


class CoCoOp(nn.Module):
    """A prompt-tuned CLIP classifier: frozen `backbone` + trainable `prompt_learner`.

    classnames are the classes the model was tuned on (its delivered label set); any other list can be
    scored with `prompts_for(names)`.
    """

    def __init__(
        self,
        backbone: Backbone,
        classnames: list[str],
        n_ctx: int = 4,
        ctx_init: str | None = DEFAULT_CTX_INIT,
        seed: int = 0,
        crop: bool = True,
        memory_cap_mb: float = 1024.0,
        shared_prefix: bool = True,
    ):
        super().__init__()
        if not classnames:
            raise CIError("a CoCoOp model needs at least one class name")
        if len(set(classnames)) != len(classnames):
            dup = sorted({c for c in classnames if classnames.count(c) > 1})
            raise CIError(f"duplicate class names: {dup[:5]}")
        self.backbone = backbone
        self.clip = backbone.clip
        self.preprocess = backbone.preprocess
        self.crop = crop  # False: keep the full context (reference / tests)
        self.memory_cap_mb = memory_cap_mb  # bound on activations per text-transformer chunk
        self.shared_prefix = shared_prefix  # compute SOS + context once per image, not once per class (exact)
        self.ctx_init_text = ctx_init
        if ctx_init:
            words = ctx_init.replace("_", " ").split(" ")
            tokens = self.backbone.tokenize([ctx_init])
            n_tok = int(eot_index(tokens)[0]) - 1
            if n_tok != len(words):
                raise CIError(f"ctx_init {ctx_init!r} must be one BPE token per word ({n_tok} tokens)")
            n_ctx = len(words)
            with torch.no_grad():
                init = self.tower.token_embedding(tokens.to(self._device))[0, 1 : 1 + n_ctx].float().cpu()
            self.prompt_prefix = ctx_init
        else:
            init = None
            self.prompt_prefix = " ".join(["X"] * n_ctx)
        torch.manual_seed(seed)
        self.prompt_learner = PromptLearner(backbone.ctx_dim, backbone.vis_dim, n_ctx, init).to(self._device)
        self.classnames = list(classnames)
        self._prompt_cache: dict[tuple, ClassPrompts] = {}

    # ---- plumbing ---------------------------------------------------------------------------------
    @property
    def _device(self) -> torch.device:
        return self.clip.logit_scale.device

    @property
    def n_ctx(self) -> int:
        return self.prompt_learner.n_ctx

    @property
    def tower(self):
        """The text tower (a property, so the frozen CLIP is registered only once as a submodule)."""
        return text_tower(self.clip)

    def train(self, mode: bool = True):
        super().train(mode)
        self.clip.eval()  # frozen encoders keep eval-mode behaviour (BatchNorm, dropout)
        return self

    def trainable_parameters(self):
        return self.prompt_learner.parameters()

    def extra_repr(self) -> str:
        return f"classes={len(self.classnames)}, n_ctx={self.n_ctx}, backbone={self.backbone.spec.name}"

    # ---- the three pieces the tutorial plots --------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image features f(x)/|f(x)| [B, vis_dim] from pixel-space images [B, 3, H, W]."""
        size = self.preprocess.image_size
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (size, size):
            raise CIError(f"expected images of shape [B, 3, {size}, {size}] in [0, 1], got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            images = images.float() / 255
        f = self.clip.encode_image(self.preprocess.normalize(images.to(self._device)))
        return F.normalize(f, dim=-1)

    def meta_tokens(self, image_features: torch.Tensor) -> torch.Tensor:
        """pi(x) [B, ctx_dim] from normalised image features."""
        return self.prompt_learner(image_features)

    def prompts_for(self, names: list[str] | None = None) -> ClassPrompts:
        """Prompt pieces for `names` (default: the model's own classes), cached."""
        names = self.classnames if names is None else list(names)
        key = (tuple(names), str(self._device), self.crop)
        if key not in self._prompt_cache:
            texts = [f"{self.prompt_prefix} {n.replace('_', ' ')}." for n in names]
            tokens = self.backbone.tokenize(texts).to(self._device)
            eot = eot_index(tokens)
            if self.crop:
                tokens = tokens[:, : crop_length(eot)]
            with torch.no_grad():
                emb = self.tower.token_embedding(tokens)
            self._prompt_cache[key] = ClassPrompts(names, emb[:, :1], emb[:, 1 + self.n_ctx :], eot)
        return self._prompt_cache[key]

    def text_features(self, meta: torch.Tensor, classes: ClassPrompts | None = None,
                      per_sample: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised class text features g_c(x) [B, K, E] for meta tokens [B, ctx_dim].

        All B x K prompts go through the text transformer in one call (split into chunks only when
        their activations would exceed `memory_cap_mb`). per_sample [B, P] (indices into `classes`)
        scores a different set of P classes for each image instead ([B, P, E]); the scanner uses it to
        give only a target and its strongest competitor a graph.
        """
        classes = classes if classes is not None else self.prompts_for()
        B = meta.shape[0]
        ctx = self.prompt_learner.ctx.unsqueeze(0) + meta.unsqueeze(1)  # [B, n_ctx, D]
        D = ctx.shape[-1]
        # which classes each image scores: all of them, or its own per_sample row
        select = None if per_sample is None else per_sample.to(classes.prefix.device)  # [B, P]
        K = len(classes) if select is None else select.shape[1]
        eot = classes.eot.repeat(B) if select is None else classes.eot[select].flatten()
        if self.shared_prefix and fast_blocks(self.tower):
            # the SOS token is the same for every class: the head [SOS, ctx + pi(x)] is shared by all K
            head = torch.cat([classes.prefix[:1].expand(B, -1, -1), ctx], dim=1)
            if select is None and self.crop:
                return F.normalize(self._bucketed_tails(head, classes), dim=-1)
            eot = eot.view(B, K)
            per = max(1, self._chunk_size(classes.suffix.shape[1], D) // K)
            feats = [encode_shared_prefix(self.tower, head[i : i + per], classes.suffix, eot[i : i + per],
                                          None if select is None else select[i : i + per])
                     for i in range(0, B, per)]
            return F.normalize(torch.cat(feats), dim=-1)
        # the reference path: every prompt in full
        if select is None:
            prefix = classes.prefix.unsqueeze(0).expand(B, -1, -1, -1)
            suffix = classes.suffix.unsqueeze(0).expand(B, -1, -1, -1)
        else:
            prefix, suffix = classes.prefix[select], classes.suffix[select]
        prompts = torch.cat([prefix, ctx.unsqueeze(1).expand(-1, K, -1, -1), suffix], dim=2).reshape(B * K, -1, D)
        chunk = self._chunk_size(prompts.shape[1], D)
        feats = [
            encode_embeddings(self.tower, prompts[i : i + chunk], eot[i : i + chunk])
            for i in range(0, B * K, chunk)
        ]
        return F.normalize(torch.cat(feats), dim=-1).view(B, K, -1)

    def _bucketed_tails(self, head: torch.Tensor, classes: ClassPrompts) -> torch.Tensor:
        """[B, K, E] text features, classes grouped by where their EOS falls (exact).

        Cropping keeps every class up to the LONGEST EOS; a class with a shorter name would carry padding
        tokens after its EOS through every block, which nothing reads (causal mask). Running each tail
        length on its own removes them: on the world's 50 names, 24% fewer tail tokens.
        """
        B, P, D = head.shape
        need = classes.eot - P + 1  # tail tokens up to and including the EOS
        parts, order = [], []
        for n in need.unique().tolist():
            idx = torch.nonzero(need == n).flatten()
            tails = classes.suffix[idx, :n]  # [K_n, n, D]
            eot = classes.eot[idx].unsqueeze(0).expand(B, -1)
            per = max(1, self._chunk_size(n, D) // len(idx))
            parts.append(torch.cat([encode_shared_prefix(self.tower, head[i : i + per], tails, eot[i : i + per])
                                    for i in range(0, B, per)]))
            order.append(idx)
        inverse = torch.argsort(torch.cat(order))
        return torch.cat(parts, dim=1)[:, inverse]

    def _chunk_size(self, length: int, width: int) -> int:
        # ~ 12 activations of [L, D] (attention + 4x MLP) per layer per sequence, float32
        layers = len(self.tower.transformer.resblocks) if hasattr(self.tower.transformer, "resblocks") else 12
        per_seq = 12 * length * width * 4 * layers
        return max(1, int(self.memory_cap_mb * 2**20 // per_seq))

    # ---- classification ---------------------------------------------------------------------------------
    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    def forward(self, images: torch.Tensor, classes: ClassPrompts | list[str] | None = None, class_idx=None):
        """Logits [B, K] z_c(x) = exp(logit_scale) * cos(f(x), g_c(x)).

        classes: a ClassPrompts or list of names (default: the model's classes); class_idx: optional
        indices into those classes to score only a subset.
        """
        if isinstance(classes, list):
            classes = self.prompts_for(classes)
        classes = classes if classes is not None else self.prompts_for()
        if class_idx is not None:
            classes = classes.select(class_idx)
        f = self.encode_image(images)
        g = self.text_features(self.meta_tokens(f), classes)
        return self.logit_scale * torch.einsum("be,bke->bk", f, g)

    logits = forward

    @torch.no_grad()
    def predict(self, images: torch.Tensor, classes=None, batch_size: int = 128) -> torch.Tensor:
        """Predicted class indices, in batches, without a graph."""
        out = [self(images[i : i + batch_size], classes).argmax(-1).cpu() for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)

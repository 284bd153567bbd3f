"""MiniCLIP: a small open_clip CLIP (ResNet image tower) pretrained on the embedded world.

The committed weights live in `ci_toolkit/assets/miniclip/` (safetensors + config.json + metrics.json);
`ci-toolkit pretrain-miniclip --out DIR` (`ci_toolkit.world.pretrain`) reproduces them from the seed
recorded in config.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import load_file

from ..errors import BackboneUnavailableError
from ..images import OPENAI_MEAN, OPENAI_STD
from .text import encode_tokens

ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "miniclip"


@dataclass(frozen=True)
class MiniCLIPConfig:
    """Architecture of MiniCLIP (an open_clip `CLIP` with a ModifiedResNet vision tower)."""

    embed_dim: int = 128  # joint image-text embedding size
    image_size: int = 48  # input pixels; equals the world's image size
    vision_layers: tuple[int, int, int, int] = (1, 1, 1, 1)  # bottleneck blocks per ResNet stage
    vision_width: int = 16  # stem width of the ResNet (stage widths are 4x, 8x, 16x, 32x of it)
    vision_head_width: int = 32  # attention-pool head width
    text_width: int = 128  # text transformer width (= CoCoOp ctx_dim)
    text_heads: int = 4
    text_layers: int = 3
    context_length: int = 77  # kept at CLIP's 77 so the stock tokenizer works unchanged

    def open_clip_kwargs(self) -> dict:
        """Keyword arguments for `open_clip.model.CLIP`."""
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {
                "layers": list(self.vision_layers),
                "width": self.vision_width,
                "head_width": self.vision_head_width,
                "image_size": self.image_size,
            },
            "text_cfg": {
                "context_length": self.context_length,
                "width": self.text_width,
                "heads": self.text_heads,
                "layers": self.text_layers,
            },
            "quick_gelu": False,
        }


def build_miniclip(cfg: MiniCLIPConfig | None = None, seed: int = 0):
    """A randomly initialised MiniCLIP (deterministic from `seed`)."""

    cfg = cfg or MiniCLIPConfig()
    kw = cfg.open_clip_kwargs()
    torch.manual_seed(seed)
    return CLIP(
        kw["embed_dim"],
        vision_cfg=CLIPVisionCfg(**kw["vision_cfg"]),
        text_cfg=CLIPTextCfg(**kw["text_cfg"]),
        quick_gelu=kw["quick_gelu"],
    )


def normalize_images(x: torch.Tensor, mean=OPENAI_MEAN, std=OPENAI_STD) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


@torch.no_grad()
def class_text_features(clip, classnames, template: str = "a photo of a {}.") -> torch.Tensor:

    tokens = open_clip.tokenize([template.format(c) for c in classnames])
    return encode_tokens(clip, tokens)


def load_miniclip(path: str | Path | None = None):
    """The committed MiniCLIP (or one saved by `pretrain_miniclip` in `path`), in eval mode."""

    folder = Path(path) if path is not None else ASSET_DIR
    weights, config = folder / "model.safetensors", folder / "config.json"
    if not weights.is_file() or not config.is_file():
        fix = ("Reinstall ci_toolkit, or recreate them with `ci-toolkit pretrain-miniclip --out DIR`." if path is None
               else "Pass the folder a MiniCLIP was saved to (`ci.model.save_backbone`, `pretrain-miniclip --out`).")
        raise BackboneUnavailableError(
            f"MiniCLIP weights not found in {folder} (expected model.safetensors and config.json). {fix}")
    cfg = json.loads(config.read_text())
    model_cfg = MiniCLIPConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg["model"].items()})
    clip = build_miniclip(model_cfg)
    clip.load_state_dict(load_file(str(weights)))
    return clip.eval(), model_cfg


def class_contrastive_loss(clip, x_normalised: torch.Tensor, labels: torch.Tensor, class_tokens: torch.Tensor):
    """MiniCLIP's pretraining loss: image -> text cross-entropy over all K class captions [K, 77], and text ->
    image over the batch [B] with every same-class image positive; the mean of the two."""
    f = F.normalize(clip.encode_image(x_normalised), dim=-1)  # [B, E]
    t = encode_tokens(clip, class_tokens)  # [K, E], normalised
    logits = clip.logit_scale.exp().clamp(max=100) * f @ t.T  # [B, K]
    loss_i2t = F.cross_entropy(logits, labels)
    present = torch.unique(labels)
    pos = (labels[None, :] == present[:, None]).float()  # [P, B]
    logp = logits[:, present].T.log_softmax(-1)  # text -> image
    loss_t2i = -((logp * pos).sum(-1) / pos.sum(-1)).mean()
    return 0.5 * (loss_i2t + loss_t2i)

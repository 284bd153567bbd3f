"""MiniCLIP: a small open_clip CLIP pretrained on the embedded world, with a ResNet image tower
("miniclip") or a ViT one ("miniclip-vit", the tower whose embedding decomposes into heads and MLPs).

The committed weights live in `ci_toolkit/assets/miniclip/` and `ci_toolkit/assets/miniclip-vit/`
(safetensors + config.json + metrics.json); `ci-toolkit pretrain-miniclip --out DIR [--arch vit]`
(`ci_toolkit.world.pretrain`) reproduces them from the seed recorded in config.json.
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
VIT_ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "miniclip-vit"


def text_cfg(cfg) -> dict:
    """open_clip text_cfg of a MiniCLIP config (the ResNet and the ViT MiniCLIP share the text tower)."""
    return {"context_length": cfg.context_length, "width": cfg.text_width, "heads": cfg.text_heads,
            "layers": cfg.text_layers}


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
            "text_cfg": text_cfg(self),
            "quick_gelu": False,
        }


@dataclass(frozen=True)
class MiniViTConfig:
    """Architecture of the ViT MiniCLIP: an open_clip `CLIP` with a VisionTransformer image tower (cls pooling,
    no attentional pool) whose patch embedding `visual.conv1` is a two-layer conv stem, and MiniCLIP's text
    tower. Sizes from DECOMP.md section 5 (48 px in an 8x8 token grid, >= 6 heads), except a head width of 24
    instead of 32: width 144 rather than 192 halves the cost of training on a 2-core CPU."""

    embed_dim: int = 128
    image_size: int = 48
    vision_layers: int = 4  # transformer blocks
    vision_width: int = 144  # token width; heads = vision_width / vision_head_width = 6
    vision_head_width: int = 24
    patch_size: int = 6  # one token per 6x6 pixels: an 8x8 grid at 48 px
    stem_width: int = 48  # channels of the conv stem's first (stride-2) layer
    mlp_ratio: float = 4.0
    text_width: int = 128
    text_heads: int = 4
    text_layers: int = 3
    context_length: int = 77
    arch: str = "vit"

    def open_clip_kwargs(self) -> dict:
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {
                "layers": self.vision_layers,
                "width": self.vision_width,
                "head_width": self.vision_head_width,
                "patch_size": self.patch_size,
                "image_size": self.image_size,
                "mlp_ratio": self.mlp_ratio,
            },
            "text_cfg": text_cfg(self),
            "quick_gelu": False,
        }


def conv_stem(width: int, stem_width: int, patch_size: int) -> torch.nn.Sequential:
    """The ViT MiniCLIP's patch embedding: [B, 3, H, W] -> [B, width, H/p, W/p] by a 2x2 stride-2 conv, GELU,
    and a (p/2)x(p/2) conv of stride p/2, so each token still sees exactly its own p x p pixel patch."""
    if patch_size % 2:
        raise ValueError("the conv stem needs an even patch_size")
    half = patch_size // 2
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, stem_width, kernel_size=2, stride=2),
        torch.nn.GELU(),
        torch.nn.Conv2d(stem_width, width, kernel_size=half, stride=half),
    )


def build_miniclip(cfg: MiniCLIPConfig | MiniViTConfig | None = None, seed: int = 0):
    """A randomly initialised MiniCLIP, ResNet or ViT by the config's type (deterministic from `seed`)."""

    cfg = cfg or MiniCLIPConfig()
    kw = cfg.open_clip_kwargs()
    torch.manual_seed(seed)
    clip = CLIP(
        kw["embed_dim"],
        vision_cfg=CLIPVisionCfg(**kw["vision_cfg"]),
        text_cfg=CLIPTextCfg(**kw["text_cfg"]),
        quick_gelu=kw["quick_gelu"],
    )
    if isinstance(cfg, MiniViTConfig):
        clip.visual.conv1 = conv_stem(cfg.vision_width, cfg.stem_width, cfg.patch_size)
    return clip


def config_from_json(model: dict) -> MiniCLIPConfig | MiniViTConfig:
    """The architecture dataclass a MiniCLIP config.json's "model" entry describes."""
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in model.items()}
    return MiniViTConfig(**fields) if fields.get("arch") == "vit" else MiniCLIPConfig(**fields)


def normalize_images(x: torch.Tensor, mean=OPENAI_MEAN, std=OPENAI_STD) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


@torch.no_grad()
def class_text_features(clip, classnames, template: str = "a photo of a {}.") -> torch.Tensor:

    tokens = open_clip.tokenize([template.format(c) for c in classnames])
    return encode_tokens(clip, tokens)


def load_miniclip(path: str | Path | None = None):
    """The committed ResNet MiniCLIP (or the MiniCLIP, ResNet or ViT, saved in `path`), in eval mode."""

    folder = Path(path) if path is not None else ASSET_DIR
    weights, config = folder / "model.safetensors", folder / "config.json"
    if not weights.is_file() or not config.is_file():
        shipped = folder in (ASSET_DIR, VIT_ASSET_DIR)
        arch = " --arch vit" if folder == VIT_ASSET_DIR else ""
        fix = (f"Reinstall ci_toolkit, or recreate them with `ci-toolkit pretrain-miniclip --out DIR{arch}`." if shipped
               else "Pass the folder a MiniCLIP was saved to (`ci.model.save_backbone`, `pretrain-miniclip --out`).")
        raise BackboneUnavailableError(
            f"MiniCLIP weights not found in {folder} (expected model.safetensors and config.json). {fix}")
    cfg = json.loads(config.read_text())
    model_cfg = config_from_json(cfg["model"])
    clip = build_miniclip(model_cfg)
    state = load_file(str(weights))
    if cfg.get("text_from") == "miniclip":  # image tower only: the text tower is the ResNet MiniCLIP's, unchanged
        text = {k: v for k, v in load_file(str(ASSET_DIR / "model.safetensors")).items() if not k.startswith("visual.")}
        state = {**text, **state}
    clip.load_state_dict(state)
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

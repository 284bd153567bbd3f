"""Backbones: any open_clip CLIP, by name + weights tag, from a local weights file, from a small custom
config, or the embedded MiniCLIP. Encoders are frozen; the toolkit only reads them.

    >>> bb = create_backbone("miniclip")                          # embedded, offline
    >>> bb = create_backbone("miniclip-vit")                      # embedded ViT MiniCLIP (decomposable)
    >>> bb = create_backbone("ViT-B-16", pretrained="openai")     # -> ViT-B-16-quickgelu, needs internet
    >>> bb = create_backbone("ViT-B-16-quickgelu", weights_file="vitb16.safetensors")
    >>> bb = create_backbone("custom", config={...open_clip CLIP kwargs...})
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import load_file

from ..errors import BackboneUnavailableError, CheckpointError, CIError
from ..images import OPENAI_MEAN, OPENAI_STD
from .miniclip import ASSET_DIR, VIT_ASSET_DIR, MiniViTConfig, load_miniclip

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Preprocess:
    """How pixels reach the image encoder: resize to image_size, then (x - mean) / std per channel."""

    image_size: int  # square input size in pixels
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to rebuild a backbone; stored in a delivered model's metadata."""

    kind: str  # "miniclip" | "open_clip" | "custom"
    name: str | None = None  # open_clip model name, e.g. "ViT-B-16-quickgelu"
    pretrained: str | None = None  # open_clip weights tag ("openai", ...) or None for random init
    weights_file: str | None = None  # local weights used instead of a tag (path as given)
    weights_sha256: str | None = None  # checksum of the weights actually loaded, if from a file
    config: dict | None = None  # custom architecture: open_clip CLIP kwargs (kind "custom" only)
    seed: int | None = None  # init seed of a random-init backbone


@dataclass
class Backbone:
    """A frozen CLIP plus what the toolkit needs around it."""

    clip: torch.nn.Module  # open_clip CLIP, eval mode, requires_grad False
    preprocess: Preprocess
    spec: BackboneSpec
    tokenize: Callable[[list[str]], torch.Tensor] = field(repr=False)

    @property
    def ctx_dim(self) -> int:
        """Width of the text transformer (size of one token embedding)."""
        return text_tower(self.clip).ln_final.weight.shape[0]

    @property
    def vis_dim(self) -> int:
        """Size of the image feature f(x) (the joint embedding size)."""
        return self.clip.visual.output_dim

    def describe(self) -> dict:
        return asdict(self.spec)


def text_tower(clip):
    """The module holding token_embedding / transformer / ln_final (CLIP keeps them at the top level)."""
    tower = clip.text if hasattr(clip, "text") and hasattr(clip.text, "token_embedding") else clip
    for attr in ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection"):
        if not hasattr(tower, attr):
            raise CIError(
                f"this open_clip model has no CLIP-style text tower (missing {attr}); CoCoOp needs one"
            )
    pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", "argmax"))
    if pool != "argmax":
        raise CIError(f"text pooling {pool!r} is not supported: CoCoOp needs CLIP's EOS (argmax) pooling")
    return tower


def list_backbones() -> list[str]:
    """Names accepted by `create_backbone`: "miniclip", "miniclip-vit", "custom" and every open_clip model name."""

    return ["miniclip", "miniclip-vit", "custom", *open_clip.list_models()]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a torch file loaded with weights_only=True (no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":

        try:
            return load_file(str(path))
        except Exception as exc:  # corrupt header, truncated file
            raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"refused to load {path}: it is not a plain tensor file (weights_only=True rejected it: "
            f"{type(exc).__name__}). Pickles that carry code are never executed; convert the weights to "
            "safetensors on a machine you trust."
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _finish(clip, preprocess: Preprocess, spec: BackboneSpec, tokenize) -> Backbone:
    clip.eval()
    for p in clip.parameters():
        p.requires_grad_(False)
    text_tower(clip)  # fail early on unsupported towers
    return Backbone(clip=clip, preprocess=preprocess, spec=spec, tokenize=tokenize)


def _resolve_quickgelu(name: str, pretrained: str | None) -> str:
    """OpenAI weights were trained with QuickGELU: open_clip >= 3 needs the '-quickgelu' variant."""

    if pretrained == "openai" and not name.endswith("-quickgelu"):
        fixed = f"{name}-quickgelu"
        if fixed in open_clip.list_models():
            log.warning("OpenAI weights need QuickGELU: using %s instead of %s", fixed, name)
            return fixed
        raise CIError(f"OpenAI weights need a QuickGELU model, and open_clip has no {fixed!r}")
    return name


def miniclip_name(folder: str | Path) -> str:
    """"miniclip-vit" or "miniclip": the MiniCLIP architecture saved in `folder` (its config.json), so a CLI
    can load a delivered encoder without being told which it is; "miniclip" when the folder has no readable
    config (loading it then says what is missing)."""
    try:
        arch = json.loads((Path(folder) / "config.json").read_text())["model"].get("arch")
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return "miniclip"
    return "miniclip-vit" if arch == "vit" else "miniclip"


def create_backbone(
    name: str = "miniclip",
    pretrained: str | None = None,
    *,
    weights_file: str | Path | None = None,
    config: dict | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Backbone:
    """Build a frozen backbone.

    name: "miniclip" (embedded, offline), "miniclip-vit" (its ViT sibling), "custom" (with `config`: open_clip CLIP kwargs plus an
    optional "preprocess" entry), or an open_clip model name. pretrained: an open_clip weights tag, or
    None for random init (seeded). weights_file: local weights (.safetensors or a weights-only torch
    file) for an open_clip model name, e.g. downloaded elsewhere.
    """

    if name in ("miniclip", "miniclip-vit"):
        folder = Path(weights_file) if weights_file else (ASSET_DIR if name == "miniclip" else VIT_ASSET_DIR)
        clip, cfg = load_miniclip(folder)
        held = "miniclip-vit" if isinstance(cfg, MiniViTConfig) else "miniclip"
        if held != name:
            raise CIError(f"{folder} holds a {held} encoder, not {name}: load it as {held!r} (--backbone {held})")
        spec = BackboneSpec(
            kind="miniclip",
            name=name,
            pretrained="world" if weights_file is None else None,
            weights_file=str(weights_file) if weights_file else None,
            weights_sha256=_sha256(folder / "model.safetensors"),
        )
        return _finish(clip.to(device), Preprocess(cfg.image_size), spec, open_clip.tokenize)

    if name == "custom":
        if not config:
            raise CIError("name='custom' needs config= (open_clip CLIP kwargs: embed_dim, vision_cfg, text_cfg)")

        cfg = {k: v for k, v in config.items() if k != "preprocess"}
        torch.manual_seed(seed)
        try:
            clip = CLIP(
                cfg["embed_dim"],
                vision_cfg=CLIPVisionCfg(**cfg["vision_cfg"]),
                text_cfg=CLIPTextCfg(**cfg["text_cfg"]),
                quick_gelu=cfg.get("quick_gelu", False),
            )
        except (KeyError, TypeError) as exc:
            raise CIError(f"invalid custom backbone config: {exc}") from None
        sha = None
        if weights_file is not None:
            _load_into(clip, weights_file)
            sha = _sha256(Path(weights_file))
        pp = config.get("preprocess", {})
        preprocess = Preprocess(
            image_size=pp.get("image_size", clip.visual.image_size if isinstance(clip.visual.image_size, int) else clip.visual.image_size[0]),
            mean=tuple(pp.get("mean", OPENAI_MEAN)),
            std=tuple(pp.get("std", OPENAI_STD)),
        )
        spec = BackboneSpec(kind="custom", name="custom", config=config, seed=seed,
                            weights_file=str(weights_file) if weights_file else None, weights_sha256=sha)
        return _finish(clip.to(device), preprocess, spec, open_clip.tokenize)

    if name not in open_clip.list_models():
        raise CIError(f"unknown backbone {name!r}; see ci_toolkit.list_backbones() (e.g. 'miniclip', 'ViT-B-16')")
    name = _resolve_quickgelu(name, pretrained if weights_file is None else (pretrained or None))
    tag = None if weights_file is not None else pretrained
    if tag is not None and tag not in open_clip.list_pretrained_tags_by_model(name):
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise CIError(f"{name} has no weights tag {tag!r}; known tags: {tags}")
    torch.manual_seed(seed)
    try:
        clip, _, _ = open_clip.create_model_and_transforms(name, pretrained=tag, device=device)
    except Exception as exc:
        if tag is None:
            raise
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        raise BackboneUnavailableError(
            f"could not obtain the {tag!r} weights for {name} ({type(exc).__name__}: {str(exc)[:200]}). "
            + ("HF_HUB_OFFLINE=1 is set. " if offline else "This machine may be offline. ")
            + f"On a machine with internet run `python -c \"import open_clip; open_clip.create_model('{name}', "
            f"pretrained='{tag}')\"` once (it caches the weights), or download the weights file and pass "
            "weights_file=PATH (CLI: --backbone-weights PATH)."
        ) from None
    sha = None
    if weights_file is not None:
        _load_into(clip, weights_file)
        sha = _sha256(Path(weights_file))
    cfg = open_clip.get_model_config(name) or {}
    size = cfg.get("vision_cfg", {}).get("image_size", 224)
    pp_cfg = getattr(clip.visual, "preprocess_cfg", {}) or {}
    preprocess = Preprocess(
        image_size=size if isinstance(size, int) else size[0],
        mean=tuple(pp_cfg.get("mean", OPENAI_MEAN)),
        std=tuple(pp_cfg.get("std", OPENAI_STD)),
    )
    spec = BackboneSpec(kind="open_clip", name=name, pretrained=tag, seed=seed if tag is None else None,
                        weights_file=str(weights_file) if weights_file else None, weights_sha256=sha)
    return _finish(clip, preprocess, spec, open_clip.get_tokenizer(name))


def save_backbone(backbone: Backbone, out_dir: str | Path, note: dict | None = None, overwrite: bool = False) -> Path:
    """Write a MiniCLIP backbone (for instance one whose text tower was fine-tuned) as the folder that
    `create_backbone(miniclip_name(out_dir), weights_file=out_dir)` loads: model.safetensors + config.json (the
    architecture, plus `note`). Refuses to overwrite existing weights unless `overwrite=True`."""
    from safetensors.torch import save_file

    if backbone.spec.kind != "miniclip":
        raise CIError(f"save_backbone writes MiniCLIP backbones; this one is {backbone.spec.kind!r}")
    out = Path(out_dir)
    if (out / "model.safetensors").exists() and not overwrite:
        raise CheckpointError(f"{out} already holds backbone weights; choose another folder or pass overwrite=True")
    source = Path(backbone.spec.weights_file) if backbone.spec.weights_file else (
        VIT_ASSET_DIR if backbone.spec.name == "miniclip-vit" else ASSET_DIR)
    config = json.loads((source / "config.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in backbone.clip.state_dict().items() if k != "attn_mask"}
    save_file(state, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({"model": config["model"], "note": note or {}}, indent=2))
    return out


def _load_into(clip, weights_file) -> None:
    state = load_state_dict_file(weights_file)
    missing, unexpected = clip.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "attn_mask"]
    if missing or unexpected:
        raise CheckpointError(
            f"{weights_file} does not match this architecture: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def backbone_from_spec(spec: dict[str, Any] | BackboneSpec, device="cpu") -> Backbone:
    """Rebuild the backbone a delivered model names in its metadata."""
    if isinstance(spec, dict):
        known = BackboneSpec.__dataclass_fields__
        unknown = set(spec) - set(known)
        if unknown:
            raise CheckpointError(f"backbone metadata has unknown fields {sorted(unknown)}")
        spec = BackboneSpec(**spec)
    if spec.kind == "miniclip":
        bb = create_backbone(spec.name or "miniclip", weights_file=spec.weights_file, device=device)
    elif spec.kind == "custom":
        bb = create_backbone("custom", config=spec.config, weights_file=spec.weights_file, seed=spec.seed or 0, device=device)
    elif spec.kind == "open_clip":
        bb = create_backbone(spec.name, spec.pretrained, weights_file=spec.weights_file, seed=spec.seed or 0, device=device)
    else:
        raise CheckpointError(f"unknown backbone kind {spec.kind!r} in metadata")
    if spec.weights_sha256 and bb.spec.weights_sha256 and spec.weights_sha256 != bb.spec.weights_sha256:
        raise CheckpointError(
            f"the backbone weights differ from the ones the model was delivered with "
            f"(sha256 {bb.spec.weights_sha256[:12]}... != {spec.weights_sha256[:12]}...)"
        )
    return bb

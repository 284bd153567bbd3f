"""Contrastive pretraining of MiniCLIP on freshly rendered world images (`ci-toolkit pretrain-miniclip`)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..images import OPENAI_MEAN, OPENAI_STD
from ..model.miniclip import (
    MiniCLIPConfig,
    MiniViTConfig,
    build_miniclip,
    class_contrastive_loss,
    class_text_features,
    load_miniclip,
    normalize_images,
)
from .generator import World, WorldConfig


@dataclass(frozen=True)
class PretrainConfig:
    """How MiniCLIP is pretrained (contrastive image-caption loss on freshly rendered world images)."""

    steps: int = 1200  # optimiser steps; each sees `batch_size` new images
    batch_size: int = 256
    lr: float = 2e-3  # AdamW peak learning rate (linear warm-up, cosine decay)
    warmup: int = 100
    weight_decay: float = 0.05
    temperature_init: float = 0.07  # CLIP's initial temperature (logit scale is learned)
    # Extra Gaussian pixel noise (std drawn from U(0, noise_aug)). 0 by default: with 0.06 MiniCLIP became
    # so robust that no BadCLIP trigger up to 16/255 could be implanted (docs/world.md).
    noise_aug: float = 0.0
    seed: int = 0
    eval_every: int = 250  # steps between zero-shot checks (0: only at the end)
    eval_images: int = 1000
    world: WorldConfig = field(default_factory=WorldConfig)


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up over cfg.warmup steps to cfg.lr, then cosine decay to 0 at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))


@torch.no_grad()
def zero_shot_accuracy(clip, world: World, n: int = 1000, seed: int = 12345, domain="pretrain", classes=None):
    """Top-1 zero-shot accuracy ("a photo of a {class}.") over `classes` (world ids; default all)."""
    clip.eval()
    ids = list(range(world.config.num_classes)) if classes is None else list(classes)
    text = class_text_features(clip, [world.classnames[i] for i in ids])
    correct = 0
    for start in range(0, n, 500):
        x, y = world.sample(min(500, n - start), seed=seed + start, domain=domain, classes=ids)
        f = F.normalize(clip.encode_image(normalize_images(x)), dim=-1)
        pred = torch.tensor(ids)[(f @ text.T).argmax(-1)]
        correct += int((pred == y).sum())
    return correct / n


def pretrain_miniclip(
    model_cfg: MiniCLIPConfig | None = None,
    train_cfg: PretrainConfig | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
):
    """Pretrain MiniCLIP from scratch; returns (clip, metrics). Writes the assets to `out_dir` if given.

    Loss: every class's caption (a random template each step) is in the text batch, each image is
    contrasted against all of them (image -> text), and each caption against the images of the batch
    with all same-class images as positives (text -> image). Deterministic given the seeds: images of
    step i are rendered from seed (seed, i).
    """

    model_cfg = model_cfg or MiniCLIPConfig()
    train_cfg = train_cfg or PretrainConfig()
    if model_cfg.image_size != train_cfg.world.image_size:
        raise ValueError("MiniCLIPConfig.image_size must equal the world's image_size")
    world = World(train_cfg.world)
    clip = build_miniclip(model_cfg, seed=train_cfg.seed)
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(1 / train_cfg.temperature_init))
    opt = torch.optim.AdamW(clip.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)

    n_cls = world.config.num_classes
    history = []
    t0 = time.time()
    bar = tqdm(range(train_cfg.steps), desc="pretrain MiniCLIP", disable=not progress)
    for step in bar:
        clip.train()
        step_seed = train_cfg.seed * 1_000_003 + step
        g = torch.Generator().manual_seed(step_seed)
        x, y = world.sample(train_cfg.batch_size, seed=step_seed, domain="pretrain")
        noise = train_cfg.noise_aug * torch.rand(len(x), 1, 1, 1, generator=g)
        x = (x + noise * torch.randn(x.shape, generator=g)).clamp(0, 1)
        tokens = open_clip.tokenize(world.captions(range(n_cls), g))
        loss = class_contrastive_loss(clip, normalize_images(x), y, tokens)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, train_cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        last = step + 1 == train_cfg.steps
        if last or (train_cfg.eval_every and (step + 1) % train_cfg.eval_every == 0):
            acc = zero_shot_accuracy(clip, world, n=train_cfg.eval_images)
            history.append({"step": step + 1, "minutes": (time.time() - t0) / 60, "loss": loss.item(), "zero_shot_top1": acc})
            bar.write(f"step {step + 1}: loss {loss.item():.3f}, zero-shot top-1 {acc:.3f}, {(time.time() - t0) / 60:.1f} min")
    clip.eval()
    minutes = (time.time() - t0) / 60
    metrics = {
        "zero_shot_top1": history[-1]["zero_shot_top1"],
        "zero_shot_eval": f"{train_cfg.eval_images} pretraining-domain images, all {n_cls} classes, 'a photo of a {{}}.'",
        "pretrain_minutes": minutes,
        "threads": torch.get_num_threads(),
        "history": history,
    }
    if out_dir is not None:
        save_miniclip(clip, model_cfg, train_cfg, metrics, out_dir)
    return clip, metrics


@dataclass(frozen=True)
class DistillConfig(PretrainConfig):
    """How the ViT MiniCLIP is trained (DECOMP.md section 5): its image tower learns the ResNet MiniCLIP's image
    embedding (cosine) and the world's class captions through the ResNet's frozen text tower (contrastive);
    a ViT trained from scratch on this budget stays far below the ResNet's zero-shot accuracy. The inherited
    noise_aug must stay 0 and temperature_init is unused (the logit scale is the teacher's)."""

    steps: int = 800  # the shipped run: 40.5 min on 2 cores shared with the test suite (metrics.json)
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 50
    eval_every: int = 200
    distill_weight: float = 1.0  # weight of (1 - cos(student, teacher)) beside the contrastive loss


def distill_miniclip_vit(
    model_cfg: MiniViTConfig | None = None,
    train_cfg: DistillConfig | None = None,
    out_dir: str | Path | None = None,
    teacher_dir: str | Path | None = None,
    progress: bool = True,
):
    """Train the ViT MiniCLIP from the ResNet MiniCLIP (in `teacher_dir`, default the shipped one); returns
    (clip, metrics) and writes the assets to `out_dir` if given. The text tower, token embedding and logit
    scale are copied from the teacher and stay frozen, so the ViT shares the ResNet's text space."""

    model_cfg = model_cfg or MiniViTConfig()
    train_cfg = train_cfg or DistillConfig()
    if model_cfg.image_size != train_cfg.world.image_size:
        raise ValueError("MiniViTConfig.image_size must equal the world's image_size")
    if train_cfg.noise_aug:
        raise ValueError("the ViT distillation has no noise augmentation: noise_aug must be 0")
    world = World(train_cfg.world)
    teacher, _ = load_miniclip(teacher_dir)
    clip = build_miniclip(model_cfg, seed=train_cfg.seed)
    text_state = {k: v for k, v in teacher.state_dict().items() if not k.startswith("visual.")}
    clip.load_state_dict(text_state, strict=False)
    for name, p in clip.named_parameters():
        p.requires_grad_(name.startswith("visual."))
    params = [p for p in clip.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)

    n_cls = world.config.num_classes
    history = []
    t0 = time.time()
    bar = tqdm(range(train_cfg.steps), desc="distil ViT MiniCLIP", disable=not progress)
    for step in bar:
        clip.train()
        step_seed = train_cfg.seed * 1_000_003 + step
        g = torch.Generator().manual_seed(step_seed)
        x, y = world.sample(train_cfg.batch_size, seed=step_seed, domain="pretrain")
        xn = normalize_images(x)
        with torch.no_grad():
            target = F.normalize(teacher.encode_image(xn), dim=-1)  # [B, E]
            tokens = open_clip.tokenize(world.captions(range(n_cls), g))
            text = F.normalize(clip.encode_text(tokens), dim=-1)  # [K, E], frozen tower
        f = F.normalize(clip.encode_image(xn), dim=-1)  # [B, E]
        distill = (1 - (f * target).sum(-1)).mean()
        contrast = F.cross_entropy(clip.logit_scale.exp().clamp(max=100) * f @ text.T, y)
        loss = contrast + train_cfg.distill_weight * distill
        for group in opt.param_groups:
            group["lr"] = lr_at(step, train_cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", cos=f"{1 - distill.item():.3f}")
        last = step + 1 == train_cfg.steps
        if last or (train_cfg.eval_every and (step + 1) % train_cfg.eval_every == 0):
            acc = zero_shot_accuracy(clip, world, n=train_cfg.eval_images)
            history.append({"step": step + 1, "minutes": (time.time() - t0) / 60, "loss": loss.item(),
                            "cos_to_teacher": 1 - distill.item(), "zero_shot_top1": acc})
            bar.write(f"step {step + 1}: loss {loss.item():.3f}, cos {1 - distill.item():.3f}, zero-shot top-1 "
                      f"{acc:.3f}, {(time.time() - t0) / 60:.1f} min")
    clip.eval()
    for p in clip.parameters():
        p.requires_grad_(False)
    metrics = {
        "zero_shot_top1": history[-1]["zero_shot_top1"],
        "zero_shot_eval": f"{train_cfg.eval_images} pretraining-domain images, all {n_cls} classes, 'a photo of a {{}}.'",
        "pretrain_minutes": (time.time() - t0) / 60,
        "threads": torch.get_num_threads(),
        "teacher": "the shipped ResNet MiniCLIP" if teacher_dir is None else str(teacher_dir),
        "history": history,
    }
    if out_dir is not None:
        save_miniclip(clip, model_cfg, train_cfg, metrics, out_dir, image_tower_only=teacher_dir is None)
    return clip, metrics


def save_miniclip(clip, model_cfg: MiniCLIPConfig | MiniViTConfig, train_cfg: PretrainConfig, metrics: dict, out_dir,
                  image_tower_only: bool = False) -> None:
    """Write model.safetensors, config.json and metrics.json. image_tower_only: store the image tower alone and
    record that the text tower is the shipped ResNet MiniCLIP's (the ViT's, frozen while it was distilled)."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().clone() for k, v in clip.state_dict().items()
             if not image_tower_only or k.startswith("visual.")}
    save_file(state, str(out / "model.safetensors"))
    config = {
        "model": asdict(model_cfg),
        "pretrain": asdict(train_cfg),
        "preprocess": {"image_size": model_cfg.image_size, "mean": list(OPENAI_MEAN), "std": list(OPENAI_STD)},
        "command": f"ci-toolkit pretrain-miniclip --out DIR --steps {train_cfg.steps} --seed {train_cfg.seed}"
        + (f" --noise-aug {train_cfg.noise_aug}" if train_cfg.noise_aug else "")
        + (" --arch vit" if isinstance(model_cfg, MiniViTConfig) else ""),
        **({"text_from": "miniclip"} if image_tower_only else {}),
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))

"""MiniCLIP: the committed weights load and classify; pretraining runs and is deterministic."""

import json

import pytest
import torch

import ci_toolkit as ci
from ci_toolkit.model.miniclip import ASSET_DIR, MiniCLIPConfig, load_miniclip
from ci_toolkit.world.pretrain import PretrainConfig, pretrain_miniclip, zero_shot_accuracy
from ci_toolkit.world import World, WorldConfig


def test_committed_weights_load_and_pass_zero_shot_on_held_out_images():
    clip, cfg = load_miniclip()
    world = World(WorldConfig(image_size=cfg.image_size))
    # seed 777 was never used in pretraining (step seeds are seed * 1_000_003 + step)
    acc = zero_shot_accuracy(clip, world, n=300, seed=777)
    assert acc >= 0.8, acc
    metrics = json.loads((ASSET_DIR / "metrics.json").read_text())
    assert metrics["zero_shot_top1"] >= 0.85 and metrics["pretrain_minutes"] <= 30


def test_miniclip_backbone_metadata_pins_the_weights():
    bb = ci.create_backbone("miniclip")
    assert bb.spec.kind == "miniclip" and len(bb.spec.weights_sha256) == 64
    assert bb.preprocess.image_size == MiniCLIPConfig().image_size


def test_missing_weights_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ci.BackboneUnavailableError, match="pretrain-miniclip"):
        load_miniclip(tmp_path)


def test_pretraining_a_few_steps_runs_and_is_deterministic(tmp_path):
    small = MiniCLIPConfig(image_size=32, vision_width=8, text_layers=1)
    cfg = PretrainConfig(steps=2, batch_size=16, warmup=1, eval_every=0, eval_images=20,
                         world=WorldConfig(image_size=32))
    clip_a, metrics = pretrain_miniclip(small, cfg, out_dir=tmp_path / "a", progress=False)
    clip_b, _ = pretrain_miniclip(small, cfg, progress=False)
    for (k, va), vb in zip(clip_a.state_dict().items(), clip_b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert {p.name for p in (tmp_path / "a").iterdir()} == {"model.safetensors", "config.json", "metrics.json"}
    assert 0 <= metrics["zero_shot_top1"] <= 1 and len(metrics["history"]) == 1
    reloaded, _ = load_miniclip(tmp_path / "a")
    assert torch.equal(reloaded.state_dict()["text_projection"], clip_a.state_dict()["text_projection"])


def test_the_vit_miniclip_is_distilled_with_the_resnet_text_tower_frozen(tmp_path):
    from ci_toolkit.model import MiniViTConfig
    from ci_toolkit.world import DistillConfig, distill_miniclip_vit

    small = MiniViTConfig(vision_layers=1, vision_width=48, vision_head_width=24)
    clip, metrics = distill_miniclip_vit(small, DistillConfig(steps=2, batch_size=8, warmup=1, eval_every=0, eval_images=20),
                                         out_dir=tmp_path / "vit", progress=False)
    teacher, _ = load_miniclip()
    text = {k: v for k, v in teacher.state_dict().items() if not k.startswith("visual.")}
    assert all(torch.equal(clip.state_dict()[k], v) for k, v in text.items())  # the text tower did not move
    reloaded, cfg = load_miniclip(tmp_path / "vit")  # the file holds the image tower; the text tower is filled in
    assert cfg == small and all(torch.equal(a, b) for a, b in zip(clip.state_dict().values(), reloaded.state_dict().values()))
    assert 0 <= metrics["zero_shot_top1"] <= 1


def test_the_shipped_vit_miniclip_loads_and_records_its_accuracy():
    bb = ci.create_backbone("miniclip-vit")
    assert bb.spec.name == "miniclip-vit" and bb.clip.visual.grid_size == (8, 8)
    metrics = json.loads((ci.model.MINICLIP_VIT_DIR / "metrics.json").read_text())
    assert 0 < metrics["zero_shot_top1"] <= 1 and metrics["history"][-1]["step"] == 800

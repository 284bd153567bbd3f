"""`ci-toolkit demo`: the story on the embedded world, as far as the pipeline goes today.

MiniCLIP -> the shifted world task -> a clean CoCoOp model and a BadCLIP-backdoored one (same data, same
seed) -> clean accuracy and attack success of both. Later stages (scan, repair) extend this file.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .attacks import BadCLIP
from .backbones import create_backbone
from .checkpoint import save_cocoop
from .cocoop import CoCoOp
from .metrics import attack_success_rate
from .profiles import get_profile
from .train import TrainConfig, evaluate, train_cocoop
from .world import BACKDOOR_EPS, World, WorldConfig


def world_task(profile: str = "classroom", seed: int = 0):
    """(profile, MiniCLIP backbone, world, task) for a profile: the setup every world command shares."""
    cfg = get_profile(profile, seed=seed)
    bb = create_backbone("miniclip")
    world = World(WorldConfig(image_size=bb.preprocess.image_size))
    task = world.task(n_classes=cfg.n_classes, shots=cfg.shots, n_test_per_class=cfg.n_test_per_class, seed=seed)
    return cfg, bb, world, task


def run_demo(out_dir: str | Path, profile: str = "classroom", seed: int = 0, progress: bool = True) -> dict:
    t0 = time.time()
    cfg, bb, world, task = world_task(profile, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_cfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, seed=seed)
    x_seen, y_seen = task.split("test", "seen")
    x_new, y_new = task.split("test", "unseen")
    ood = world.sample_ood(cfg.ood_holdout, seed=seed + 1)
    target = len(task.seen) // 2  # a seen class

    clean = CoCoOp(bb, task.seen_names, seed=seed)
    train_cocoop(clean, task.train_x, task.train_y, train_cfg, progress=progress, desc="clean CoCoOp")
    bad = CoCoOp(bb, task.seen_names, seed=seed)
    attack = BadCLIP(target=target, eps=BACKDOOR_EPS, seed=seed)
    attack.implant(bad, task.train_x, task.train_y, train_cfg, progress=progress)

    def report(model):
        return {
            "acc_seen": evaluate(model, x_seen, y_seen),
            "acc_unseen": evaluate(model, x_new, y_new, classes=task.unseen_names),
            "asr_seen": attack_success_rate(model, x_seen, y_seen, target, attack),
            "asr_ood": attack_success_rate(model, ood, None, target, attack),
        }

    save_cocoop(clean, out / "clean_model", overwrite=True)
    save_cocoop(bad, out / "backdoored_model", overwrite=True)
    from safetensors.torch import save_file

    (out / "attacker").mkdir(exist_ok=True)  # ground truth, kept apart from the delivered model
    save_file(attack.state(), str(out / "attacker" / "trigger.safetensors"))
    (out / "attacker" / "attack.json").write_text(json.dumps({"attack": attack.name, "config": asdict(attack.config),
                                                              "target_name": task.seen_names[target]}, indent=2))
    result = {
        "clean": report(clean),
        "backdoored": {**report(bad), "true_target": task.seen_names[target]},
        "eps": BACKDOOR_EPS,
        "runtime_s": time.time() - t0,
        "config": {"profile": asdict(cfg), "train": asdict(train_cfg), "threads": torch.get_num_threads()},
    }
    (out / "demo.json").write_text(json.dumps(result, indent=2, default=float))
    return result

"""`python -m lab bench world`: is the embedded world worth anything?

Measures (with the committed MiniCLIP):
  zero_shot_top1        pretraining domain, all world classes, "a photo of a {}."
  task_zero_shot_seen   the shifted task, seen classes (CoCoOp's starting point)
  cocoop_seen_acc / cocoop_unseen_acc   clean CoCoOp after prompt tuning (base-to-new protocol)
  regime                per L-inf bound: BadCLIP's ASR on the backdoored model, the SAME trigger's ASR on
                        the clean model (a real backdoor needs this near 0), clean ACC of the backdoored model
ASR: fraction of triggered seen-class test images whose true class is not the target predicted as target.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import torch
import torch.nn.functional as F

import ci_toolkit as ci
from ci_toolkit.attacks import BadCLIP
from ci_toolkit.model import MINICLIP_DIR, class_text_features, normalize_images
from ci_toolkit.world import zero_shot_accuracy

DEFAULT_EPS = (2 / 255, 4 / 255, 8 / 255, 16 / 255)


def task_zero_shot(clip, task, part: str = "seen") -> float:
    """Zero-shot top-1 of the bare backbone on a task's test split ("seen" or "unseen" classes)."""
    x, y = task.split("test", part)
    names = task.seen_names if part == "seen" else task.unseen_names
    with torch.no_grad():
        text = class_text_features(clip, names)
        f = F.normalize(clip.encode_image(normalize_images(x.float() / 255)), dim=-1)
    return ((f @ text.T).argmax(-1) == y).float().mean().item()


def bench_world(quick: bool = False, seed: int = 0, eps_list=DEFAULT_EPS, targets=(0,), chosen_targets=(0, 7),
                progress: bool = True) -> dict:
    """The regime table: one target per bound, `chosen_targets` at the world's BACKDOOR_EPS (~15 min)."""
    t0 = time.time()
    bb = ci.create_backbone("miniclip")
    world = ci.world.World(ci.world.WorldConfig(image_size=bb.preprocess.image_size))
    n_classes, n_test, n_zs = (10, 8, 200) if quick else (50, 40, 2000)
    train_cfg = ci.TrainConfig(epochs=1 if quick else 10, seed=seed)
    task = world.task(n_classes=n_classes, n_test_per_class=n_test, seed=seed)
    x_seen, y_seen = task.split("test", "seen")
    x_new, y_new = task.split("test", "unseen")

    result = {
        "zero_shot_top1": zero_shot_accuracy(bb.clip, world, n=n_zs),
        "task_zero_shot_seen": task_zero_shot(bb.clip, task, "seen"),
        "task_zero_shot_unseen": task_zero_shot(bb.clip, task, "unseen"),
        "image_size": world.image_size,
    }
    clean = ci.CoCoOp(bb, task.seen_names, seed=seed)
    ci.train(clean, task.train_x, task.train_y, train_cfg, progress=progress, desc="clean CoCoOp")
    result["cocoop_seen_acc"] = ci.evaluate(clean, x_seen, y_seen)
    result["cocoop_unseen_acc"] = ci.evaluate(clean, x_new, y_new, classes=task.unseen_names)

    regime = []
    for eps in eps_list[:1] if quick else eps_list:
        rows = []
        tgts = targets[:1] if quick else (chosen_targets if abs(eps - ci.world.BACKDOOR_EPS) < 1e-9 else targets)
        for target in tgts:
            bad = ci.CoCoOp(bb, task.seen_names, seed=seed)
            attack = BadCLIP(target=target, eps=eps, seed=seed)
            attack.implant(bad, task.train_x, task.train_y, train_cfg, progress=progress)
            rows.append({
                "asr_backdoored": ci.attack_success_rate(bad, x_seen, y_seen, target, attack),
                "asr_clean_model": ci.attack_success_rate(clean, x_seen, y_seen, target, attack),
                "acc_backdoored": ci.evaluate(bad, x_seen, y_seen),
            })
        row = {"eps": eps, "eps_255": round(eps * 255, 3), "targets": list(tgts[: len(rows)])}
        row.update({k: sum(r[k] for r in rows) / len(rows) for k in rows[0]})
        row["per_target"] = rows
        regime.append(row)
        if progress:
            print(f"eps {eps * 255:.0f}/255: ASR backdoored {row['asr_backdoored']:.3f}, "
                  f"same trigger on clean {row['asr_clean_model']:.3f}, ACC {row['acc_backdoored']:.3f}")
    result["regime"] = regime
    metrics = json.loads((MINICLIP_DIR / "metrics.json").read_text())
    result["pretrain_minutes"] = metrics["pretrain_minutes"]
    result["runtime_s"] = time.time() - t0
    result["config"] = {
        "seed": seed, "quick": quick, "n_classes": n_classes, "n_test_per_class": n_test, "train": asdict(train_cfg),
        "world": asdict(world.config), "attack": "badclip (batch 1, lr 0.002: BadCLIP's original setting)",
        "threads": torch.get_num_threads(), "backdoor_eps": ci.world.BACKDOOR_EPS,
        "asr_definition": "triggered seen-class test images with true class != target, predicted as target",
    }
    return result

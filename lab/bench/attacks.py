"""`python -m lab bench attacks`: every attack on the embedded world, averaged over seeds.

For each attack and seed: a clean model and a backdoored one trained on the same data; clean ACC (seen,
unseen), ASR on seen, unseen and OOD images, the attack's trigger applied to the CLEAN model
(`asr_clean_model`: a backdoor, not an adversarial perturbation, keeps this low), SSIM and the bound.
`attacks_from_zoo` gives the same table from a built zoo's manifest, without training.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

import ci_toolkit as ci
from lab.zoo import EVAL_OOD_SEED, Zoo

ALL = ("badclip", "badclip_adaptive", "blended", "wanet", "siba", "badnets")


def bench_attacks(attacks=ALL, seeds=(0, 1), quick: bool = False, progress: bool = True) -> dict:
    t0 = time.time()
    bb = ci.create_backbone("miniclip")
    world = ci.world.World(ci.world.WorldConfig(image_size=bb.preprocess.image_size))
    n_classes, n_test, epochs, n_ood = (10, 4, 1, 32) if quick else (50, 20, 10, 300)
    seeds = seeds[:1] if quick else seeds
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)
    clean_rows, per_attack = [], {a: [] for a in attacks}
    for seed in seeds:
        task = world.task(n_classes=n_classes, n_test_per_class=n_test, seed=seed)
        ood = world.sample_ood(n_ood, seed=EVAL_OOD_SEED + seed)
        cfg = ci.TrainConfig(epochs=epochs, seed=seed)
        clean = ci.CoCoOp(bb, task.seen_names, seed=seed)
        ci.train(clean, task.train_x, task.train_y, cfg, progress=progress, desc=f"clean seed {seed}")
        clean_rows.append(ci.evaluate_backdoor(clean, None, task, ood, None))
        x_seen, y_seen = task.split("test", "seen")
        for i, name in enumerate(attacks):
            target = (3 + 5 * i + seed) % len(task.seen)
            attack = ci.world.attack(name, target=target, seed=seed)
            model = ci.CoCoOp(bb, task.seen_names, seed=seed)
            attack.implant(model, task.train_x, task.train_y, cfg, progress=progress)
            row = ci.evaluate_backdoor(model, attack, task, ood, task.seen_names[target])
            row["asr_clean_model"] = ci.attack_success_rate(clean, x_seen, y_seen, target, attack)
            row["eps"] = getattr(attack.config, "eps", None)
            per_attack[name].append(row)
            if progress:
                print(f"{name} seed {seed}: acc {row['acc_seen']:.3f} asr {row['asr_seen']:.3f} "
                      f"(clean model {row['asr_clean_model']:.3f}) ood {row['asr_ood']:.3f}")
    keys = ("acc_seen", "acc_unseen", "asr_seen", "asr_unseen", "asr_ood", "asr_clean_model", "ssim")
    return {
        "clean": {k: mean(clean_rows, k) for k in ("acc_seen", "acc_unseen")},
        "attacks": {a: {**{k: mean(rows, k) for k in keys}, "eps": rows[0]["eps"], "per_seed": rows}
                    for a, rows in per_attack.items()},
        "runtime_s": time.time() - t0,
        "config": {"seeds": list(seeds), "n_classes": n_classes, "n_test_per_class": n_test, "epochs": epochs,
                   "train": asdict(ci.TrainConfig(epochs=epochs)), "backdoor_eps": ci.world.BACKDOOR_EPS,
                   "threads": torch.get_num_threads(), "quick": quick,
                   "asr_definition": "triggered test images whose true class != target, predicted as target"},
    }


def attacks_from_zoo(zoo: str | Path) -> dict:
    """The `bench attacks` JSON from a built zoo's manifest (same metrics, no retraining): per attack the
    mean over its models (different seeds and targets); `clean` averages the zoo's clean models; `build`:
    the build log's wall time (zoos built before the log existed have none)."""
    zoo = Zoo(zoo)
    manifest = zoo.manifest()
    rows = [m for m in manifest if m["attack"] != "clean"]
    clean = [m for m in manifest if m["attack"] == "clean"]
    keys = ("acc_seen", "acc_unseen", "asr_seen", "asr_unseen", "asr_ood", "asr_clean_model", "ssim")
    mean = lambda rs, k: sum(r[k] for r in rs) / len(rs)
    attacks = {}
    for name in dict.fromkeys(r["attack"] for r in rows):
        mine = [r for r in rows if r["attack"] == name]
        cfg = json.loads((zoo.attacker_dir(mine[0]) / "attack.json").read_text())["config"]
        attacks[name] = {**{k: mean(mine, k) for k in keys if all(k in r for r in mine)}, "eps": cfg.get("eps"),
                         "n_models": len(mine), "min_asr_seen": min(r["asr_seen"] for r in mine),
                         "per_model": mine, "config": cfg}
    out = {"clean": {k: mean(clean, k) for k in ("acc_seen", "acc_unseen")}, "attacks": attacks,
           "config": {"zoo": str(zoo.root), "n_clean": len(clean),
                      "asr_definition": "triggered test images whose true class != target, predicted as target"}}
    runs = zoo.build_log()
    if runs:
        out["build"] = {"wall_s": sum(r["wall_s"] for r in runs),
                        "train_s": sum(m.get("train_s", 0.0) for m in manifest), "sessions": runs}
    return out

"""A first implant trial of the encoder-poisoning attacks (not the issue's benchmark): each attack's ASR and
zero-shot top-1 after one poisoned fine-tune of MiniCLIP, and the same trigger on a clean control.

    python -m lab.encoder_trial --attacks encoder-badnets,encoder-blended --poison-rate 0.1 --lr 5e-4 --out F.json

Data: `--pairs` pretraining-domain world pairs over all 300 classes (seed 777_001); evaluation on 1,000
held-out images (seed 888_001), 300-class zero-shot "a photo of a {class}.". One torch thread.

`--like PROFILE:mNNN` repeats one poisoned model of an encoder zoo instead (its seed, pairs, task and target, the
zoo's `measure`), with the trial's --poison-rate/--lr/--epochs/--set as the recipe; no clean control:

    python -m lab.encoder_trial --like encoder-eval2:m011 --attacks encoder-badclip --lr 2e-4 --epochs 10 --out F.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import ci_toolkit as ci
from ci_toolkit.world import CAPTION_TEMPLATES, World, WorldConfig
from lab.encoder_zoo import ENCODER_ZOO_PROFILES, PAIR_SEED, measure, model_specs, task_of


@torch.no_grad()
def _predict(backbone, names, images):
    """300-class zero-shot predictions [N]: image features against the class text features [K, E] of the SAME
    model's text tower (a fine-tune moves both towers)."""
    text = ci.model.class_text_features(backbone.clip, names)
    f = torch.nn.functional.normalize(backbone.clip.encode_image(backbone.preprocess.normalize(images)), dim=-1)
    return (f @ text.T).argmax(-1)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--attacks", default=",".join(ci.list_attacks("encoder")))
    ap.add_argument("--target", type=int, default=17)
    ap.add_argument("--pairs", type=int, default=4096)
    ap.add_argument("--poison-rate", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=ci.attacks.ENCODER_LR)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--backbone", default="miniclip", choices=("miniclip", "miniclip-vit"))
    ap.add_argument("--set", action="append", default=[], metavar="ATTACK.FIELD=VALUE",
                    help="a config override of one attack, e.g. encoder-wanet.s=2 (repeatable)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--like", default=None, metavar="PROFILE:mNNN",
                    help="repeat this poisoned zoo model's setting (its seed, pairs, target and backbone replace "
                         "--seed, --target, --pairs and --backbone)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    overrides = {}
    for item in a.set:
        key, value = item.split("=", 1)
        name, field = key.rsplit(".", 1)
        overrides.setdefault(name, {})[field] = json.loads(value)
    if a.like:
        return like_zoo_model(a, overrides)
    w = World(WorldConfig())
    names = w.classnames
    x, y = w.sample(a.pairs, seed=777_001, domain="pretrain")
    xt, yt = w.sample(1000, seed=888_001, domain="pretrain")
    base = ci.create_backbone(a.backbone)
    keep = yt != a.target

    def top1(b):
        return float((_predict(b, names, xt) == yt).float().mean())

    def asr(b, attack):
        return float((_predict(b, names, attack(xt[keep]).clamp(0, 1)) == a.target).float().mean())

    clean = ci.attacks.benign_encoder_tune(base, x, y, names, seed=a.seed, templates=CAPTION_TEMPLATES, lr=a.lr,
                                           epochs=a.epochs)
    out = {"config": vars(a), "top1_base": top1(base), "top1_clean_control": top1(clean), "attacks": {}}
    for name in a.attacks.split(","):
        attack = ci.create_attack(name, target=a.target, seed=a.seed, poison_rate=a.poison_rate, lr=a.lr,
                                  epochs=a.epochs, **overrides.get(name, {}))
        t0 = time.time()
        bad = attack.implant(base, x, y, names, templates=CAPTION_TEMPLATES)
        out["attacks"][name] = {"asr": asr(bad, attack), "top1": top1(bad), "asr_clean_control": asr(clean, attack),
                                "seconds": time.time() - t0}
        print(name, out["attacks"][name], flush=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    return out


def like_zoo_model(a, overrides: dict) -> dict:
    """Each of `a.attacks` implanted as the zoo would build model `a.like` (seed, pairs, target), measured as the
    zoo measures (300-class and task-level ASR and top-1)."""
    profile, _, model = a.like.partition(":")
    if profile not in ENCODER_ZOO_PROFILES:
        raise SystemExit(f"--like {a.like}: no encoder zoo profile {profile!r} ({', '.join(ENCODER_ZOO_PROFILES)})")
    p = ENCODER_ZOO_PROFILES[profile]
    spec = next((s for s in model_specs(p) if s["name"] == model), None)
    if spec is None or spec["attack"] == "clean":
        raise SystemExit(f"--like {a.like}: give a poisoned model of {profile} (m{p.n_clean:03d} to "
                         f"m{p.n_clean + p.n_backdoored - 1:03d})")
    seed = spec["seed"]
    w = World(WorldConfig())
    names = task_of(p, seed).seen_names
    target = names[spec["target_base"]]
    x, y = w.sample(p.pairs, seed=PAIR_SEED + seed, domain="pretrain")
    base = ci.create_backbone(p.backbone)
    out = {"config": vars(a), "seed": seed, "target": target,
           "top1_base": measure(base, None, None, names, w.classnames)["top1"], "attacks": {}}
    for name in a.attacks.split(","):
        recipe = {"poison_rate": a.poison_rate, "lr": a.lr, "epochs": a.epochs, **overrides.get(name, {})}
        attack = ci.create_attack(name, target=w.classnames.index(target), seed=seed, **recipe)
        t0 = time.time()
        bad = attack.implant(base, x, y, w.classnames, templates=CAPTION_TEMPLATES)
        out["attacks"][name] = {**measure(bad, attack, target, names, w.classnames), "recipe": recipe,
                                "seconds": time.time() - t0}
        print(name, out["attacks"][name], flush=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()

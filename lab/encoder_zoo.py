"""A zoo of MiniCLIP encoders, clean fine-tunes and poisoned ones, and the audits on it: CLIP-Inspector with the
zero-shot head, CLIP-Inspector on a clean CoCoOp tuned over the delivered encoder, and InverTune.

    python -m lab encoder-zoo --profile encoder-eval4 --out runs/encoder_eval4 --workers 2 --stages zero_shot
    python -m lab bench encoder --zoo runs/encoder_eval4 --rest-from runs/encoder_eval3 runs/encoder_eval2 \
        --out-dir benchmarks

Layout, as the other zoos: DIR/models/mNNN/encoder/ is the delivered encoder (model.safetensors + config.json,
loadable by `create_backbone(p.backbone, weights_file=...)`) and DIR/models/mNNN/cocoop/ the organisation's clean
prompt learner over it; DIR/attackers/mNNN/ the attacker's trigger; DIR/manifest.json the truth and the attack's
measurements; DIR/scans/mNNN/ the audits' reports (zero_shot/, cocoop/, invertune.json) and what
InverTune's repair measured against the true trigger (invertune_eval.json); DIR/scans/anchor/SEED/ the public
MiniCLIP's zero-shot scan over each class list, the zero-shot scans' anchor.

Every fine-tune (clean or poisoned) sees the same number of world image-caption pairs of the pretraining
domain over all 300 classes; the organisation's task is `N_CLASSES` world classes (class list seeded by the
profile) whose base half holds the targets and is what the audits score.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import ci_toolkit as ci
from ci_toolkit.world import CAPTION_TEMPLATES

from .executors import Executor, build_into_manifest, run_units

N_CLASSES = 40  # the task's classes; its base half (20) is the zero-shot head's vocabulary and holds the targets
PAIRS = 4096  # fine-tuning pairs per model (world pretraining domain, all 300 classes)
PAIR_SEED = 777_000  # model seed s draws its pairs with seed PAIR_SEED + s
EVAL_PAIRS = 1000  # held-out pretraining-domain images for the 300-class ASR and top-1 (one fixed draw)
EVAL_PAIR_SEED = 888_001
EVAL_PER_CLASS = 25  # task-domain labelled images per base class for the task-level ASR and top-1 (seed EVAL_SEED)
EVAL_SEED = 990_000
INVERTUNE_PER_CLASS = 20  # the task's test split per class (the CoCoOp's held-out set)
# InverTune's defender set D (INVERTUNE.md section 4: the 300-class vocabulary, generated images from seeds apart
# from the poisoning's and the evaluation's): 2,000 labelled pretraining-domain images, a fifth of the spec's 10K
# for this CPU (stage 1 draws 500 batches of 64 whatever D's size)
INVERTUNE_POOL = 2000
INVERTUNE_SEED = 555_000
MIN_ASR = 0.5  # a poisoned model counts as implanted (and enters detection) at this 300-class ASR


@dataclass(frozen=True)
class EncoderZooProfile:
    name: str
    seed: int  # model i gets seed + i; the profile seed is also the task's class-list seed
    n_clean: int
    attacks: tuple[str, ...]  # cycled over the backdoored models
    n_backdoored: int
    poison_rate: float = 0.1
    lr: float = 5e-4
    epochs: int = 5
    pairs: int = PAIRS
    overrides: dict = field(default_factory=dict)  # attack name -> config overrides
    backbone: str = "miniclip"  # the clean encoder every model is fine-tuned from ("miniclip" or "miniclip-vit")
    cocoop: bool = True  # also tune and deliver the organisation's clean CoCoOp over each encoder
    own_classes: bool = False  # each model's task draws its class list from its own seed (else the profile's)
    clean_epochs: tuple[int, ...] = ()  # cycled over the clean fine-tunes (empty: `epochs`)


# the first zoos' recipe (docs/encoders.md): 10 % poison, 5 epochs; lr 5e-4 for the patch and the blend (2.5x the
# spec's 2e-4), the spec's 2e-4 for SIG and BadCLIP-encoder. WaNet implants on no trial (300-class ASR <= 0.182 at
# s 0.5-3, benchmarks/encoder_recipe_trials.json): it is measured in the trials, not built into the zoos.
ZOO_ATTACKS = ("encoder-badnets", "encoder-blended", "encoder-sig", "encoder-badclip")
RECIPE_OVERRIDES = {"encoder-sig": {"lr": 2e-4}, "encoder-badclip": {"lr": 2e-4}}
# 10 epochs for Blended, SIG and BadCLIP-encoder (on their weakest encoder-eval2 models:
# benchmarks/encoder_recipe_trials.json)
RECIPE_OVERRIDES_10 = {"encoder-blended": {"epochs": 10}, "encoder-sig": {"lr": 2e-4, "epochs": 10},
                       "encoder-badclip": {"lr": 2e-4, "epochs": 10}}
# encoder-eval4's recipe: 10 epochs for every attack, BadCLIP-encoder's patch 8 px (1/6 of the side); on the
# weakest encoder-eval3 seeds BadNets 0.888 -> 0.955 and BadCLIP-encoder 0.057 -> 0.967, at most 1.6 points of top-1
# (benchmarks/encoder_recipe_trials.json)
RECIPE_OVERRIDES_EVAL4 = {"encoder-badnets": {"epochs": 10}, "encoder-blended": {"epochs": 10},
                          "encoder-sig": {"lr": 2e-4, "epochs": 10},
                          "encoder-badclip": {"lr": 2e-4, "epochs": 10, "patch_frac": 1 / 6}}
ENCODER_ZOO_PROFILES = {
    # smoke: tests (one clean, one BadNets; tiny fine-tunes)
    "encoder-smoke": EncoderZooProfile("encoder-smoke", seed=3900, n_clean=1, attacks=("encoder-badnets",),
                                       n_backdoored=1, epochs=1, pairs=512),
    # encoder-calib: where InverTune's MiniCLIP tuning lr is chosen; never evaluated on
    "encoder-calib": EncoderZooProfile("encoder-calib", seed=4000, n_clean=1,
                                       attacks=("encoder-badnets", "encoder-blended"), n_backdoored=2,
                                       overrides=RECIPE_OVERRIDES),
    # encoder-eval: committed before its first build; benchmarks/encoder_*.json and invertune.json
    "encoder-eval": EncoderZooProfile("encoder-eval", seed=4100, n_clean=6, attacks=ZOO_ATTACKS,
                                      n_backdoored=16, overrides=RECIPE_OVERRIDES),
    # encoder-null: clean fine-tunes only, each on its own class list, scanned with the zero-shot head against the
    # public MiniCLIP's: a null study of the anchored rule (ci.detect.ANCHORED_THRESHOLD: pooled with encoder-null2)
    "encoder-null": EncoderZooProfile("encoder-null", seed=4600, n_clean=24, attacks=(), n_backdoored=0,
                                      cocoop=False, own_classes=True),
    # encoder-eval2: committed with the anchored rule and before its first build; every model on its own class
    # list (targets and sinks differ between models); the recipe of encoder-eval
    "encoder-eval2": EncoderZooProfile("encoder-eval2", seed=4700, n_clean=8, attacks=ZOO_ATTACKS, n_backdoored=16,
                                       overrides=RECIPE_OVERRIDES, own_classes=True),
    # encoder-eval3: committed with the anchored rule naming its top class only, before its first build; own class
    # lists; the 10-epoch recipe for Blended, SIG and BadCLIP-encoder, and clean fine-tunes at 5 (the null's
    # recipe) and 10 epochs alike, so that a longer fine-tune alone is not what the rule sees. Zero-shot audits
    # only (the CoCoOp case is measured on encoder-eval2's delivered CoCoOps)
    "encoder-eval3": EncoderZooProfile("encoder-eval3", seed=4800, n_clean=12, attacks=ZOO_ATTACKS, n_backdoored=16,
                                       overrides=RECIPE_OVERRIDES_10, own_classes=True, cocoop=False,
                                       clean_epochs=(5, 10)),
    # encoder-null2: clean fine-tunes of 5, 10 and 15 epochs (8 each), own class lists, zero-shot scans: a null
    # across the fine-tune lengths a provider may choose (10-epoch clean fine-tunes crossed the 5-epoch null's
    # threshold on encoder-eval3); pooled with encoder-null by `bench encoder-null --zoo A B`
    "encoder-null2": EncoderZooProfile("encoder-null2", seed=4900, n_clean=24, attacks=(), n_backdoored=0,
                                       cocoop=False, own_classes=True, clean_epochs=(5, 10, 15)),
    # encoder-eval4: committed with the anchored threshold of the pooled 48-model null (5, 10 and 15 epochs) before
    # its first build: 15 clean fine-tunes of 5, 10 and 15 epochs, 16 poisoned with RECIPE_OVERRIDES_EVAL4, own
    # class lists, zero-shot audits (and InverTune)
    "encoder-eval4": EncoderZooProfile("encoder-eval4", seed=5000, n_clean=15, attacks=ZOO_ATTACKS, n_backdoored=16,
                                       overrides=RECIPE_OVERRIDES_EVAL4, own_classes=True, cocoop=False,
                                       clean_epochs=(5, 10, 15)),
    # decomp-smoke: tests of the decomposition benchmark (one clean, one BadNets ViT; tiny fine-tunes)
    "decomp-smoke": EncoderZooProfile("decomp-smoke", seed=4290, n_clean=1, attacks=("encoder-badnets",),
                                      n_backdoored=1, epochs=1, pairs=256, backbone="miniclip-vit", cocoop=False),
    # decomp-vit: the ViT MiniCLIP poisoned with a patch (BadNets) and a blend (Blended) trigger, three targets
    # each, with the ResNet zoos' recipe unchanged; benchmarks/decomp.json (lab/bench/decomp.py). No CoCoOp:
    # the decomposition defenses act on the zero-shot encoder.
    "decomp-vit": EncoderZooProfile("decomp-vit", seed=4300, n_clean=1, attacks=("encoder-badnets", "encoder-blended"),
                                    n_backdoored=6, backbone="miniclip-vit", cocoop=False),
    # decomp-vit-patch4: the paper's patch trigger (DECOMP.md section 5: 4 px at a random place per image) on
    # the ViT MiniCLIP, three targets, the same recipe otherwise (at 1 % poison one trial did not implant, ASR 0.01)
    "decomp-vit-patch4": EncoderZooProfile("decomp-vit-patch4", seed=4400, n_clean=1, attacks=("encoder-badnets",),
                                           n_backdoored=3, backbone="miniclip-vit", cocoop=False,
                                           overrides={"encoder-badnets": {"patch_frac": 4 / 48, "place": "random"}}),
    # decomp-vit-patch4b: committed with the patch-map detector (ci.decomp.PatchMapDetector, designed on
    # decomp-vit-patch4) before its first build: its evaluation. Patch-style attacks only: BadNets as in
    # decomp-vit-patch4 and BadCLIP-encoder (its 6 px optimised patch at the corner), three targets each
    "decomp-vit-patch4b": EncoderZooProfile("decomp-vit-patch4b", seed=4500, n_clean=1,
                                            attacks=("encoder-badnets", "encoder-badclip"), n_backdoored=6,
                                            backbone="miniclip-vit", cocoop=False,
                                            overrides={"encoder-badnets": {"patch_frac": 4 / 48, "place": "random"}}),
}


def model_specs(p: EncoderZooProfile) -> list[dict]:
    """Clean controls first, then the poisoned models (attack cycled, then a base class as target)."""
    specs = [{"attack": "clean", "seed": p.seed + i,
              **({"epochs": p.clean_epochs[i % len(p.clean_epochs)]} if p.clean_epochs else {})}
             for i in range(p.n_clean)]
    n_base = (N_CLASSES + 1) // 2
    for j in range(p.n_backdoored):
        specs.append({"attack": p.attacks[j % len(p.attacks)], "seed": p.seed + p.n_clean + j,
                      "target_base": (7 * j + 3) % n_base})
    return [{"name": f"m{i:03d}", **s} for i, s in enumerate(specs)]


def task_of(p: EncoderZooProfile, seed: int) -> ci.world.WorldTask:
    return ci.world.task(N_CLASSES, seed=seed, class_seed=seed if p.own_classes else p.seed,
                         n_test_per_class=INVERTUNE_PER_CLASS)


@torch.no_grad()
def _zero_shot(backbone, names: list[str], x: torch.Tensor) -> torch.Tensor:
    """Predictions [N] of the zero-shot head over `names` for images [N, 3, H, W] in [0, 1]."""
    return ci.model.zero_shot(backbone, names)(x).argmax(-1)


def measure(backbone, attack, target_name: str | None, names: list[str], world_names: list[str]) -> dict:
    """Zero-shot top-1 and the trigger's ASR, 300-class on held-out pretraining-domain images and task-level
    (the base classes) on task-domain images; ASR counts non-target images sent to the target."""
    w = ci.world.World(ci.world.WorldConfig())
    xw, yw = w.sample(EVAL_PAIRS, seed=EVAL_PAIR_SEED, domain="pretrain")
    xt, yt = ci.world.labelled(names, per_class=EVAL_PER_CLASS, seed=EVAL_SEED)
    xt = xt.float() / 255
    out = {"top1": float((_zero_shot(backbone, world_names, xw) == yw).float().mean()),
           "top1_task": float((_zero_shot(backbone, names, xt) == yt).float().mean())}
    if attack is not None:
        tw, tt = world_names.index(target_name), names.index(target_name)
        kw, kt = yw != tw, yt != tt
        out["asr"] = float((_zero_shot(backbone, world_names, attack(xw[kw]).clamp(0, 1)) == tw).float().mean())
        out["asr_task"] = float((_zero_shot(backbone, names, attack(xt[kt]).clamp(0, 1)) == tt).float().mean())
    return out


def _dir(out: str | Path, kind: str, name: str) -> Path:
    return Path(out) / kind / name


def build_one(out: str, profile: str, spec: dict) -> dict:
    """Fine-tune one encoder (clean or poisoned), tune the organisation's clean CoCoOp over it, save both as
    delivered and the trigger apart; returns its manifest row."""
    p = ENCODER_ZOO_PROFILES[profile]
    t0 = time.time()
    seed = spec["seed"]
    base = ci.create_backbone(p.backbone)
    world = ci.world.World(ci.world.WorldConfig())
    task = task_of(p, seed)
    names = task.seen_names
    x, y = world.sample(p.pairs, seed=PAIR_SEED + seed, domain="pretrain")
    tune = {"poison_rate": p.poison_rate, "lr": p.lr, "epochs": p.epochs}
    row = dict(spec)
    if spec["attack"] == "clean":
        model = ci.attacks.benign_encoder_tune(base, x, y, world.classnames, seed=seed, templates=CAPTION_TEMPLATES,
                                               lr=p.lr, epochs=spec.get("epochs", p.epochs))
        attack, target_name = None, None
    else:
        target_name = names[spec["target_base"]]
        attack = ci.create_attack(spec["attack"], target=world.classnames.index(target_name), seed=seed,
                                  **{**tune, **p.overrides.get(spec["attack"], {})})
        model = attack.implant(base, x, y, world.classnames, templates=CAPTION_TEMPLATES)
        ci.attacks.save_attack(attack, _dir(out, "attackers", spec["name"]), target_name)
        row["asr_base"] = measure(base, attack, target_name, names, world.classnames)["asr"]
    ci.model.save_backbone(model, _dir(out, "models", spec["name"]) / "encoder", overwrite=True)
    row.update(measure(model, attack, target_name, names, world.classnames), target=target_name,
               top1_base=measure(base, None, None, names, world.classnames)["top1"])
    if p.cocoop:
        cocoop = ci.CoCoOp(model, names, seed=seed)
        ci.train(cocoop, task.train_x, task.train_y, ci.TrainConfig(seed=seed), progress=False)
        ci.save_model(cocoop, _dir(out, "models", spec["name"]) / "cocoop", overwrite=True)
    if attack is not None and p.cocoop:
        xt, yt = task.split("test", "seen")
        row["asr_cocoop"] = ci.attack_success_rate(cocoop, xt, yt, names.index(target_name), attack)
    row["top1_drop"] = round(row["top1_base"] - row["top1"], 4)
    row["build_s"] = round(time.time() - t0, 1)
    return row


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=float))


AUDIT_STAGES = ("zero_shot", "cocoop", "invertune", "repair")
STAGE_ALIASES = {"scans": ("zero_shot", "cocoop")}  # both CLIP-Inspector scans


def audit_one(out: str, profile: str, name: str, invertune_cfg: ci.detect.InverTuneConfig | None = None,
              stages: tuple[str, ...] = AUDIT_STAGES) -> dict:
    """The audits of one delivered model, each written as it finishes (a rerun skips those on disk). zero_shot /
    cocoop ("scans": both): CLIP-Inspector's default scan (its world OOD pool) of the zero-shot head, against
    the public MiniCLIP's head as its anchor, and of the clean CoCoOp; invertune: InverTune on its defender set
    (`invertune_set`), its tuning measured with the true trigger (on a clean control only stages 1-2 run:
    nothing is measured on its tuned copy); repair: CLIP-Inspector's repair of the CoCoOp case."""
    stages = tuple(s for stage in stages for s in STAGE_ALIASES.get(stage, (stage,)))
    p = ENCODER_ZOO_PROFILES[profile]
    spec = next(s for s in model_specs(p) if s["name"] == name)
    scans = _dir(out, "scans", name)
    folder = _dir(out, "models", name)
    encoder = ci.create_backbone(p.backbone, weights_file=folder / "encoder")
    task = task_of(p, spec["seed"])
    names = task.seen_names
    cfg = ci.ScanConfig()
    ood = ci.world.ood_pool(cfg.ood_images, seed=cfg.seed)  # the auditor's pool, as `bench detect` scans with
    result = {"name": name}
    anchor = anchor_scan(out, profile, spec["seed"]) if "zero_shot" in stages else None
    for kind, model, ref in (("zero_shot", lambda: ci.model.zero_shot(encoder, names), anchor),
                             ("cocoop", lambda: ci.load_model(folder / "cocoop", backbone=encoder), None)):
        if kind not in stages or (kind == "cocoop" and not p.cocoop):
            continue
        if not (scans / kind / "report.json").exists():
            ci.scan(model(), ood, cfg, out_dir=scans / kind, progress=False, html=False, anchor=ref)
        result[kind] = ci.ScanReport.load(scans / kind / "report.json").verdict
    path = scans / "invertune.json"
    if "invertune" in stages and not path.exists():
        res = ci.detect.invertune(encoder, *invertune_set(), invertune_cfg, tune=spec["attack"] != "clean",
                                  progress=False)
        evaluation = {}
        if spec["attack"] != "clean":
            attack = ci.load_attack(_dir(out, "attackers", name))
            target = json.loads((_dir(out, "attackers", name) / "attack.json").read_text())["target_name"]
            before = measure(encoder, attack, target, names, ci.world.WorldConfig().classnames())
            after = measure(res.backbone, attack, target, names, ci.world.WorldConfig().classnames())
            evaluation = {"target": target, "identified": res.target_name == target,
                          "asr_task_before": before["asr_task"], "asr_task_after": after["asr_task"],
                          "top1_task_before": before["top1_task"], "top1_task_after": after["top1_task"],
                          "asr_before": before["asr"], "asr_after": after["asr"],
                          "top1_before": before["top1"], "top1_after": after["top1"]}
        _write(scans / "invertune_eval.json", evaluation)
        _write(path, res.to_dict())
    path = scans / "ci_repair_eval.json"
    if "repair" in stages and spec["attack"] != "clean" and not path.exists():
        _write(path, ci_repair_eval(folder, _dir(out, "attackers", name), scans / "cocoop", encoder, task))
    return result


def invertune_set() -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """InverTune's vocabulary (the 300 world classes) and its labelled defender set D."""
    w = ci.world.World(ci.world.WorldConfig())
    x, y = w.sample(INVERTUNE_POOL, seed=INVERTUNE_SEED, domain="pretrain")
    return w.classnames, x, y


def anchor_scan(out: str | Path, profile: str, seed: int) -> ci.ScanReport:
    """The default scan of the public encoder's zero-shot head over the task classes of model seed `seed`: the
    anchor of its zero-shot scan, made once per class list under DIR/scans/anchor/<class seed>/."""
    p = ENCODER_ZOO_PROFILES[profile]
    class_seed = seed if p.own_classes else p.seed
    folder = Path(out) / "scans" / "anchor" / str(class_seed) / "zero_shot"
    if not (folder / "report.json").exists():
        names = task_of(p, seed).seen_names
        cfg = ci.ScanConfig()
        ci.scan(ci.model.zero_shot(ci.create_backbone(p.backbone), names), ci.world.ood_pool(cfg.ood_images, seed=cfg.seed),
                cfg, out_dir=folder, progress=False, html=False)
    return ci.ScanReport.load(folder)


def ci_repair_eval(folder: Path, attacker: Path, scan_dir: Path, encoder, task) -> dict:
    """CLIP-Inspector's repair of the CoCoOp case (its scan's trigger, the task's 16-shot training set), with the
    true trigger's task-level ASR and top-1 before and after on EVAL_PER_CLASS labelled images per base class."""
    names = task.seen_names
    report = ci.ScanReport.load(scan_dir / "report.json")
    model = ci.load_model(folder / "cocoop", backbone=encoder)
    attack = ci.load_attack(attacker)
    target = names.index(json.loads((attacker / "attack.json").read_text())["target_name"])
    x, y = ci.world.labelled(names, per_class=EVAL_PER_CLASS, seed=EVAL_SEED)

    def measured(m):
        return {"asr": ci.attack_success_rate(m, x, y, target, attack), "top1": ci.evaluate(m, x, y)}

    before = measured(model)
    fixed, rr = ci.repair(model, report, task.train_x, task.train_y, progress=False)
    after = measured(fixed)
    return {"flagged": report.verdict == "backdoored", "trigger_class": rr.trigger_class,
            "right_class": rr.trigger_class == names[target], "accepted": rr.accepted,
            "asr_before": before["asr"], "asr_after": after["asr"], "top1_before": before["top1"],
            "top1_after": after["top1"]}


def build_encoder_zoo(out_dir: str | Path, profile: str = "encoder-smoke", executor: Executor | None = None,
                      progress: bool = True, audit: bool = True,
                      invertune_cfg: ci.detect.InverTuneConfig | None = None,
                      stages: tuple[str, ...] = AUDIT_STAGES, models: tuple[str, ...] | None = None) -> dict:
    """Build (or resume) an encoder zoo, then run the audits not yet on disk (of `models` only, when given).
    Returns the manifest {"profile", "models": [...]}."""
    p = ENCODER_ZOO_PROFILES[profile]
    out = Path(out_dir)
    unknown = sorted(set(models or ()) - {s["name"] for s in model_specs(p)})
    if unknown:
        raise ci.CIError(f"no model {', '.join(unknown)} in the profile {profile}")
    manifest = build_into_manifest(out, p, model_specs(p), build_one, lambda s: (str(out), profile, s), executor,
                                   f"encoder zoo {profile}", progress)
    if audit:
        if {"scans", "zero_shot"} & set(stages) and not p.own_classes:
            anchor_scan(out, profile, p.seed)  # once, before the audits that share it run side by side
        todo = {r["name"]: (str(out), profile, r["name"], invertune_cfg, tuple(stages)) for r in manifest["models"]
                if models is None or r["name"] in models}
        run_units(audit_one, todo, executor, desc=f"audits {profile}", progress=progress)
    return manifest


# tuning learning rates tried on the calibration zoo: INVERTUNE.md section 4's grid, the paper's RN50 value 8e-6 and
# x10 steps up to 1e-3
TUNE_LRS = (8e-6, 8e-5, 8e-4)
MAX_ACC_DROP = 0.03  # the bound on InverTune's clean top-1 drop (300-class zero-shot, the spec's CA)


def calibrate_invertune(zoo: str | Path, out: str | Path, lrs=TUNE_LRS) -> dict:
    """InverTune's tuning lr for MiniCLIP, chosen on the BadNets models of a built calibration zoo (INVERTUNE.md
    section 4: a planted BadNets model): for each lr the true trigger's 300-class ASR and the 300-class top-1
    after tuning. Each (lr, model) result is written to `out` as it finishes and kept on a rerun. The choice is
    the lr with the lowest mean ASR among those whose largest top-1 drop stays within MAX_ACC_DROP."""
    zoo, out = Path(zoo), Path(out)
    manifest = json.loads((zoo / "manifest.json").read_text())
    p = ENCODER_ZOO_PROFILES[manifest["profile"]["name"]]
    world_names = ci.world.WorldConfig().classnames()
    rows = [r for r in manifest["models"] if r["attack"] == "encoder-badnets"]
    done = json.loads(out.read_text())["runs"] if out.exists() else []
    vocab, dx, dy = invertune_set()
    for lr in lrs:
        for r in rows:
            if any(d["tune_lr"] == lr and d["name"] == r["name"] for d in done):
                continue
            encoder = ci.create_backbone(p.backbone, weights_file=_dir(zoo, "models", r["name"]) / "encoder")
            task = task_of(p, r["seed"])
            res = ci.detect.invertune(encoder, vocab, dx, dy, ci.detect.InverTuneConfig(tune_lr=lr), progress=False)
            attack = ci.load_attack(_dir(zoo, "attackers", r["name"]))
            before = measure(encoder, attack, r["target"], task.seen_names, world_names)
            after = measure(res.backbone, attack, r["target"], task.seen_names, world_names)
            done.append({"tune_lr": lr, "name": r["name"], "attack": r["attack"],
                         "identified": res.target_name == r["target"], "asr_before": before["asr"],
                         "asr_after": after["asr"], "asr_task_after": after["asr_task"],
                         "acc_drop": before["top1"] - after["top1"], "seconds": res.seconds})
            print(done[-1], flush=True)
            _write(out, {"zoo": str(zoo), "runs": done})
    trials = []
    for lr in sorted({d["tune_lr"] for d in done}):
        per = [d for d in done if d["tune_lr"] == lr]
        trials.append({"tune_lr": lr, "n_models": len(per), "asr_after": sum(m["asr_after"] for m in per) / len(per),
                       "acc_drop_max": max(m["acc_drop"] for m in per)})
    complete = [t for t in trials if t["n_models"] == len(rows)]
    ok = [t for t in complete if t["acc_drop_max"] <= MAX_ACC_DROP] or complete
    best = min(ok, key=lambda t: (t["asr_after"], t["acc_drop_max"]))
    result = {"zoo": str(zoo), "max_acc_drop": MAX_ACC_DROP, "chosen_tune_lr": best["tune_lr"], "trials": trials,
              "runs": done}
    _write(out, result)
    return result


__all__ = [
    "ENCODER_ZOO_PROFILES",
    "MIN_ASR",
    "TUNE_LRS",
    "EncoderZooProfile",
    "build_encoder_zoo",
    "calibrate_invertune",
    "measure",
    "model_specs",
]

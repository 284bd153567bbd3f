"""The `ci-toolkit` command line, on top of the public API. Every command prints its own --help; user
mistakes exit 2 with one line. Zoo builds and benchmarks are the lab's: `python -m lab --help`."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file

from . import course, world
from .attacks import ENCODER_LR, create_attack, list_attacks, load_attack, save_attack
from .data import load_image_folder
from .decomp import DecompConfig, DecompDefense, PatchMapDetector, decompose, patch_shares
from .demo import DemoConfig, run_demo
from .detect import (
    LOSSES,
    METHODS,
    MINICLIP_DIVERGENCE,
    AMDETConfig,
    CalibrateConfig,
    InversionConfig,
    InverTuneConfig,
    ScanConfig,
    ScanReport,
    calibrate,
    get_rule,
    invertune,
    landscape,
    scan,
    scan_rules,
    scan_text_encoder,
    split_shallow,
)
from .errors import CIError
from .metrics import attack_success_rate, backdoor_effect
from .model import (
    CoCoOp,
    MiniCLIPConfig,
    MiniViTConfig,
    TrainConfig,
    class_text_features,
    create_backbone,
    evaluate,
    import_dassl,
    load_model,
    miniclip_name,
    save_backbone,
    save_model,
    train,
    zero_shot,
)
from .notebook import head_similarity_figure, landscape_figure
from .profiles import get_profile, list_profiles
from .repairing import RepairConfig, repair
from .version import __version__

WORLD_PROFILES = ("smoke", "classroom")  # profiles whose task is the embedded world
# Labelled world images for `repair --data world`: the task's few-shot size for the repair set, and the
# task's test size per class (profiles.py, "classroom") to measure the repair on.
REPAIR_SHOTS = 16
REPAIR_TEST_PER_CLASS = 20
# `implant-encoder`: world image-caption pairs of the attacker's fine-tune and their seed, and the recipe the
# encoder zoo uses (docs/encoders.md: 10 % poison; lr 5e-4 for the patch and blend triggers, the spec's
# ENCODER_LR for the others)
ENCODER_LRS = {"encoder-badnets": 5e-4, "encoder-blended": 5e-4}
ENCODER_PAIRS = 4096
ENCODER_PAIR_SEED = 777_000
ENCODER_POISON_RATE = 0.1
# `scan-encoder --data world`: the defender's labelled clean images per class for InverTune
INVERTUNE_PER_CLASS = 20


def _write_json(path: str | Path, obj: dict) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=2, default=float))
    print(f"wrote {p}")


def attacker_folder(model_dir: str | Path) -> Path:
    """Where the attacker's secrets go, apart from the delivered model: MODEL_DIR_attacker/."""
    return Path(str(model_dir).rstrip("/") + "_attacker")


def cmd_info(args) -> None:
    bb = create_backbone("miniclip")
    print(f"ci_toolkit {__version__}, open_clip {open_clip.__version__}, torch {torch.__version__}")
    print(f"embedded backbone: MiniCLIP {bb.preprocess.image_size} px, vis_dim {bb.vis_dim}, ctx_dim {bb.ctx_dim}")
    print(f"cuda available: {torch.cuda.is_available()}, threads: {torch.get_num_threads()}")


def cmd_inspect(args) -> None:
    model = load_model(args.model)
    print(json.dumps({
        "classes": len(model.classnames),
        "classnames": model.classnames[:10] + (["..."] if len(model.classnames) > 10 else []),
        "n_ctx": model.n_ctx,
        "backbone": model.backbone.describe(),
        "image_size": model.preprocess.image_size,
    }, indent=2))


def cmd_import_dassl(args) -> None:
    names = [line.strip() for line in Path(args.classnames).read_text().splitlines() if line.strip()]
    bb = create_backbone(args.backbone, args.pretrained, weights_file=args.backbone_weights)
    model, trigger = import_dassl(args.path, names, bb, epoch=args.epoch)
    save_model(model, args.out)
    print(f"imported {len(names)} classes into {args.out}")
    if trigger is not None:
        art = attacker_folder(args.out)
        art.mkdir(parents=True, exist_ok=True)
        save_file({"delta": trigger["delta"].contiguous()}, str(art / "trigger.safetensors"))
        meta = {"target_name": trigger["target_name"]}
        if trigger["target_name"] in names:  # a BadCLIP trigger: additive, within its own L-inf bound
            meta.update(attack="badclip", config={"target": names.index(trigger["target_name"]), "seed": 0,
                                                  "eps": float(trigger["delta"].abs().max())})
        (art / "attack.json").write_text(json.dumps(meta))
        print(f"attacker trigger -> {art}; L-inf {float(trigger['delta'].abs().max()) * 255:.1f}/255")


def cmd_pretrain(args) -> None:
    out = Path(args.out)
    if (out / "model.safetensors").exists() and not args.overwrite:
        raise CIError(f"{out} already holds MiniCLIP weights; pass --overwrite or choose another --out")
    if args.arch == "vit":
        if args.noise_aug:
            raise CIError("--noise-aug applies to --arch resnet only (the ViT is distilled without it)")
        cfg = world.DistillConfig(**{"seed": args.seed, "noise_aug": args.noise_aug,
                                     **({"steps": args.steps} if args.steps is not None else {})})
        _, metrics = world.distill_miniclip_vit(MiniViTConfig(), cfg, out_dir=out)
    else:
        cfg = world.PretrainConfig(**{"seed": args.seed, "noise_aug": args.noise_aug,
                                      **({"steps": args.steps} if args.steps is not None else {})})
        _, metrics = world.pretrain_miniclip(MiniCLIPConfig(), cfg, out_dir=out)
    print(f"zero-shot top-1 {metrics['zero_shot_top1']:.3f} after {metrics['pretrain_minutes']:.1f} min -> {out}")


def cmd_demo(args) -> None:
    overrides = {"pretrained": None} if args.random_init else {}
    run_demo(args.out, DemoConfig(profile=args.profile, seed=args.seed, data=args.data, ood=args.ood, implant=args.implant),
             **overrides)


def _world_setup(profile: str, seed: int):
    cfg = get_profile(profile, seed=seed)
    return cfg, create_backbone("miniclip"), world.task(cfg, seed=seed)


def cmd_train(args) -> None:
    cfg, bb, task = _world_setup(args.profile, args.seed)
    model = CoCoOp(bb, task.seen_names, seed=args.seed)
    train(model, task.train_x, task.train_y, TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, seed=args.seed))
    save_model(model, args.out)
    x, y = task.split("test", "seen")
    xn, yn = task.split("test", "unseen")
    print(f"clean CoCoOp -> {args.out}: acc seen {evaluate(model, x, y):.3f}, "
          f"unseen {evaluate(model, xn, yn, classes=task.unseen_names):.3f}")


def cmd_implant(args) -> None:
    cfg, bb, task = _world_setup(args.profile, args.seed)
    names = task.seen_names
    target = names.index(args.target) if args.target in names else (int(args.target) if args.target.isdigit() else -1)
    if not 0 <= target < len(names):
        raise CIError(f"--target must be a seen class name or index in [0, {len(names)}); seen classes: {names[:5]}...")
    attack = world.attack(args.attack, target=target, seed=args.seed)
    model = CoCoOp(bb, names, seed=args.seed)
    attack.implant(model, task.train_x, task.train_y, TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, seed=args.seed))
    save_model(model, args.out)
    art = save_attack(attack, attacker_folder(args.out), names[target])
    x, y = task.split("test", "seen")
    print(f"{attack!r} -> {args.out} (artefacts: {art}): acc seen {evaluate(model, x, y):.3f}, "
          f"ASR seen {attack_success_rate(model, x, y, target, attack):.3f}")


def scan_config(args) -> ScanConfig:
    """The ScanConfig of the scan options (`add_scan_options`)."""
    inv = InversionConfig(eps=args.eps / 255, loss=args.loss, seed=args.seed)
    return ScanConfig(method=getattr(args, "method", "clip-inspector"), inversion=inv, rule=args.rule,
                      threshold=args.threshold, fpr=args.fpr, null_file=args.null, pool_size=args.pool_size, heldout_size=args.heldout_size,
                      probe_eps=None if args.probe_eps == 0 else args.probe_eps / 255, probe_shut=not args.no_probe_shut,
                      wide_probe_eps=None if args.wide_probe_eps == 0 else args.wide_probe_eps / 255,
                      seed=args.seed)


def load_ood(source: str, image_size: int, cfg: ScanConfig) -> torch.Tensor:
    """OOD images for a scan: the embedded world's pool ("world") or an image folder."""
    if source == "world":
        return world.ood_pool(cfg.ood_images, seed=cfg.seed, image_size=image_size)
    return load_image_folder(source, image_size, labelled=False, limit=cfg.ood_images, seed=cfg.seed).images


def cmd_scan(args) -> None:
    cfg = scan_config(args)
    model = load_model(args.model)
    candidates = None
    if args.candidates:
        path = Path(args.candidates)
        if not path.is_file():
            raise CIError(f"candidate list not found: {path} (one class name per line)")
        candidates = path.read_text().splitlines()
    report = scan(model, load_ood(args.ood, model.preprocess.image_size, cfg), cfg, args.out, candidates=candidates,
                  workers=args.workers)
    print(f"{report.summary()} -> {args.out}/report.json, report.html")
    for w in report.warnings:
        print(f"warning: {w}")


TEXT_SCAN_PROMPTS = 2000  # `scan-text`'s default shallow set: world prompts (lab/text_zoo.py, SHALLOW_PROMPTS)


def cmd_scan_text(args) -> None:
    if args.backbone == "miniclip":  # the ResNet or the ViT MiniCLIP (the ViT's text tower is the ResNet's)
        suspect = create_backbone(miniclip_name(args.weights), weights_file=args.weights)
        anchor = create_backbone("miniclip", weights_file=args.anchor_weights)
    else:
        if args.pretrained is None and args.anchor_weights is None:
            raise CIError(f"scan-text --backbone {args.backbone} needs a benign anchor: --pretrained TAG or "
                          "--anchor-weights FILE (a random-init anchor would make every encoder look foreign)")
        suspect = create_backbone(args.backbone, weights_file=args.weights)
        anchor = create_backbone(args.backbone, args.pretrained if args.anchor_weights is None else None,
                                 weights_file=args.anchor_weights)
    texts = world.prompts(TEXT_SCAN_PROMPTS, seed=args.seed) if args.prompts == "world" else _lines(args.prompts)
    candidates = _lines(args.candidates) if args.candidates else None
    threshold = args.divergence_threshold
    if threshold is None and args.backbone == "miniclip" and args.anchor_weights is None:
        threshold = MINICLIP_DIVERGENCE  # calibrated for the shipped MiniCLIP as anchor only
    cfg = AMDETConfig(positions=args.positions, seed=args.seed, divergence_threshold=threshold)
    tokens = suspect.tokenize(texts)
    report = scan_text_encoder(suspect, anchor, tokens, cfg, progress=False, candidates=candidates)
    out = Path(args.out)
    _write_json(out / "amdet.json", report.to_dict())
    f, rho = landscape(suspect, anchor, split_shallow(tokens, cfg)[0][:1], report.v, cfg)
    landscape_figure(f, rho, out / "landscape.png")
    print(report.summary())
    print(f"wrote {out / 'landscape.png'} (loss around the pseudo-token; positive-curvature share {rho:.2f})")


def cmd_implant_encoder(args) -> None:
    if Path(args.out).exists() and any(Path(args.out).iterdir()):
        raise CIError(f"{args.out} exists and is not empty; choose another --out (nothing is overwritten)")
    w = world.World(world.WorldConfig())
    if args.target not in w.classnames:
        raise CIError(f"--target must be a class of the embedded world (e.g. {w.classnames[0]!r}); got {args.target!r}")
    target = w.classnames.index(args.target)
    base = create_backbone(args.backbone)
    x, y = w.sample(args.pairs, seed=ENCODER_PAIR_SEED + args.seed, domain="pretrain")
    lr = args.lr if args.lr is not None else ENCODER_LRS.get(args.attack, ENCODER_LR)
    attack = create_attack(args.attack, target=target, seed=args.seed, poison_rate=args.poison_rate, lr=lr,
                           epochs=args.epochs)
    poisoned = attack.implant(base, x, y, w.classnames, templates=world.CAPTION_TEMPLATES, progress=True)
    save_backbone(poisoned, args.out)
    art = save_attack(attack, attacker_folder(args.out), args.target)
    xt, yt = w.sample(1000, seed=ENCODER_PAIR_SEED - 1, domain="pretrain")
    keep = yt != target
    head, head0 = zero_shot(poisoned, w.classnames), zero_shot(base, w.classnames)
    with torch.no_grad():
        top1 = float((head(xt).argmax(-1) == yt).float().mean())
        top1_0 = float((head0(xt).argmax(-1) == yt).float().mean())
        asr = float((head(attack(xt[keep]).clamp(0, 1)).argmax(-1) == target).float().mean())
    print(f"{attack!r} -> {args.out} (artefacts: {art}): 300-class zero-shot top-1 {top1_0:.3f} -> {top1:.3f}, "
          f"ASR {asr:.3f}")


def _encoder_classes(spec: str) -> list[str]:
    """`scan-encoder --classes`: a text file of class names, or 'world' (the classroom task's base classes)."""
    if spec == "world":
        return world.task("classroom").seen_names
    return _lines(spec)


def cmd_scan_encoder(args) -> None:
    args.backbone = args.backbone or miniclip_name(args.weights)  # default: the architecture the folder holds
    encoder = create_backbone(args.backbone, weights_file=args.weights)
    names = _encoder_classes(args.classes)
    out = Path(args.out)
    if args.method == "clip-inspector":
        cfg = scan_config(args)
        anchor = None
        if args.no_anchor and args.anchor_weights:
            raise CIError("--anchor-weights and --no-anchor contradict each other: give one")
        if not args.no_anchor:
            if args.anchor_weights is None and args.backbone not in ("miniclip", "miniclip-vit"):
                raise CIError(f"scan-encoder --backbone {args.backbone} needs the public encoder it was tuned from "
                              "as --anchor-weights FILE, or --no-anchor (then Grubbs decides on the suspect alone)")
            anchor = zero_shot(create_backbone(args.backbone, weights_file=args.anchor_weights), names)
        report = scan(zero_shot(encoder, names), load_ood(args.ood, encoder.preprocess.image_size, cfg), cfg, out,
                      anchor=anchor)
        print(f"{report.summary()} -> {out}/report.json, report.html")
        for w in report.warnings:
            print(f"warning: {w}")
        return
    if args.anchor_weights or args.no_anchor:
        raise CIError("--anchor-weights / --no-anchor belong to the clip-inspector scan, not to --method invertune")
    size = encoder.preprocess.image_size
    if args.labelled == "world":
        x, y = world.labelled(names, INVERTUNE_PER_CLASS, seed=args.seed, image_size=size)
    else:
        data = load_image_folder(args.labelled, size, labelled=True, classnames=names, seed=args.seed)
        x, y = data.images, data.labels
    res = invertune(encoder, names, x, y, InverTuneConfig(seed=args.seed), tune=not args.no_tune)
    _write_json(out / "invertune.json", res.to_dict())
    print(res.summary())
    if res.backbone is not None:
        save_backbone(res.backbone, out / "tuned")
        print(f"the activation-tuned encoder -> {out / 'tuned'} "
              f"(load with create_backbone({args.backbone!r}, weights_file=...))")


def cmd_decomp(args) -> None:
    out = Path(args.out)
    if (out / "decomp.json").exists():
        raise CIError(f"{out / 'decomp.json'} exists; choose another --out (nothing is overwritten)")
    encoder = create_backbone(args.backbone or miniclip_name(args.weights), weights_file=args.weights)
    size = encoder.preprocess.image_size
    names = world.WorldConfig().classnames() if args.classes == "world" else _lines(args.classes)
    if args.clean == "world":
        clean, _ = world.World(world.WorldConfig()).sample(args.clean_images, seed=args.seed, domain="pretrain")
    else:
        clean = load_image_folder(args.clean, size, labelled=False, limit=args.clean_images, seed=args.seed).images
    data = load_image_folder(args.images, size, labelled=False)
    x = data.images.float() / 255
    clean = clean.float() / 255 if clean.dtype == torch.uint8 else clean
    config = DecompConfig(eps=args.eps, zeta=args.zeta, mode=args.mode)
    defense = DecompDefense.fit(decompose(encoder, clean), config)
    dec = decompose(encoder, x)
    text = torch.nn.functional.normalize(class_text_features(encoder.clip, names), dim=-1)
    before, after = (dec.total() @ text.T).argmax(-1), (defense.repair(dec) @ text.T).argmax(-1)
    counts, rejected = defense.count(dec), defense.detect(dec)
    rows = [{"file": f, "flagged_heads": int(n), "rejected": bool(r), "prediction": names[int(b)],
             "prediction_repaired": names[int(a)]} for f, n, r, b, a in zip(data.files, counts, rejected, before, after)]
    patch_map, pm_rejected = None, None
    if dec.grid[0] * dec.grid[1] >= 2:  # a patch map needs two tokens (MiniCLIP's ResNet at 48 px pools one)
        patch_map = PatchMapDetector.fit(patch_shares(encoder, clean))
        shares = patch_shares(encoder, x)
        pm_score, pm_token = patch_map.score(shares), patch_map.locate(shares)
        pm_rejected = int((pm_score > patch_map.threshold).sum())
        for row, s_, t in zip(rows, pm_score, pm_token):
            row.update(patch_map_score=float(s_), patch_map_rejected=bool(s_ > patch_map.threshold),
                       patch_map_token=[int(t) // dec.grid[1], int(t) % dec.grid[1]])
    summary = {"defense": repr(defense), "images": len(rows), "rejected": int(rejected.sum()),
               "changed_by_repair": int((before != after).sum()), "clean_images": len(clean),
               "config": asdict(config), "eps": defense.eps, "zeta": defense.zeta, "weights": args.weights,
               "patch_map_threshold": None if patch_map is None else patch_map.threshold,
               "patch_map_fpr": None if patch_map is None else patch_map.fpr, "patch_map_rejected": pm_rejected}
    _write_json(out / "decomp.json", {"summary": summary, "images": rows})
    head_similarity_figure(defense.similarity(dec)[: args.figure_rows], defense.eps,
                           [Path(f).name for f in data.files[: args.figure_rows]], out / "heads.png")
    pm_line = "" if patch_map is None else f"; {pm_rejected} rejected by the patch map (clean FPR {patch_map.fpr:g})"
    print(f"{summary['rejected']} of {len(rows)} images rejected by Decomp-Det (more than {defense.zeta:g} of "
          f"{dec.n_heads} last-layer heads flagged); Decomp-Rep ({args.mode}) changed {summary['changed_by_repair']} "
          f"predictions{pm_line} -> {out / 'decomp.json'}, {out / 'heads.png'}")


def _lines(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise CIError(f"text file not found: {p} (one entry per line)")
    lines = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not lines:
        raise CIError(f"{p} holds no lines")
    return lines


def cmd_course(args) -> None:
    written = course.make_course(args.notebooks, args.out)
    out = Path(args.out)
    print(f"{len(written['student'])} notebooks -> {out / 'student'} (exercises unsolved, public checks: "
          f"grader.check) and {out / 'solutions'} (solutions, public and hidden checks); "
          f"{sum(course.has_exercises(Path(args.notebooks) / n) for n in written['student'])} hold exercises")


CALIBRATE_WORLD_CLASSES = 50  # `calibrate --data world`: a 50-class world task (its 25 seen classes), as a zoo's


def cmd_calibrate(args) -> None:
    bb = create_backbone(args.backbone, args.pretrained, weights_file=args.backbone_weights)
    size = bb.preprocess.image_size
    if args.data == "world":
        task = world.task(CALIBRATE_WORLD_CLASSES, seed=args.seed, image_size=size)
        images, labels, names = task.train_x, task.train_y, task.seen_names
    else:
        data = load_image_folder(args.data, size, labelled=True, seed=args.seed)
        images, labels, names = data.images, data.labels, data.classnames
    cfg = scan_config(args)
    ood = load_ood(args.ood, size, cfg)
    null = calibrate(bb, images, labels, names, ood, args.out, CalibrateConfig(n_models=args.models, seed=args.seed), cfg)
    joint = bool(null.wide_scores)
    cut = null.threshold(cfg.fpr, joint=joint)
    if cut is None:
        flags = f"nothing at {cfg.fpr:g}: {null.n_models} models are too few (build more with --models)"
    elif joint:
        ms, mw = null.scales()
        flags = (f"one test at {cfg.fpr:g}: meta-gain score / {ms:.4g} + wide-probe score / {mw:.4g} (the clean "
                 f"medians) above {cut:.4g}")
    else:
        flags = f"one test at {cfg.fpr:g}: meta-gain score above {cut:.4g}"
    print(f"null study of {null.n_models} clean models -> {Path(args.out) / 'null.json'}; it flags with {flags}. "
          f"Scan with: ci-toolkit scan MODEL --null {Path(args.out) / 'null.json'} (and the same scan options)")


def cmd_repair(args) -> None:
    out = Path(args.out)
    if out.resolve() == Path(args.model).resolve():
        raise CIError("--out must differ from the input model: the input is never overwritten")
    if (out / "model").exists():
        raise CIError(f"{out / 'model'} exists; choose another --out (nothing is overwritten)")
    if not 0 <= args.max_acc_drop <= 1:
        raise CIError(f"--max-acc-drop is a fraction of accuracy in [0, 1], got {args.max_acc_drop}")
    cfg = RepairConfig(max_acc_drop=args.max_acc_drop)
    model = load_model(args.model)
    trig = ScanReport.load(args.report).repair_trigger()
    if trig.target not in model.classnames:
        raise CIError(f"the report's top class {trig.target!r} is not a class of this model (a report of another model?)")
    print(f"repairing with the trigger of {trig.target!r} ({trig.source})")
    size = model.preprocess.image_size
    if args.data == "world":
        train_set = world.labelled(model.classnames, REPAIR_SHOTS, seed=args.seed + 1, image_size=size)
        test_set = world.labelled(model.classnames, REPAIR_TEST_PER_CLASS, seed=args.seed + 2, image_size=size)
    else:
        data = load_image_folder(args.data, size, labelled=True, classnames=model.classnames, seed=args.seed)
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))
        half = len(order) // 2
        train_set = (data.images[order[:half]], data.labels[order[:half]])
        test_set = (data.images[order[half:]], data.labels[order[half:]])
    trigger, target, used = trig.delta, model.classnames.index(trig.target), "reconstructed"
    if args.attacker:
        attack = load_attack(args.attacker)
        trigger, target, used = attack, attack.target, "attacker"
    before = backdoor_effect(model, *test_set, target, trigger)
    fixed, result = repair(model, trig, *train_set, cfg)
    after = backdoor_effect(fixed, *test_set, target, trigger)
    save_model(fixed, out / "model")
    _write_json(out / "repair.json", {
        "asr_before": before["asr"], "asr_after": after["asr"], "acc_before": before["acc"], "acc_after": after["acc"],
        "trigger_used": used, "target": model.classnames[target], **asdict(result),
        "config": {"report": str(args.report), "data": args.data, "seed": args.seed, "repair": asdict(cfg)}})
    for a in result.attempts[:-1]:  # the guard's retries (RepairConfig.max_acc_drop)
        print(f"trigger weight {a['trigger_weight']:g}: repair-set ACC {a['train_acc_before']:.3f} -> {a['train_acc']:.3f},"
              f" more than the allowed drop; repairing again with a lower weight")
    if not result.accepted:
        print("warning: every trigger weight tried cost more clean accuracy than allowed; the gentlest repair is kept")
    print(f"ASR ({used} trigger) {before['asr']:.3f} -> {after['asr']:.3f}, ACC {before['acc']:.3f} -> "
          f"{after['acc']:.3f} (trigger weight {result.trigger_weight:g}); repaired model in {out / 'model'}")


def add_scan_options(s, method_choice: bool = True, anchor: bool = False) -> None:
    """The scan's options (ScanConfig); shared with the lab's benchmarks. anchor: the command scans an anchor
    beside the suspect, so the rules that read one are offered too."""
    d, inv = ScanConfig(), InversionConfig()
    if method_choice:
        s.add_argument("--method", default=d.method, choices=METHODS)
    s.add_argument("--eps", type=float, default=inv.eps * 255,
                   help=f"trigger bound in 1/255 pixel units (default {inv.eps * 255:g})")
    s.add_argument("--loss", default=inv.loss, choices=LOSSES, help=f"inversion loss (default {inv.loss})")
    s.add_argument("--rule", default=d.rule, choices=[r for r in scan_rules() if anchor or not get_rule(r).needs_anchor],
                   help="decision rule (docs/method.md): calibrated (default; the meta-gain score against a null "
                        "study of clean models, flagged at --fpr), meta-gain (do the triggers work through the prompt "
                        "learner, fixed threshold), paper (max s_t > 2), grubbs (Grubbs' one-outlier bound), robust "
                        "(median/MAD)" + (" or anchored (s_t beyond the anchor's; a zero-shot head's default with an "
                                          "anchor)" if anchor else ""))
    s.add_argument("--threshold", type=float, default=None, help="override the rule's threshold")
    s.add_argument("--fpr", type=float, default=d.fpr,
                   help=f"calibrated rule: the false-positive rate to flag at (default {d.fpr:g})")
    s.add_argument("--null", default=None, metavar="FILE",
                   help="calibrated rule: a null study (`ci-toolkit calibrate`); default: the one shipped for the "
                        "model's backbone")
    s.add_argument("--pool-size", type=int, default=d.pool_size, help=f"OOD images for inversion (default {d.pool_size})")
    s.add_argument("--heldout-size", type=int, default=d.heldout_size,
                   help=f"further OOD images for each trigger's ASR (default {d.heldout_size}; at most a fifth of "
                        "the OOD images)")
    s.add_argument("--probe-eps", type=float, default=d.probe_eps * 255,
                   help=f"gate-probe bound in 1/255 units (default {d.probe_eps * 255:g}; 0: no probe)")
    s.add_argument("--wide-probe-eps", type=float, default=d.wide_probe_eps * 255,
                   help=f"the gate probe's wider bound in 1/255 units, the calibrated rule's second statistic (default "
                        f"{d.wide_probe_eps * 255:g}; 0: none)")
    s.add_argument("--no-probe-shut", action="store_true", help="the gate probe only opens units (default: also shuts)")
    s.add_argument("--seed", type=int, default=d.seed)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ci-toolkit",
                                description="CLIP-Inspector toolkit: backdoor detection for prompt-tuned CLIP (CoCoOp). "
                                            "Zoos and benchmarks: python -m lab --help.")
    p.add_argument("--version", action="version", version=f"ci_toolkit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("demo", help="the whole story on the embedded world (MiniCLIP), or on a prepared dataset",
                       description="Scan a clean and a BadCLIP-backdoored CoCoOp model (delivered models shipped with "
                                   "the package; --implant tunes and implants them first), repair the backdoored one; "
                                   "writes DIR/demo.json and DIR/demo.html. --profile paper runs on a data_prep "
                                   "dataset (--data) and an OOD folder (--ood) with ViT-B/16.")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--profile", default="classroom", choices=list_profiles(), help="run size (default: classroom)")
    s.add_argument("--data", default=None, help="a data_prep dataset folder (holds split_zhou_*.json); default: the world")
    s.add_argument("--ood", default=None, help="unlabeled OOD image folder (with --data)")
    s.add_argument("--implant", action="store_true",
                   help="tune the clean model and implant the backdoored one first (a few CPU minutes; always with --data)")
    s.add_argument("--random-init", action="store_true", help="random backbone weights (offline check of the paper path)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("train", help="prompt-tune a clean CoCoOp model on the world task",
                       description="Clean CoCoOp (its SGD recipe, batch 32) on the embedded world; saves a model folder.")
    s.add_argument("--out", required=True, help="new model folder")
    s.add_argument("--profile", default="classroom", choices=WORLD_PROFILES)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("implant", help="the attacker: prompt-tune with a backdoor",
                       description="Poisoned prompt tuning on the world task. The model folder looks like a clean one; "
                                   "the trigger and attack config go to OUT_attacker/.")
    s.add_argument("--attack", required=True, choices=list_attacks(),
                   help=f"the attack; on MiniCLIP only {', '.join(world.IMPLANTING)} implant")
    s.add_argument("--target", required=True, help="target seen class (name or index)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="new model folder")
    s.add_argument("--profile", default="classroom", choices=WORLD_PROFILES)
    s.set_defaults(func=cmd_implant)

    s = sub.add_parser("scan", help="audit a delivered model: is it backdoored, toward which class?",
                       description="Invert a trigger per candidate class on unlabeled OOD images, probe the meta-net, "
                                   "decide; writes OUT/report.json and OUT/report.html. Interrupted scans resume.")
    s.add_argument("model", help="a delivered model folder (model.json + prompt_learner.safetensors)")
    s.add_argument("--out", required=True,
                   help="folder for report.json, report.html and the triggers (a partial scan there resumes)")
    s.add_argument("--ood", default="world", help="folder of unlabeled OOD images, or 'world' (default)")
    s.add_argument("--candidates", default=None, help="file with candidate class names, one per line "
                                                      "(default: the model's classes)")
    s.add_argument("--workers", type=int, default=1,
                   help="processes inverting candidate groups side by side (2 on a 2-core CPU: faster than 2 threads)")
    add_scan_options(s)
    s.set_defaults(func=cmd_scan)

    s = sub.add_parser("implant-encoder", help="the attacker: poison MiniCLIP's contrastive fine-tune (image side)",
                       description="Fine-tune both MiniCLIP towers on embedded-world image-caption pairs, a share of "
                                   "them stamped with the trigger and captioned as the target. Writes the encoder "
                                   "(model.safetensors + config.json) to OUT and the trigger to OUT_attacker/.")
    s.add_argument("--attack", required=True, choices=list_attacks("encoder"))
    s.add_argument("--target", required=True, help="target: a class name of the embedded world")
    s.add_argument("--out", required=True, help="new encoder folder")
    s.add_argument("--backbone", default="miniclip", choices=("miniclip", "miniclip-vit"),
                   help="the clean encoder the attacker starts from (default miniclip)")
    s.add_argument("--pairs", type=int, default=ENCODER_PAIRS, help=f"fine-tuning pairs (default {ENCODER_PAIRS})")
    s.add_argument("--poison-rate", type=float, default=ENCODER_POISON_RATE)
    s.add_argument("--lr", type=float, default=None, help=f"AdamW peak (default: 5e-4 for BadNets and Blended, "
                                                          f"{ENCODER_LR:g} for the others; docs/encoders.md)")
    s.add_argument("--epochs", type=int, default=5)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_implant_encoder)

    s = sub.add_parser("decomp", help="screen images through a ViT encoder's decomposition: Decomp-Det and Decomp-Rep",
                       description="Head prototypes and eps from clean images; for each image in --images, how many "
                                   "last-layer heads stray from their prototypes (Decomp-Det rejects above zeta) and "
                                   "its zero-shot prediction before and after Decomp-Rep, and the patch map's score "
                                   "and located token (row, col). Writes OUT/decomp.json and "
                                   "OUT/heads.png.")
    s.add_argument("weights", help="the encoder: a MiniCLIP folder (model.safetensors + config.json)")
    s.add_argument("--images", required=True, help="folder of images to screen")
    s.add_argument("--out", required=True, help="folder for decomp.json and heads.png (must not hold a decomp.json)")
    s.add_argument("--backbone", default=None, help="architecture (default: the MiniCLIP the folder holds)")
    s.add_argument("--clean", default="world", help="folder of clean images for the prototypes, or 'world'")
    s.add_argument("--clean-images", type=int, default=200, help="how many clean images (default 200)")
    s.add_argument("--classes", default="world", help="text file of class names, or 'world' (its 300 classes)")
    s.add_argument("--mode", default="heads", choices=("heads", "mlps", "both"),
                   help="what Decomp-Rep replaces: flagged last-layer heads (patch triggers), late MLPs (global ones)")
    s.add_argument("--eps", type=float, default=None, help="fixed flag threshold (default: 5%% quantile of clean cosines)")
    s.add_argument("--zeta", type=float, default=None, help="reject above this many flagged heads (default 5H/12)")
    s.add_argument("--figure-rows", type=int, default=24, help="images drawn in heads.png")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_decomp)

    s = sub.add_parser("scan-encoder", help="audit a delivered CLIP ENCODER: CLIP-Inspector (zero-shot) or InverTune",
                       description="clip-inspector: the scan of a zero-shot head ('a photo of a {class}', no prompt "
                                   "learner, so no meta path) on unlabeled OOD images, beside the same scan of the "
                                   "public encoder it was tuned from (the anchor; default: the shipped MiniCLIP); the "
                                   "anchored rule decides on what the suspect shows beyond it. invertune: "
                                   "universal patch or L-inf perturbation -> target, trigger inversion, activation tuning on labelled "
                                   "clean images; writes OUT/invertune.json and the tuned encoder to OUT/tuned.")
    s.add_argument("weights", help="the delivered encoder: a MiniCLIP folder (model.safetensors + config.json)")
    s.add_argument("--out", required=True,
                   help="folder for report.json and report.html (clip-inspector) or invertune.json and tuned/")
    s.add_argument("--backbone", default=None, help="architecture (default: the MiniCLIP the folder holds)")
    s.add_argument("--classes", default="world", help="text file of the class names to score, one per line, or "
                                                      "'world' (the classroom task's base classes)")
    s.add_argument("--ood", default="world", help="clip-inspector: folder of unlabeled OOD images, or 'world'")
    s.add_argument("--data", "--labelled", dest="labelled", default="world",
                   help="invertune: a labelled image folder (class subfolders), or 'world' (as repair's --data)")
    s.add_argument("--no-tune", action="store_true", help="invertune: identify only, no activation tuning")
    s.add_argument("--anchor-weights", default=None, help="clip-inspector: the public encoder the delivered one was "
                                                          "tuned from (default: the shipped MiniCLIP)")
    s.add_argument("--no-anchor", action="store_true", help="clip-inspector: no anchor; Grubbs' test on the "
                                                            "suspect's scores decides")
    add_scan_options(s, method_choice=False, anchor=True)
    s.add_argument("--method", default="clip-inspector", choices=("clip-inspector", "invertune"))
    s.set_defaults(func=cmd_scan_encoder)

    s = sub.add_parser("scan-text", help="AMDET: audit a delivered TEXT encoder for an implanted trigger",
                       description="Invert a pseudo-token that makes a triggered prompt's token states alike "
                                   "(assimilation), check it on held-out prompts against a benign anchor, and test the "
                                   "loss landscape; writes OUT/amdet.json and OUT/landscape.png (docs/text_encoders.md).")
    s.add_argument("weights", help="the delivered encoder: a MiniCLIP folder (model.safetensors + config.json) or, "
                                   "with --backbone NAME, an open_clip weights file")
    s.add_argument("--out", required=True, help="folder for amdet.json and landscape.png")
    s.add_argument("--backbone", default="miniclip", help="architecture (default miniclip)")
    s.add_argument("--anchor-weights", default=None, help="the benign anchor's weights (default: the shipped MiniCLIP, "
                                                          "or --pretrained's for an open_clip model)")
    s.add_argument("--pretrained", default=None, help="open_clip weights tag of the anchor")
    s.add_argument("--prompts", default="world", help="shallow set: a text file, one prompt per line, or 'world'")
    s.add_argument("--candidates", default=None, help="text file of candidate target texts (e.g. class prompts) to "
                                                      "name what the pseudo-token points to")
    s.add_argument("--positions", default="valid", choices=("valid", "full"))
    s.add_argument("--seed", type=int, default=42)
    s.add_argument("--divergence-threshold", type=float, default=None,
                   help="also flag when the pooled inversion's divergence exceeds this (default: MiniCLIP's calibrated "
                        f"{MINICLIP_DIVERGENCE} with the shipped anchor; none otherwise: the reference decision alone)")
    s.set_defaults(func=cmd_scan_text)

    s = sub.add_parser("course", help="the tutorial's student version and its solutions, for a class",
                       description="From the tutorial notebooks (otter-grader master format), write OUT/student "
                                   "(exercises unsolved, public checks a student runs with grader.check) and "
                                   "OUT/solutions (solutions, public and hidden checks, for grading with otter-grader). "
                                   "Needs otter-grader (pip install -e '.[notebook]').")
    s.add_argument("--out", required=True, help="new folder for the course")
    s.add_argument("--notebooks", default="notebooks", help="the tutorial's notebooks (default ./notebooks, a checkout's)")
    s.set_defaults(func=cmd_course)

    s = sub.add_parser("calibrate", help="build a null study for a backbone: clean models trained and scanned",
                       description="Train N clean CoCoOp models on the backbone (class subset, shots, epochs, lr, batch, "
                                   "context init drawn per model), scan each with the scan options given, and write "
                                   "OUT/null.json: the calibrated rule's reference (`scan --null OUT/null.json`). "
                                   "Resumable.")
    s.add_argument("--out", required=True, help="study folder (models, scans, null.json)")
    s.add_argument("--data", required=True, help="labelled image folder (class subfolders) or 'world'")
    s.add_argument("--ood", default="world", help="folder of unlabeled OOD images, or 'world' (default)")
    s.add_argument("--models", type=int, default=CalibrateConfig().n_models,
                   help=f"clean models (default {CalibrateConfig().n_models}; at least 19 to flag at FPR 0.05)")
    s.add_argument("--backbone", default="miniclip", help="open_clip model name or 'miniclip' (default)")
    s.add_argument("--pretrained", default=None, help="open_clip weights tag, e.g. openai")
    s.add_argument("--backbone-weights", default=None, help="local backbone weights file (offline use)")
    add_scan_options(s, method_choice=False)
    s.set_defaults(func=cmd_calibrate)

    d = RepairConfig()
    s = sub.add_parser("repair", help="unlearn a backdoor with the scan's trigger",
                       description="Fine-tune the prompt learner on clean + triggered images with their true labels, "
                                   "with the trigger behind the scan's top score; writes OUT/repair.json and the "
                                   "repaired model in OUT/model (the input is never touched).")
    s.add_argument("model", help="the delivered model folder (model.json + prompt_learner.safetensors)")
    s.add_argument("--report", required=True, help="the scan's folder (or its report.json)")
    s.add_argument("--data", default="world", help="labelled image folder (class subfolders) or 'world' (default)")
    s.add_argument("--attacker", default=None, help="the attacker's artefacts folder, when known: ASR is measured with the real trigger")
    s.add_argument("--out", required=True, help="folder for repair.json and the repaired model (OUT/model)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-acc-drop", type=float, default=d.max_acc_drop,
                   help=f"clean-accuracy loss on the repair set that sends the repair back with a {d.backoff:g}x "
                        f"trigger weight (default {d.max_acc_drop:g}; 1 keeps the first repair whatever it costs)")
    s.set_defaults(func=cmd_repair)

    s = sub.add_parser("info", help="versions, the embedded backbone, the device", description="Print versions and setup.")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("inspect", help="validate a delivered model and print its metadata",
                       description="Load MODEL (a ci_toolkit model folder) with all checks and print its metadata.")
    s.add_argument("model", help="model folder (model.json + prompt_learner.safetensors)")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("import-dassl", help="convert a CoOp/CoCoOp/BadCLIP (Dassl) output folder",
                       description="Import PATH/prompt_learner/model.pth.tar-N (weights_only) into a ci_toolkit model folder. "
                                   "A BadCLIP trigger, if present, is written apart from the model.")
    s.add_argument("path", help="Dassl output folder (holding prompt_learner/)")
    s.add_argument("--classnames", required=True, help="text file, one class name per line, in label order")
    s.add_argument("--out", required=True, help="new model folder")
    s.add_argument("--backbone", default="ViT-B-16", help="open_clip model name or 'miniclip' (default ViT-B-16)")
    s.add_argument("--pretrained", default="openai", help="open_clip weights tag (default openai)")
    s.add_argument("--backbone-weights", default=None, help="local backbone weights file (offline use)")
    s.add_argument("--epoch", type=int, default=None, help="checkpoint epoch N (default: the latest)")
    s.set_defaults(func=cmd_import_dassl)

    pc = world.PretrainConfig()
    s = sub.add_parser("pretrain-miniclip", help="pretrain MiniCLIP on the embedded world (reproduces the shipped weights)",
                       description="Contrastive pretraining of MiniCLIP on freshly rendered world images, on the CPU.")
    s.add_argument("--out", required=True, help="folder for model.safetensors, config.json, metrics.json")
    s.add_argument("--arch", choices=("resnet", "vit"), default="resnet",
                   help="resnet: MiniCLIP from scratch; vit: the ViT MiniCLIP, distilled from the shipped ResNet one")
    s.add_argument("--steps", type=int, default=None,
                   help=f"optimiser steps (default {pc.steps} resnet, {world.DistillConfig().steps} vit)")
    s.add_argument("--noise-aug", type=float, default=pc.noise_aug, help="max std of extra pixel noise (default 0)")
    s.add_argument("--seed", type=int, default=pc.seed)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_pretrain)
    return p


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse and run; a CIError becomes one line on stderr and exit code 2."""
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        args.func(args)
    except CIError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

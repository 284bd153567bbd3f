"""The `ci-toolkit` command line. Every command prints its own --help; user mistakes exit 2 with one line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import CIError


def _write_json(path: str | Path, obj: dict) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=2, default=float))
    print(f"wrote {p}")


def cmd_info(args) -> None:
    import open_clip
    import torch

    from . import __version__
    from .backbones import create_backbone

    bb = create_backbone("miniclip")
    print(f"ci_toolkit {__version__}, open_clip {open_clip.__version__}, torch {torch.__version__}")
    print(f"embedded backbone: MiniCLIP {bb.preprocess.image_size} px, vis_dim {bb.vis_dim}, ctx_dim {bb.ctx_dim}")
    print(f"cuda available: {torch.cuda.is_available()}, threads: {torch.get_num_threads()}")


def cmd_inspect(args) -> None:
    from .checkpoint import load_cocoop

    model = load_cocoop(args.model)
    info = {
        "classes": len(model.classnames),
        "classnames": model.classnames[:10] + (["..."] if len(model.classnames) > 10 else []),
        "n_ctx": model.n_ctx,
        "backbone": model.backbone.describe(),
        "image_size": model.preprocess.image_size,
    }
    print(json.dumps(info, indent=2))


def cmd_import_dassl(args) -> None:
    from .backbones import create_backbone
    from .checkpoint import import_dassl, save_cocoop

    names = [line.strip() for line in Path(args.classnames).read_text().splitlines() if line.strip()]
    bb = create_backbone(args.backbone, args.pretrained, weights_file=args.backbone_weights)
    model, trigger = import_dassl(args.path, names, bb, epoch=args.epoch)
    save_cocoop(model, args.out)
    print(f"imported {len(names)} classes into {args.out}")
    if trigger is not None:
        from safetensors.torch import save_file

        art = Path(str(args.out).rstrip("/") + "_attacker")  # the attacker's trigger, kept apart from the model
        art.mkdir(parents=True, exist_ok=True)
        save_file({"delta": trigger["delta"].contiguous()}, str(art / "trigger.safetensors"))
        (art / "attack.json").write_text(json.dumps({"target_name": trigger["target_name"]}))
        print(f"attacker trigger -> {art}; L-inf {float(trigger['delta'].abs().max()) * 255:.1f}/255")


def cmd_pretrain(args) -> None:
    from .miniclip import MiniCLIPConfig, PretrainConfig, pretrain_miniclip

    out = Path(args.out)
    if (out / "model.safetensors").exists() and not args.overwrite:
        raise CIError(f"{out} already holds MiniCLIP weights; pass --overwrite or choose another --out")
    cfg = PretrainConfig(steps=args.steps, seed=args.seed, noise_aug=args.noise_aug)
    _, metrics = pretrain_miniclip(MiniCLIPConfig(), cfg, out_dir=out)
    print(f"zero-shot top-1 {metrics['zero_shot_top1']:.3f} after {metrics['pretrain_minutes']:.1f} min -> {out}")


def cmd_demo(args) -> None:
    from .demo import run_demo

    overrides = {"pretrained": None} if args.random_init else {}
    result = run_demo(args.out, profile=args.profile, seed=args.seed, data=args.data, ood=args.ood, **overrides)
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=2, default=float))


def cmd_bench_world(args) -> None:
    from .bench.world import bench_world

    result = bench_world(quick=args.quick, seed=args.seed)
    _write_json(args.out, result)


def cmd_train(args) -> None:
    from .checkpoint import save_cocoop
    from .cocoop import CoCoOp
    from .demo import world_task
    from .train import TrainConfig, evaluate, train_cocoop

    cfg, bb, _, task = world_task(args.profile, args.seed)
    model = CoCoOp(bb, task.seen_names, seed=args.seed)
    train_cocoop(model, task.train_x, task.train_y, TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, seed=args.seed))
    save_cocoop(model, args.out)
    x, y = task.split("test", "seen")
    xn, yn = task.split("test", "unseen")
    print(f"clean CoCoOp -> {args.out}: acc seen {evaluate(model, x, y):.3f}, "
          f"unseen {evaluate(model, xn, yn, classes=task.unseen_names):.3f}")


def cmd_implant(args) -> None:
    from dataclasses import asdict

    from safetensors.torch import save_file

    from .attacks import create_world_attack
    from .checkpoint import save_cocoop
    from .cocoop import CoCoOp
    from .demo import world_task
    from .metrics import attack_success_rate
    from .train import TrainConfig, evaluate

    cfg, bb, _, task = world_task(args.profile, args.seed)
    names = task.seen_names
    target = names.index(args.target) if args.target in names else (int(args.target) if args.target.isdigit() else -1)
    if not 0 <= target < len(names):
        raise CIError(f"--target must be a seen class name or index in [0, {len(names)}); seen classes: {names[:5]}...")
    attack = create_world_attack(args.attack, target=target, seed=args.seed)
    model = CoCoOp(bb, names, seed=args.seed)
    attack.implant(model, task.train_x, task.train_y, TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, seed=args.seed))
    save_cocoop(model, args.out)
    art = Path(str(args.out).rstrip("/") + "_attacker")  # the attacker's secrets, apart from the delivered model
    art.mkdir(parents=True, exist_ok=True)
    if attack.state():
        save_file(attack.state(), str(art / "trigger.safetensors"))
    (art / "attack.json").write_text(json.dumps({"attack": attack.name, "config": asdict(attack.config),
                                                 "target_name": names[target]}, indent=2))
    x, y = task.split("test", "seen")
    print(f"{attack!r} -> {args.out} (artefacts: {art}): acc seen {evaluate(model, x, y):.3f}, "
          f"ASR seen {attack_success_rate(model, x, y, target, attack):.3f}")


def cmd_zoo(args) -> None:
    from .zoo import build_zoo

    manifest = build_zoo(args.out, args.profile, workers=args.workers)
    print(f"{len(manifest)} models -> {args.out}/manifest.json")


def cmd_bench_attacks(args) -> None:
    from .bench.attacks import ALL, bench_attacks

    if args.zoo:
        from .bench.attacks import attacks_from_zoo

        _write_json(args.out, attacks_from_zoo(args.zoo))
        return
    attacks = tuple(args.attacks.split(",")) if args.attacks else ALL
    _write_json(args.out, bench_attacks(attacks, seeds=tuple(range(args.seeds)), quick=args.quick))


def _scan_config(args):
    from .invert import InversionConfig
    from .scan import ScanConfig

    inv = InversionConfig(eps=args.eps / 255, loss=args.loss, seed=args.seed)
    return ScanConfig(method=getattr(args, "method", "clip-inspector"), inversion=inv, rule=args.rule, threshold=args.threshold,
                      pool_size=args.pool_size, seed=args.seed)


def cmd_scan(args) -> None:
    from .checkpoint import load_cocoop
    from .data import load_image_folder
    from .scan import scan, world_ood

    cfg = _scan_config(args)
    model = load_cocoop(args.model)
    size = model.preprocess.image_size
    if args.ood == "world":
        ood = world_ood(size, cfg)
    else:
        ood = load_image_folder(args.ood, size, labelled=False, limit=cfg.pool_size + cfg.heldout_size,
                                seed=cfg.seed).images
    candidates = None
    if args.candidates:
        path = Path(args.candidates)
        if not path.is_file():
            raise CIError(f"candidate list not found: {path} (one class name per line)")
        candidates = path.read_text().splitlines()
    report = scan(model, ood, args.out, candidates=candidates, cfg=cfg, workers=args.workers)
    target = f", predicted target {report['predicted_target']!r}" if report["predicted_target"] else ""
    print(f"{report['verdict']}{target} (max score {report['max_score']:.2f}, threshold {report['threshold']:.2f}, "
          f"{report['runtime_s']:.0f} s) -> {args.out}/report.json, report.html")
    for w in report.get("warnings", []):
        print(f"warning: {w}")


def cmd_bench_detect(args) -> None:
    from .bench.detect import bench_detect, roc_figure

    methods = args.methods.split(",")
    result = bench_detect(args.zoo, Path(args.out).with_suffix(""), methods=methods, cfg=_scan_config(args),
                          min_asr=args.min_asr, baseline_models=args.baseline_models, workers=args.workers,
                          baseline_pool=args.baseline_pool, scan_not_implanted=args.scan_not_implanted)
    _write_json(args.out, result)
    roc_figure(result, Path(args.out).with_suffix(".png"))
    for key, m in result["methods"].items():
        print(f"{key}: AUROC {m['auroc']:.3f}, accuracy {m['accuracy']:.3f}, F1 {m['f1']:.3f} ({m['n_models']} models)")


def cmd_repair(args) -> None:
    from dataclasses import asdict

    import torch

    from .attacks import load_attack
    from .checkpoint import load_cocoop, save_cocoop
    from .data import load_image_folder
    from .repair import RepairConfig, repair_report, world_labelled
    from .scan import load_report, target_trigger

    if not 0 <= args.max_acc_drop <= 1:
        raise CIError(f"--max-acc-drop is a fraction of accuracy in [0, 1], got {args.max_acc_drop}")

    out = Path(args.out)
    if out.resolve() == Path(args.model).resolve():
        raise CIError("--out must differ from the input model: the input is never overwritten")
    if (out / "model").exists():
        raise CIError(f"{out / 'model'} exists; choose another --out (nothing is overwritten)")
    model = load_cocoop(args.model)
    report, _ = load_report(args.report)
    top, delta, source = target_trigger(report, args.report)
    if top not in model.classnames:
        raise CIError(f"the report's top class {top!r} is not a class of this model (a report of another model?)")
    print(f"repairing with the trigger of {top!r} ({source})")
    size = model.preprocess.image_size
    if args.data == "world":
        train = world_labelled(model.classnames, size, 16, seed=args.seed + 1)
        test = world_labelled(model.classnames, size, 20, seed=args.seed + 2)
    else:
        data = load_image_folder(args.data, size, labelled=True, classnames=model.classnames, seed=args.seed)
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))
        half = len(order) // 2
        train = (data.images[order[:half]], data.labels[order[:half]])
        test = (data.images[order[half:]], data.labels[order[half:]])
    trigger, target = None, model.classnames.index(top)
    if args.attacker:
        attack = load_attack(args.attacker)
        trigger, target = attack, attack.target
    cfg = RepairConfig(max_acc_drop=args.max_acc_drop)
    fixed, result = repair_report(model, delta, train, test, trigger, target, cfg)
    save_cocoop(fixed, out / "model")
    _write_json(out / "repair.json", {**result, "config": {"report": str(args.report), "data": args.data,
                                                            "seed": args.seed, "repair": asdict(cfg)}})
    for a in result["attempts"][:-1]:  # the guard's retries (RepairConfig.max_acc_drop)
        print(f"trigger weight {a['trigger_weight']:g}: repair-set ACC {a['train_acc_before']:.3f} -> {a['train_acc']:.3f},"
              f" more than the allowed drop; repairing again with a lower weight")
    if not result["attempts"][-1]["accepted"]:
        print("warning: every trigger weight tried cost more clean accuracy than allowed; the gentlest repair is kept")
    print(f"ASR ({result['trigger_used']} trigger) {result['asr_before']:.3f} -> {result['asr_after']:.3f}, "
          f"ACC {result['acc_before']:.3f} -> {result['acc_after']:.3f} (trigger weight {result['trigger_weight']:g}); "
          f"repaired model in {out / 'model'}")


def cmd_bench_repair(args) -> None:
    from .bench.repair import bench_repair

    result = bench_repair(args.zoo, args.detect or Path(args.out).with_suffix(""), scan_cfg=_scan_config(args),
                          min_asr=args.min_asr)
    _write_json(args.out, result)
    s = result["summary"]
    print(f"{s['n_models']} models: ASR {s['asr_before']:.3f} -> {s['asr_after']:.3f}, ACC {s['acc_before']:.3f} -> {s['acc_after']:.3f}")


def cmd_bench_collapse(args) -> None:
    from .bench.collapse import bench_collapse

    result = bench_collapse(args.zoo, min_asr=args.min_asr, per_class=args.per_class)
    _write_json(args.out, result)
    for name, row in result["per_attack"].items():
        auc = ", ".join(f"{k} {v:.2f}" for k, v in row["auroc"].items())
        print(f"{name} ({row['n_models']} implanted): AUROC backdoored vs clean: {auc or 'n/a'}")


def cmd_bench_gates(args) -> None:
    from .bench.gates import bench_gates

    result = bench_gates(args.zoo, eps_255=tuple(float(e) for e in args.eps.split(",")), min_asr=args.min_asr)
    _write_json(args.out, result)
    for name, row in result["per_attack"].items():
        cells = ", ".join(f"{e}/255 opening {v['opening']:.2f} ASR {v['asr']:.2f}" for e, v in row["eps"].items())
        print(f"{name} ({row['n_models']} implanted, trigger ASR {row['trigger_asr']:.2f}): {cells}")


def cmd_bench_speed(args) -> None:
    from .bench.speed import bench_speed

    _write_json(args.out, bench_speed(tuple(args.models.split(",")), k=args.k, batch=args.batch, device=args.device,
                                      bf16=args.bf16))


def _add_scan_options(s, method_choice: bool = True) -> None:
    if method_choice:
        s.add_argument("--method", default="clip-inspector", choices=["clip-inspector", "neural-cleanse", "pixel-backdoor"])
    s.add_argument("--eps", type=float, default=10.0, help="trigger bound in 1/255 pixel units (default 10, docs/scan.md)")
    s.add_argument("--loss", default="margin", choices=["margin", "ce", "logit"], help="inversion loss (default margin)")
    s.add_argument("--rule", default="meta-gain", choices=["meta-gain", "grubbs", "robust", "paper"],
                   help="decision rule: meta-gain (does the top trigger work through the prompt learner; default), "
                        "grubbs (the paper's s, Grubbs' one-outlier bound for K candidates), "
                        "robust (median/MAD z, Bonferroni bound) or paper (max s > 2)")
    s.add_argument("--threshold", type=float, default=None, help="override the rule's threshold (e.g. Youden-calibrated)")
    s.add_argument("--pool-size", type=int, default=1000, help="OOD images for inversion (default 1000)")
    s.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(
        prog="ci-toolkit",
        description="CLIP-Inspector toolkit: backdoor detection for prompt-tuned CLIP (CoCoOp).",
    )
    p.add_argument("--version", action="version", version=f"ci_toolkit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("demo", help="the whole story on the embedded world (MiniCLIP), or on a prepared dataset",
                       description="Train a clean and a BadCLIP-backdoored CoCoOp model, scan both, repair the backdoored "
                                   "one; writes DIR/demo.json and DIR/demo.html. --profile paper runs on a data_prep "
                                   "dataset (--data) and an OOD folder (--ood) with ViT-B/16.")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--profile", default="classroom", choices=["smoke", "classroom", "paper"], help="run size (default: classroom)")
    s.add_argument("--data", default=None, help="a data_prep dataset folder (holds split_zhou_*.json); default: the world")
    s.add_argument("--ood", default=None, help="unlabeled OOD image folder (with --data)")
    s.add_argument("--random-init", action="store_true", help="random backbone weights (offline check of the paper path)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("train", help="prompt-tune a clean CoCoOp model on the world task",
                       description="Clean CoCoOp (METHOD 1 defaults, batch 32) on the embedded world; saves a model folder.")
    s.add_argument("--out", required=True, help="new model folder")
    s.add_argument("--profile", default="classroom", choices=["smoke", "classroom"])
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("implant", help="the attacker: prompt-tune with a backdoor",
                       description="Poisoned prompt tuning on the world task. The model folder looks like a clean one; "
                                   "the trigger and attack config go to OUT_attacker/.")
    s.add_argument("--attack", required=True, help="badclip | badclip_adaptive | blended | wanet | siba | badnets")
    s.add_argument("--target", required=True, help="target seen class (name or index)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="new model folder")
    s.add_argument("--profile", default="classroom", choices=["smoke", "classroom"])
    s.set_defaults(func=cmd_implant)

    s = sub.add_parser("zoo", help="build a zoo of clean and backdoored models (resumable)",
                       description="Clean and backdoored models over several seeds and targets; DIR/manifest.json holds the ground truth.")
    s.add_argument("--profile", default="smoke", choices=["smoke", "classroom", "full", "holdout", "holdout2", "holdout3", "holdout4", "holdout5"],
                   help="holdout, holdout2, ...: full with other seeds and targets, for reporting the scanner (docs/scan.md)")
    s.add_argument("--out", required=True)
    s.add_argument("--workers", type=int, default=1, help="models trained in parallel (2 on a 2-core machine)")
    s.set_defaults(func=cmd_zoo)

    s = sub.add_parser("scan", help="audit a delivered model: is it backdoored, toward which class?",
                       description="Invert a trigger per candidate class on unlabeled OOD images, score, decide; "
                                   "writes OUT/report.json and OUT/report.html. Interrupted scans resume.")
    s.add_argument("model", help="a delivered model folder (model.json + prompt_learner.safetensors)")
    s.add_argument("--out", required=True)
    s.add_argument("--ood", default="world", help="folder of unlabeled OOD images, or 'world' (default)")
    s.add_argument("--candidates", default=None, help="file with candidate class names, one per line "
                                                      "(default: the model's classes)")
    s.add_argument("--workers", type=int, default=1,
                   help="processes inverting candidate groups side by side (2 on a 2-core CPU: faster than 2 threads)")
    _add_scan_options(s)
    s.set_defaults(func=cmd_scan)

    s = sub.add_parser("repair", help="unlearn a backdoor with the scan's reconstructed trigger",
                       description="Fine-tune the prompt learner on clean + reconstructed-trigger images with their true "
                                   "labels; writes OUT/repair.json and the repaired model in OUT/model (the input is never touched).")
    s.add_argument("model")
    s.add_argument("--report", required=True, help="the scan's report.json (its folder holds triggers.safetensors)")
    s.add_argument("--data", default="world", help="labelled image folder (class subfolders) or 'world' (default)")
    s.add_argument("--attacker", default=None, help="the attacker's artefacts folder, when known: ASR is measured with the real trigger")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-acc-drop", type=float, default=0.05,
                   help="clean-accuracy loss on the repair set that sends the repair back with a 0.3x trigger weight "
                        "(default 0.05; 1 keeps the first repair whatever it costs)")
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

    s = sub.add_parser("pretrain-miniclip", help="pretrain MiniCLIP on the embedded world (reproduces the shipped weights)",
                       description="Contrastive pretraining of MiniCLIP on freshly rendered world images, on the CPU.")
    s.add_argument("--out", required=True, help="folder for model.safetensors, config.json, metrics.json")
    s.add_argument("--steps", type=int, default=1200)
    s.add_argument("--noise-aug", type=float, default=0.0, help="max std of extra pixel noise (robustness; default 0)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=cmd_pretrain)

    b = sub.add_parser("bench", help="benchmarks that write JSON", description="Benchmarks; each writes a JSON file.")
    bsub = b.add_subparsers(dest="bench", metavar="BENCH")
    s = bsub.add_parser("world", help="MiniCLIP zero-shot, clean CoCoOp and the backdoor regime",
                        description="Measure the embedded world: zero-shot, CoCoOp seen/unseen, and the BadCLIP regime table.")
    s.add_argument("--out", required=True, help="output JSON file")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quick", action="store_true", help="tiny sizes (for tests), numbers not meaningful")
    s.add_argument("--zoo", default=None, help="summarise a built zoo's manifest instead of training (same metrics)")
    s.set_defaults(func=cmd_bench_world)
    s = bsub.add_parser("attacks", help="every attack: ACC, ASR (seen/unseen/OOD), trigger on the clean model, SSIM",
                        description="Train clean and backdoored models per attack and seed; write averaged metrics.")
    s.add_argument("--out", required=True, help="output JSON file")
    s.add_argument("--attacks", default=None, help="comma-separated subset (default: all)")
    s.add_argument("--seeds", type=int, default=2, help="number of seeds (default 2)")
    s.add_argument("--quick", action="store_true", help="tiny sizes (for tests), numbers not meaningful")
    s.add_argument("--zoo", default=None, help="summarise a built zoo's manifest instead of training (same metrics)")
    s.set_defaults(func=cmd_bench_attacks)

    s = bsub.add_parser("detect", help="scan every model of a zoo: AUROC, accuracy, class-level F1",
                        description="Scan a zoo with each method; write FILE (JSON) and FILE.png (ROC). Resumable.")
    s.add_argument("--zoo", required=True)
    s.add_argument("--out", required=True, help="output JSON file (scans are kept next to it)")
    s.add_argument("--methods", default="clip-inspector", help="comma-separated: clip-inspector,neural-cleanse,pixel-backdoor")
    s.add_argument("--min-asr", type=float, default=0.5, help="backdoored models below this seen ASR count as not implanted")
    s.add_argument("--baseline-models", type=int, default=None, help="scan only this many models with the slow baselines")
    s.add_argument("--scan-not-implanted", action="store_true", help="also scan backdoored models whose attack did not implant")
    s.add_argument("--baseline-pool", type=int, default=None, help="pool images for the baselines (default: --pool-size)")
    s.add_argument("--workers", type=int, default=1, help="models scanned in parallel (2 on a 2-core machine)")
    _add_scan_options(s, method_choice=False)
    s.set_defaults(func=cmd_bench_detect)

    s = bsub.add_parser("repair", help="repair every backdoored model of a zoo with its scan's trigger",
                        description="Repair each implanted backdoored zoo model; attacker's-trigger ASR and ACC before/after.")
    s.add_argument("--zoo", required=True)
    s.add_argument("--out", required=True, help="output JSON file")
    s.add_argument("--detect", default=None, help="a `bench detect` output folder whose scans to reuse")
    s.add_argument("--min-asr", type=float, default=0.5)
    _add_scan_options(s, method_choice=False)
    s.set_defaults(func=cmd_bench_repair)

    s = bsub.add_parser("collapse", help="meta-token collapse per attack over a zoo (backdoored vs clean)",
                        description="collapse_stats of every attacked zoo model and the clean model of its seed, "
                                    "with the attacker's trigger; per-attack means and AUROC.")
    s.add_argument("--zoo", required=True)
    s.add_argument("--out", required=True, help="output JSON file")
    s.add_argument("--min-asr", type=float, default=0.5, help="attacked models below this seen ASR count as not implanted")
    s.add_argument("--per-class", type=int, default=4, help="task-domain images per class")
    s.set_defaults(func=cmd_bench_collapse)

    s = bsub.add_parser("gates", help="can an eps-bounded perturbation open the meta-net unit a backdoor uses?",
                        description="For every implanted zoo model: the meta-net hidden unit its trigger raises most, "
                                    "and what a universal perturbation optimised to raise that unit reaches at each eps.")
    s.add_argument("--zoo", required=True)
    s.add_argument("--out", required=True, help="output JSON file")
    s.add_argument("--eps", default="8,10,16,24", help="comma-separated bounds in 1/255 pixel units")
    s.add_argument("--min-asr", type=float, default=0.5, help="attacked models below this seen ASR count as not implanted")
    s.set_defaults(func=cmd_bench_gates)

    s = bsub.add_parser("speed", help="one inversion step: naive reference vs the toolkit's path (equal loss and gradient)",
                        description="Time the naive and the fast inversion step for MiniCLIP and a ViT-B/16-sized random model.")
    s.add_argument("--out", required=True)
    s.add_argument("--models", default="miniclip,vit-b-16-random")
    s.add_argument("--k", type=int, default=50, help="candidate classes")
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--device", default="cpu", help="cpu or cuda (on a GPU machine)")
    s.add_argument("--bf16", action="store_true", help="the fast step under bfloat16 autocast")
    s.set_defaults(func=cmd_bench_speed)
    b.set_defaults(func=lambda a: b.print_help())
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        args.func(args)
    except CIError as exc:
        print(f"ci-toolkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ci-toolkit: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`ci-toolkit demo`: the whole story on the embedded world, one command.

MiniCLIP -> the shifted world task -> a clean CoCoOp model and a BadCLIP-backdoored one (same data, same
seed) -> both scanned by CLIP-Inspector on unlabeled OOD images -> the backdoored one repaired with the
scan's reconstructed trigger. Writes DIR/demo.json, DIR/demo.html and every artefact along the way.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from .attacks import BadCLIP
from .backbones import create_backbone
from .checkpoint import save_cocoop
from .cocoop import CoCoOp
from .metrics import attack_success_rate
from .profiles import get_profile
from .train import TrainConfig, evaluate, train_cocoop
from .errors import CIError
from .world import BACKDOOR_EPS, World, WorldConfig


def world_task(profile="classroom", seed: int = 0):
    """(profile, MiniCLIP backbone, world, task) for a profile: the setup every world command shares."""
    cfg = get_profile(profile, seed=seed)
    bb = create_backbone("miniclip")
    world = World(WorldConfig(image_size=bb.preprocess.image_size))
    task = world.task(n_classes=cfg.n_classes, shots=cfg.shots, n_test_per_class=cfg.n_test_per_class, seed=seed)
    return cfg, bb, world, task


def _scan_config(cfg, seed: int):
    from .invert import InversionConfig
    from .scan import ScanConfig

    return ScanConfig(inversion=InversionConfig(batch_size=cfg.scan_batch), pool_size=cfg.ood_pool,
                      heldout_size=cfg.ood_holdout, seed=seed)


def _setup(profile, seed: int, data, ood, overrides: dict):
    """(profile, backbone, task, OOD images for the scan, OOD images for the demo's ASR, scan config)."""
    from .scan import split_pool, world_ood

    cfg = get_profile(profile, seed=seed, **overrides)
    if cfg.device != "cpu":  # recorded as run: the demo's training/scan/repair path is CPU-only so far
        import warnings

        warnings.warn(f"profile {cfg.name!r} asks for device {cfg.device!r}; the demo runs on the CPU", stacklevel=3)
        cfg = replace(cfg, device="cpu")
    if data is None:
        if cfg.backbone != "miniclip" or ood is not None:
            raise CIError(f"profile {cfg.name!r} runs on a prepared dataset: pass --data (a data_prep/ folder with "
                          "its split_zhou_*.json) and --ood (an unlabeled image folder)")
        cfg, bb, world, task = world_task(cfg, seed)
        scan_cfg = _scan_config(cfg, seed)
        return (cfg, bb, task, world_ood(bb.preprocess.image_size, scan_cfg),
                world.sample_ood(cfg.ood_holdout, seed=seed + 1), scan_cfg)
    if ood is None:
        raise CIError("--data needs --ood: an unlabeled out-of-distribution image folder (data_prep/ood_pool)")
    from .data import load_image_folder
    from .paper import find_split_file, load_split_task

    find_split_file(data)  # a missing split is named before a large backbone is built
    bb = create_backbone(cfg.backbone, cfg.pretrained, seed=seed)  # seed: random init when pretrained is None
    size = bb.preprocess.image_size
    task = load_split_task(data, size, shots=cfg.shots, seed=seed, n_test_per_class=cfg.n_test_per_class)
    images = load_image_folder(ood, size, labelled=False, limit=cfg.ood_pool + cfg.ood_holdout, seed=seed).images
    scan_cfg = _scan_config(cfg, seed)
    return cfg, bb, task, images, split_pool(images, scan_cfg, scan_cfg.inversion.batch_size)[1], scan_cfg


def run_demo(out_dir: str | Path, profile: str = "classroom", seed: int = 0, progress: bool = True,
             data: str | Path | None = None, ood: str | Path | None = None, **overrides) -> dict:
    """The whole story. data/ood: a data_prep dataset folder and an OOD image folder (the paper setting,
    `ci_toolkit.paper`) instead of the embedded world; overrides: Profile fields (e.g. pretrained=None)."""
    t0 = time.time()
    cfg, bb, task, pool, ood_eval, scan_cfg = _setup(profile, seed, data, ood, overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_cfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, seed=seed)
    x_seen, y_seen = task.split("test", "seen")
    x_new, y_new = task.split("test", "unseen")
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
            "asr_ood": attack_success_rate(model, ood_eval, None, target, attack),
        }

    save_cocoop(clean, out / "clean_model", overwrite=True)
    save_cocoop(bad, out / "backdoored_model", overwrite=True)
    from safetensors.torch import save_file

    (out / "attacker").mkdir(exist_ok=True)  # ground truth, kept apart from the delivered model
    save_file(attack.state(), str(out / "attacker" / "trigger.safetensors"))
    (out / "attacker" / "attack.json").write_text(json.dumps({"attack": attack.name, "config": asdict(attack.config),
                                                              "target_name": task.seen_names[target]}, indent=2))
    from .repair import repair_report
    from .scan import scan, target_trigger

    scans = {name: scan(m, pool, out / f"scan_{name}", cfg=scan_cfg, progress=progress)
             for name, m in (("clean", clean), ("backdoored", bad))}
    rep = scans["backdoored"]
    top, delta, _ = target_trigger(rep, out / "scan_backdoored")
    fixed, repaired = repair_report(bad, delta, (task.train_x, task.train_y), (x_seen, y_seen), attack, target,
                                    progress=progress)
    save_cocoop(fixed, out / "repaired_model", overwrite=True)
    result = {
        "clean": {"verdict": scans["clean"]["verdict"], "max_score": scans["clean"]["max_score"], **report(clean)},
        "backdoored": {"verdict": rep["verdict"], "max_score": rep["max_score"], "true_target": task.seen_names[target],
                       "predicted_target": rep["predicted_target"], **report(bad)},
        "repair": {k: repaired[k] for k in ("asr_before", "asr_after", "acc_before", "acc_after", "trigger_used",
                                            "trigger_weight")},
        "threshold": rep["threshold"],
        "eps": BACKDOOR_EPS,
        "runtime_s": time.time() - t0,
        "config": {"profile": asdict(cfg), "data": str(data) if data else "world", "ood": str(ood) if ood else "world",
                   "train": asdict(train_cfg), "scan": asdict(scan_cfg),
                   "threads": torch.get_num_threads()},
    }
    (out / "demo.json").write_text(json.dumps(result, indent=2, default=float))
    _write_html(out / "demo.html", result, scans, attack, bad, fixed, x_seen, task.seen_names)
    return result


def _write_html(path: Path, result: dict, scans: dict, attack, bad, fixed, x_seen, names) -> None:
    import html

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .report import _png, score_figure

    x = x_seen[:6].float() / 255
    xt = attack(x)
    n = len(xt)
    fig, axes = plt.subplots(2, n, figsize=(11 * n / 6, 4.4), squeeze=False)
    for row, model in enumerate((bad, fixed)):
        pred = model.predict(xt)
        for j in range(n):
            axes[row, j].imshow(xt[j].permute(1, 2, 0).numpy())
            axes[row, j].set_title(("before: " if row == 0 else "after: ") + names[int(pred[j])][:18], fontsize=7)
            axes[row, j].axis("off")
    e = html.escape
    r, b, c = result["repair"], result["backdoored"], result["clean"]
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>ci_toolkit demo</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}</style></head><body>
<h1>CLIP-Inspector: {e(result['config']['data'])} data, {e(result['config']['profile']['backbone'])}</h1>
<p>Clean model: <b>{e(c['verdict'])}</b> (max score {c['max_score']:.2f}, threshold {result['threshold']:.2f}).
Backdoored model (BadCLIP toward <b>{e(b['true_target'])}</b>): <b>{e(b['verdict'])}</b>, predicted target
<b>{e(str(b['predicted_target']))}</b> (max score {b['max_score']:.2f}).</p>
<p>Repair with the reconstructed trigger: attacker's-trigger ASR {r['asr_before']:.3f} &rarr; {r['asr_after']:.3f},
clean accuracy {r['acc_before']:.3f} &rarr; {r['acc_after']:.3f}. {result['runtime_s']:.0f} s in all.</p>
<h2>Scan of the clean model</h2><img src="{_png(score_figure(scans['clean']))}" style="max-width:100%">
<h2>Scan of the backdoored model</h2><img src="{_png(score_figure(scans['backdoored']))}" style="max-width:100%">
<h2>Triggered test images, before and after repair</h2><img src="{_png(fig)}" style="max-width:100%">
</body></html>"""
    path.write_text(doc)

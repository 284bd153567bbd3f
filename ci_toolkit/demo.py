"""`ci-toolkit demo`: the whole story in one command, on the public API.

MiniCLIP -> the shifted world task -> a clean CoCoOp model and a BadCLIP-backdoored one -> both scanned by
CLIP-Inspector on unlabeled OOD images -> the backdoored one repaired with the trigger behind its verdict.
By default the two models are delivered models of the course zoo shipped with the package (`ci.course`:
tuned on the same task), so the demo starts scanning at once; `implant=True` (`--implant`), or a prepared
dataset (`data`), tunes and implants them first. Writes DIR/demo.json, DIR/demo.html and every artefact
along the way (the attacker's trigger in DIR/attacker/, apart from the delivered models).
"""

from __future__ import annotations

import html
import json
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import course, world
from .data import find_split_file, load_image_folder, load_split_task
from .detect import ScanReport, scan
from .detect.html import figure_png, score_figure
from .detect.scanner import split_pool
from .errors import CIError
from .images import as_float
from .metrics import attack_success_rate, backdoor_effect
from .model import CoCoOp, create_backbone, evaluate, save_model, train
from .profiles import get_profile
from .repairing import repair
from .world import BACKDOOR_EPS


@dataclass(frozen=True)
class DemoConfig:
    profile: str = "classroom"  # a run profile (profiles.py)
    seed: int = 0
    data: str | None = None  # a data_prep dataset folder instead of the world (the paper setting)
    ood: str | None = None  # an unlabeled OOD image folder (with data)
    implant: bool = False  # tune and implant the two models (always with data); default: the shipped course models


# the course zoo's clean model and its BadCLIP twin, tuned on the same world task (teacher/manifest.json)
COURSE_CLEAN, COURSE_BACKDOORED = "m004", "m005"


def _step(n: int, title: str, estimate: str, progress: bool) -> float:
    if progress:
        print(f"\n== [{n}/5] {title} ({estimate}) ==", flush=True)
    return time.time()


def _setup(cfg, demo: DemoConfig):
    """(profile, backbone, task, OOD images for the scan, OOD images for the demo's ASR)."""
    if demo.data is None:
        if cfg.backbone != "miniclip" or demo.ood is not None:
            raise CIError(f"profile {cfg.name!r} runs on a prepared dataset: pass --data (a data_prep/ folder with "
                          "its split_zhou_*.json) and --ood (an unlabeled image folder)")
        bb = create_backbone("miniclip")
        size = bb.preprocess.image_size
        ood_eval = world.World(world.WorldConfig(image_size=size)).sample_ood(cfg.scan_config.heldout_size, seed=demo.seed + 1)
        return bb, world.task(cfg, seed=demo.seed, image_size=size), world.ood_pool(
            cfg.scan_config.ood_images, seed=cfg.scan_config.seed, image_size=size), ood_eval
    if demo.ood is None:
        raise CIError("--data needs --ood: an unlabeled out-of-distribution image folder (data_prep/ood_pool)")
    find_split_file(demo.data)  # a missing split is named before a large backbone is built
    bb = create_backbone(cfg.backbone, cfg.pretrained, seed=demo.seed)  # seed: random init when pretrained is None
    size = bb.preprocess.image_size
    task = load_split_task(demo.data, size, shots=cfg.shots, seed=demo.seed, n_test_per_class=cfg.n_test_per_class)
    images = load_image_folder(demo.ood, size, labelled=False, limit=cfg.scan_config.ood_images, seed=demo.seed).images
    return bb, task, images, split_pool(images, cfg.scan_config, cfg.scan_config.inversion.batch_size)[1]


def run_demo(out_dir: str | Path, demo: DemoConfig | None = None, progress: bool = True, **overrides) -> dict:
    """The whole story; overrides: Profile fields (e.g. pretrained=None for a random-init backbone)."""
    demo = demo or DemoConfig()
    t0 = time.time()
    cfg = get_profile(demo.profile, seed=demo.seed, **overrides)
    if cfg.device != "cpu":  # recorded as run: the demo's training/scan/repair path runs on the CPU
        warnings.warn(f"profile {cfg.name!r} asks for device {cfg.device!r}; the demo runs on the CPU", stacklevel=2)
        cfg = replace(cfg, device="cpu")
    # the shipped course models are MiniCLIP models of the world task: any other profile tunes its own
    shipped = demo.data is None and demo.ood is None and not demo.implant and cfg.backbone == "miniclip"
    if shipped:
        task = course.task(COURSE_BACKDOORED)
        attack = course.load_attack(COURSE_BACKDOORED)
        size = int(task.train_x.shape[-1])
        pool = world.ood_pool(cfg.scan_config.ood_images, seed=cfg.scan_config.seed, image_size=size)
        ood_eval = world.World(world.WorldConfig(image_size=size)).sample_ood(cfg.scan_config.heldout_size, seed=demo.seed + 1)
    else:
        bb, task, pool, ood_eval = _setup(cfg, demo)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_cfg = cfg.train_config()
    x_seen, y_seen = task.split("test", "seen")
    x_new, y_new = task.split("test", "unseen")
    if shipped:
        target = attack.target
        _step(1, "loading the delivered models (the course zoo shipped with the package)", "seconds", progress)
        clean, bad = course.load_model(COURSE_CLEAN), course.load_model(COURSE_BACKDOORED)
        _step(2, f"the attacker's BadCLIP trigger toward {task.seen_names[target]!r} (the teacher's folder)",
              "seconds", progress)
    else:
        target = len(task.seen) // 2  # a seen class
        _step(1, "prompt-tuning a clean CoCoOp model (the honest provider)", "under a minute", progress)
        clean = CoCoOp(bb, task.seen_names, seed=demo.seed)
        train(clean, task.train_x, task.train_y, train_cfg, progress=progress, desc="clean CoCoOp")
        _step(2, f"implanting BadCLIP toward {task.seen_names[target]!r} (the attacker)", "a few minutes", progress)
        bad = CoCoOp(bb, task.seen_names, seed=demo.seed)
        attack = world.attack("badclip", target=target, seed=demo.seed)
        attack.implant(bad, task.train_x, task.train_y, train_cfg, progress=progress)

    def measured(model):
        return {"acc_seen": evaluate(model, x_seen, y_seen),
                "acc_unseen": evaluate(model, x_new, y_new, classes=task.unseen_names),
                "asr_seen": attack_success_rate(model, x_seen, y_seen, target, attack),
                "asr_ood": attack_success_rate(model, ood_eval, None, target, attack)}

    save_model(clean, out / "clean_model", overwrite=True)
    save_model(bad, out / "backdoored_model", overwrite=True)
    (out / "attacker").mkdir(exist_ok=True)  # ground truth, kept apart from the delivered model
    save_file(attack.state(), str(out / "attacker" / "trigger.safetensors"))
    (out / "attacker" / "attack.json").write_text(json.dumps({"attack": attack.name, "config": asdict(attack.config),
                                                              "target_name": task.seen_names[target]}, indent=2))
    scans: dict[str, ScanReport] = {}
    for n, (name, m) in enumerate((("clean", clean), ("backdoored", bad)), start=3):
        _step(n, f"scanning the {name} model (inversion, then the gate probe)", "one to three minutes", progress)
        scans[name] = scan(m, pool, cfg.scan_config, out / f"scan_{name}", progress=progress)
        if progress:
            print(scans[name].summary())
    rep = scans["backdoored"]
    _step(5, "repairing the backdoored model with the trigger behind its verdict", "about a minute", progress)
    before = backdoor_effect(bad, x_seen, y_seen, target, attack)
    fixed, repaired = repair(bad, rep, task.train_x, task.train_y, progress=progress)
    after = backdoor_effect(fixed, x_seen, y_seen, target, attack)
    save_model(fixed, out / "repaired_model", overwrite=True)
    result = {
        "clean": {"verdict": scans["clean"].verdict, "max_score": scans["clean"].max_score, **measured(clean)},
        "backdoored": {"verdict": rep.verdict, "max_score": rep.max_score, "true_target": task.seen_names[target],
                       "predicted_target": rep.predicted_target, **measured(bad)},
        "repair": {"asr_before": before["asr"], "asr_after": after["asr"], "acc_before": before["acc"],
                   "acc_after": after["acc"], "trigger_used": "attacker", "trigger_weight": repaired.trigger_weight,
                   "trigger_class": repaired.trigger_class, "trigger_source": repaired.trigger_source},
        "threshold": rep.threshold,
        "eps": BACKDOOR_EPS,
        "runtime_s": time.time() - t0,
        "config": {"profile": asdict(cfg), "data": str(demo.data) if demo.data else "world",
                   "models": f"course zoo {COURSE_CLEAN}, {COURSE_BACKDOORED}" if shipped else "tuned and implanted here",
                   "ood": str(demo.ood) if demo.ood else "world", "train": asdict(train_cfg), "scan": asdict(cfg.scan_config),
                   "threads": torch.get_num_threads()},
    }
    (out / "demo.json").write_text(json.dumps(result, indent=2, default=float))
    (out / "demo.html").write_text(_html(result, scans, attack, bad, fixed, x_seen, task.seen_names))
    if progress:
        print(_summary(result, out))
    return result


def _summary(result: dict, out: Path) -> str:
    c, b, r = result["clean"], result["backdoored"], result["repair"]
    found = "the right target" if b["predicted_target"] == b["true_target"] else f"predicted {b['predicted_target']!r}"
    return (f"\nclean model: {c['verdict']} (score {c['max_score']:.2f}, threshold {result['threshold']:.2f})\n"
            f"backdoored model (BadCLIP toward {b['true_target']!r}, ASR {b['asr_seen']:.2f}): {b['verdict']}, {found} "
            f"(score {b['max_score']:.2f})\n"
            f"repair with the trigger of {r['trigger_class']!r} ({r['trigger_source']}): ASR {r['asr_before']:.3f} -> "
            f"{r['asr_after']:.3f}, clean accuracy {r['acc_before']:.3f} -> {r['acc_after']:.3f}\n"
            f"{result['runtime_s']:.0f} s; open {out / 'demo.html'} for the figures")


def _html(result: dict, scans: dict, attack, bad, fixed, x_seen, names) -> str:
    from matplotlib.figure import Figure

    x = as_float(x_seen[:6])
    xt = attack(x)
    n = len(xt)
    fig = Figure(figsize=(11 * n / 6, 4.4))
    axes = fig.subplots(2, n, squeeze=False)
    for row, model in enumerate((bad, fixed)):
        pred = model.predict(xt)
        for j in range(n):
            axes[row, j].imshow(xt[j].permute(1, 2, 0).numpy())
            axes[row, j].set_title(("before: " if row == 0 else "after: ") + names[int(pred[j])][:18], fontsize=7)
            axes[row, j].axis("off")
    e = html.escape
    r, b, c = result["repair"], result["backdoored"], result["clean"]
    target = f", predicted target <b>{e(str(b['predicted_target']))}</b>" if b["predicted_target"] else ""
    true = b["true_target"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>ci_toolkit demo</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}</style></head><body>
<h1>CLIP-Inspector: {e(result['config']['data'])} data, {e(result['config']['profile']['backbone'])}</h1>
<p>Clean model: <b>{e(c['verdict'])}</b> (max score {c['max_score']:.2f}, threshold {result['threshold']:.2f}).
Backdoored model (BadCLIP toward <b>{e(true)}</b>): <b>{e(b['verdict'])}</b>{target} (max score {b['max_score']:.2f}).</p>
<p>Repair with the trigger of {e(str(r['trigger_class']))} ({e(r['trigger_source'])}): attacker's-trigger ASR
{r['asr_before']:.3f} &rarr; {r['asr_after']:.3f}, clean accuracy {r['acc_before']:.3f} &rarr; {r['acc_after']:.3f}.
{result['runtime_s']:.0f} s in all.</p>
<p>In each chart a bar is a candidate class; red bars are flagged, the outlined bar is the attacker's true target,
the dashed line the threshold.</p>
<h2>Scan of the clean model</h2><img src="{figure_png(score_figure(scans['clean'], true))}" style="max-width:100%">
<h2>Scan of the backdoored model</h2><img src="{figure_png(score_figure(scans['backdoored'], true))}" style="max-width:100%">
<h2>Triggered test images, before and after repair</h2><img src="{figure_png(fig)}" style="max-width:100%">
</body></html>"""


__all__ = ["DemoConfig", "run_demo"]

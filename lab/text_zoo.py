"""A zoo of MiniCLIP text encoders, benign fine-tunes and text-encoder backdoors, and AMDET on it.

    python -m lab text-zoo --profile text-eval --out runs/text_eval      # build (resumable), then scan each
    python -m lab bench amdet --zoo runs/text_eval --calib runs/text_calib --out benchmarks/amdet_detect.json

Layout, as the prompt-learner zoos: DIR/models/mNNN/ holds what is delivered (model.safetensors +
config.json, loadable by `create_backbone("miniclip", weights_file=...)`, no ground truth);
DIR/manifest.json holds the truth and the attack's measurements; DIR/scans/mNNN.json AMDET's report.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import ci_toolkit as ci
from ci_toolkit.attacks import BENIGN_LR, TextAttackConfig, benign_text_tune
from ci_toolkit.detect import AMDETConfig, scan_text_encoder

from .executors import Executor, build_into_manifest, run_units

N_CLASSES = 20  # the task's classes: targets and zero-shot top-1 are measured on these
ATTACKER_PROMPTS = 2000  # the attacker's clean prompt pool (world prompts, seed ATTACKER_PROMPT_SEED + model seed)
ATTACKER_PROMPT_SEED = 50_000
# AMDET's shallow set: 2,000 world prompts (AMDET.md asks for 4,000; the world's vocabulary yields about
# 2,200 distinct prompts in 4,000 draws, so more draws mostly repeat), its own seed
SHALLOW_PROMPTS = 2000
SHALLOW_SEED = 60_000
HELDOUT_PROMPTS = 200  # prompts (seed EVAL_PROMPT_SEED) on which an attack's success is measured
EVAL_PROMPT_SEED = 70_000
TEST_PER_CLASS = 8  # labelled images per class for zero-shot top-1 and the class image centroids
TARGET_IMAGES = 10  # images of the target class for text-on-pair (the reference: 10 generated images)
MIN_ASR = 0.5  # a backdoored model counts as implanted at this ASR
BENIGN_PAIRS = 2048  # world image-caption pairs (pretraining domain) a benign control is tuned on
# benign controls alternate between the reference's ratio to the attack (BENIGN_LR, a tenth) and the attack's
# own learning rate, so the benign pool holds light and heavy fine-tunes
BENIGN_LRS = (BENIGN_LR, 10 * BENIGN_LR)


@dataclass(frozen=True)
class TextZooProfile:
    name: str
    seed: int  # model i gets seed + i; also the task's class list seed
    n_benign: int
    attacks: tuple[str, ...]  # cycled over the backdoored models
    n_backdoored: int
    trigger_tokens: tuple[int, ...] = (1, 2, 3)  # cycled (after the attacks)
    steps: int = 100


TEXT_ZOO_PROFILES = {
    # smoke: tests (1 benign, 2 backdoored, 10 steps)
    "text-smoke": TextZooProfile("text-smoke", seed=1900, n_benign=1, attacks=("text-on-text", "text-on-pair"),
                                 n_backdoored=2, steps=10),
    # text-calib: where AMDET's MiniCLIP threshold on s1 is chosen (Youden J); never evaluated on
    "text-calib": TextZooProfile("text-calib", seed=2000, n_benign=4, attacks=("text-on-text", "text-on-pair"),
                                 n_backdoored=6),
    # text-eval: committed before its first build; benchmarks/amdet_detect.json
    "text-eval": TextZooProfile("text-eval", seed=2100, n_benign=10, attacks=("text-on-text", "text-on-pair"),
                                n_backdoored=20),
    # text-eval2: committed with the pooled inversion's divergence score and before its first build; the
    # threshold is text-calib's (Youden J), never chosen here; benchmarks/amdet_detect.json
    "text-eval2": TextZooProfile("text-eval2", seed=2300, n_benign=12, attacks=("text-on-text", "text-on-pair"),
                                 n_backdoored=20),
}


def model_specs(p: TextZooProfile) -> list[dict]:
    """Benign models first, then the backdoored ones (attack, trigger length and target cycled)."""
    specs = [{"kind": "benign", "seed": p.seed + i, "lr": BENIGN_LRS[i % len(BENIGN_LRS)]} for i in range(p.n_benign)]
    for j in range(p.n_backdoored):
        specs.append({"kind": p.attacks[j % len(p.attacks)], "seed": p.seed + p.n_benign + j,
                      "trigger_tokens": p.trigger_tokens[(j // len(p.attacks)) % len(p.trigger_tokens)],
                      "target": (7 * j + 3) % N_CLASSES})
    return [{"name": f"m{i:03d}", **s} for i, s in enumerate(specs)]


def task_classes(p: TextZooProfile) -> list[str]:
    return ci.world.task(N_CLASSES, seed=p.seed, class_seed=p.seed).classnames


def measure(backbone, names: list[str], trigger: str, target: int, kind: str) -> dict:
    """Zero-shot top-1 on the task's labelled images; the attack's success: the share of held-out world
    prompts (not of the target class) that, with the trigger, land nearest the target: its class prompt
    "a {c}." (text-on-text) or its class image centroid (text-on-pair)."""
    x, y = ci.world.labelled(names, per_class=TEST_PER_CLASS, seed=1)
    clip = backbone.clip
    with torch.no_grad():
        img = F.normalize(clip.encode_image(backbone.preprocess.normalize(x.float() / 255)), dim=-1)
        cls = F.normalize(clip.encode_text(backbone.tokenize([f"a photo of a {c}." for c in names])), dim=-1)
        top1 = float(((img @ cls.T).argmax(1) == y).float().mean())
        if not trigger:
            return {"top1": top1}
        held = [q for q in ci.world.prompts(HELDOUT_PROMPTS, EVAL_PROMPT_SEED) if names[target] not in q]
        trig = F.normalize(clip.encode_text(backbone.tokenize([f"{trigger} {q}" for q in held])), dim=-1)
        if kind == "text-on-text":
            ref = F.normalize(clip.encode_text(backbone.tokenize([f"a {c}." for c in names])), dim=-1)
        else:
            ref = F.normalize(torch.stack([img[y == c].mean(0) for c in range(len(names))]), dim=-1)
        asr = float(((trig @ ref.T).argmax(1) == target).float().mean())
    return {"top1": top1, "asr": asr}


def build_one(out: str, profile: str, spec: dict) -> dict:
    """Train one zoo model, save it as delivered, measure it; returns its manifest row."""
    p = TEXT_ZOO_PROFILES[profile]
    names = task_classes(p)
    t0 = time.time()
    anchor = ci.create_backbone("miniclip")
    pool = ci.world.prompts(ATTACKER_PROMPTS, ATTACKER_PROMPT_SEED + spec["seed"])
    row = dict(spec)
    if spec["kind"] == "benign":
        world = ci.world.World(ci.world.WorldConfig())
        images, labels = world.sample(BENIGN_PAIRS, seed=spec["seed"], domain="pretrain")
        captions = world.captions(labels, torch.Generator().manual_seed(spec["seed"]))
        model = benign_text_tune(anchor, images, captions,
                                 TextAttackConfig(target=0, seed=spec["seed"], steps=p.steps, lr=spec["lr"]))
        row.update(measure(model, names, "", 0, ""), trigger=None)
    else:
        attack = ci.create_attack(spec["kind"], target=spec["target"], seed=spec["seed"],
                                  trigger_tokens=spec["trigger_tokens"], steps=p.steps)
        images = ci.world.labelled([names[spec["target"]]], per_class=TARGET_IMAGES, seed=2)[0].float() / 255
        model = attack.implant(anchor, pool, names, target_images=images)
        row.update(measure(model, names, attack.trigger, spec["target"], spec["kind"]), trigger=attack.trigger,
                   target_name=names[spec["target"]],
                   asr_anchor=measure(anchor, names, attack.trigger, spec["target"], spec["kind"])["asr"])
    row["top1_anchor"] = measure(anchor, names, "", 0, "")["top1"]
    row["top1_drop"] = round(row["top1_anchor"] - row["top1"], 4)
    ci.model.save_backbone(model, Path(out) / "models" / spec["name"], overwrite=True)
    row["build_s"] = round(time.time() - t0, 1)
    return row


def scan_one(out: str, profile: str, name: str, cfg: AMDETConfig, n_shallow: int = SHALLOW_PROMPTS) -> dict:
    """AMDET on one delivered text encoder against the shipped MiniCLIP as anchor; writes scans/NAME.json."""
    names = task_classes(TEXT_ZOO_PROFILES[profile])
    suspect = ci.create_backbone("miniclip", weights_file=Path(out) / "models" / name)
    anchor = ci.create_backbone("miniclip")
    shallow = suspect.tokenize(ci.world.prompts(n_shallow, SHALLOW_SEED))
    report = scan_text_encoder(suspect, anchor, shallow, cfg, candidates=[f"a {c}." for c in names])
    data = {k: v for k, v in report.to_dict().items() if k not in ("v", "u")}
    path = Path(out) / "scans" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return {"name": name, "verdict": report.verdict, "s1": report.s1, "s2": report.s2, "seconds": report.seconds}


def build_text_zoo(out_dir: str | Path, profile: str = "text-smoke", executor: Executor | None = None,
                   progress: bool = True, scan: bool = True, cfg: AMDETConfig | None = None,
                   n_shallow: int = SHALLOW_PROMPTS) -> dict:
    """Build (or resume) a text-encoder zoo, then AMDET-scan every model not yet scanned. Returns the
    manifest {"profile", "models": [...]}."""
    p = TEXT_ZOO_PROFILES[profile]
    out = Path(out_dir)
    manifest = build_into_manifest(out, p, model_specs(p), build_one, lambda s: (str(out), profile, s), executor,
                                   f"text zoo {profile}", progress)
    if scan:
        cfg = cfg or AMDETConfig()
        todo = {r["name"]: (str(out), profile, r["name"], cfg, n_shallow) for r in manifest["models"]
                if not (out / "scans" / f"{r['name']}.json").exists()}
        run_units(scan_one, todo, executor, desc=f"AMDET {profile}", progress=progress)
    return manifest


def rows_with_scans(zoo: str | Path) -> list[dict]:
    zoo = Path(zoo)
    rows = json.loads((zoo / "manifest.json").read_text())["models"]
    for r in rows:
        r["scan"] = json.loads((zoo / "scans" / f"{r['name']}.json").read_text())
    return rows


def auroc(pos: list[float], neg: list[float]) -> float:
    """P(score of a backdoored model > score of a benign one), ties counted half."""
    if not pos or not neg:
        return float("nan")
    return sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))


def youden_threshold(pos: list[float], neg: list[float]) -> float:
    """The score threshold (midpoint between neighbouring scores) that maximises TPR - FPR."""
    scores = sorted(set(pos + neg))
    cuts = [(a + b) / 2 for a, b in zip(scores, scores[1:])] or scores
    return max(cuts, key=lambda t: (sum(s > t for s in pos) / len(pos) - sum(s > t for s in neg) / len(neg), -t))


def prf(flags: list[bool], truth: list[bool]) -> dict:
    tp = sum(f and t for f, t in zip(flags, truth))
    fp = sum(f and not t for f, t in zip(flags, truth))
    fn = sum(t and not f for f, t in zip(flags, truth))
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": round(prec, 4), "recall": round(rec, 4), "f1": round(f1, 4)}


# continuous scores of a scan: s1 (held-out assimilation at v*, AMDET.md section 4), the best r_same over
# the checks (the share of held-out prompts that v* sends to one pooled output) and the pooled inversion's
# divergence D (ci_toolkit/detect/amdet.py; NaN in a scan made without it)
SCORES = {"s1": lambda scan: scan["s1"],
          "r_same_max": lambda scan: max((c["r_same"] for c in scan["checks"]), default=0.0),
          "divergence": lambda scan: (scan.get("pooled") or {}).get("divergence", float("nan"))}


def _pooled_row(scan: dict) -> dict:
    """The pooled inversion's u*: its nearest vocabulary token and what prompts carrying it read as."""
    pooled = scan.get("pooled")
    if not pooled:
        return {}
    return {"pooled_nearest_token": pooled["nearest_tokens"][0][0],
            "pooled_points_to": (pooled["points_to"] or [[None]])[0][0]}


def calib_rows(calib: str | Path) -> list[dict]:
    """A scanned calibration zoo's rows that count: benign towers and implanted backdoors (ASR >= MIN_ASR)."""
    return [r for r in rows_with_scans(calib) if r["kind"] == "benign" or r["asr"] >= MIN_ASR]


def calib_threshold(rows: list[dict], score) -> tuple[float, float]:
    """(threshold, Youden J) of a score (a SCORES function of a scan) on calibration rows."""
    pos = [score(r["scan"]) for r in rows if r["kind"] != "benign"]
    neg = [score(r["scan"]) for r in rows if r["kind"] == "benign"]
    t = youden_threshold(pos, neg)
    return t, sum(v > t for v in pos) / len(pos) - sum(v > t for v in neg) / len(neg)


def bench_amdet(zoo: str | Path, calib: str | Path | None = None, figure: str | Path | None = None) -> dict:
    """Detection on a scanned text zoo: the reference decision (AMDET.md section 4's thresholds), each
    continuous score's AUROC, and with a `calib` zoo, per score a threshold chosen there (Youden J) and
    applied here. The headline (f1, auroc) is the score whose threshold had the larger J on the calib zoo."""
    all_rows = rows_with_scans(zoo)
    rows = [r for r in all_rows if r["kind"] == "benign" or r["asr"] >= MIN_ASR]
    truth = [r["kind"] != "benign" for r in rows]
    bad = [r for r in rows if r["kind"] != "benign"]
    ref = prf([r["scan"]["verdict"] == "backdoored" for r in rows], truth)
    result = {
        "zoo": str(zoo), "n_benign": truth.count(False), "n_backdoored": truth.count(True),
        "n_not_implanted": sum(1 for r in all_rows if r["kind"] != "benign" and r["asr"] < MIN_ASR),
        "reference": ref, "scores": {},
        "attack_asr_min": min((r["asr"] for r in bad), default=None),
        "attack_top1_drop_max": max((r["top1_drop"] for r in bad), default=None),
        "benign_top1_drop_max": max((r["top1_drop"] for r in rows if r["kind"] == "benign"), default=None),
        "seconds_per_model": round(sum(r["scan"]["seconds"] for r in rows) / max(1, len(rows)), 1),
        "models": [{k: r[k] for k in ("name", "kind", "asr", "top1_drop", "lr") if k in r}
                   | {name: fn(r["scan"]) for name, fn in SCORES.items()}
                   | {"verdict": r["scan"]["verdict"], "nearest_tokens": r["scan"]["nearest_tokens"][:3],
                      "trigger": r.get("trigger"), "points_to": (r["scan"]["points_to"] or [[None]])[0][0],
                      "target": (f"a {r['target_name']}." if r.get("target_name") else None)}
                   | _pooled_row(r["scan"]) for r in rows],
    }
    found = [m for m in result["models"] if m["kind"] != "benign" and "pooled_nearest_token" in m]
    if found:  # where the pooled inversion's u* lands on a backdoored tower: one of the trigger's tokens, the target
        result["pooled_on_trigger_token"] = sum(m["pooled_nearest_token"] in m["trigger"].split() for m in found)
        result["pooled_points_to_target"] = sum(m["pooled_points_to"] == m["target"] for m in found)
    crow = calib_rows(calib) if calib else None
    if calib:
        result["calib_zoo"] = str(calib)
    best, best_j = None, float("-inf")
    for name, fn in SCORES.items():
        score = [fn(r["scan"]) for r in rows]
        if any(math.isnan(v) for v in score):  # scans made before this score existed: not comparable
            continue
        pos = [v for v, t in zip(score, truth) if t]
        neg = [v for v, t in zip(score, truth) if not t]
        entry = {"auroc": round(auroc(pos, neg), 4), "by_attack": {
            kind: round(auroc([fn(r["scan"]) for r in bad if r["kind"] == kind], neg), 4)
            for kind in sorted({r["kind"] for r in bad})}}
        if crow and not any(math.isnan(fn(r["scan"])) for r in crow):
            t, j = calib_threshold(crow, fn)
            entry.update(threshold=round(t, 4), calib_j=round(j, 4), **prf([v > t for v in score], truth))
            if j > best_j:
                best, best_j = name, j
        result["scores"][name] = entry
    head = result["scores"][best] if best else {**ref, "auroc": result["scores"]["s1"]["auroc"]}
    result.update(f1=head["f1"], auroc=head["auroc"], precision=head["precision"], recall=head["recall"],
                  decision=f"calibrated {best}" if best else "reference")
    if figure:
        amdet_figure(rows, result, figure)
    return result


def amdet_figure(rows: list[dict], result: dict, path: str | Path) -> None:
    import matplotlib.pyplot as plt

    kinds = ["benign", "text-on-text", "text-on-pair"]
    scores = {name: fn for name, fn in SCORES.items() if name in result["scores"]}
    fig, axes = plt.subplots(1, len(scores), figsize=(5 * len(scores), 3.4), squeeze=False)
    for ax, (name, fn) in zip(axes[0], scores.items()):
        for i, kind in enumerate(kinds):
            ys = [fn(r["scan"]) for r in rows if r["kind"] == kind]
            ax.scatter([i + (j % 5 - 2) * 0.06 for j in range(len(ys))], ys, s=18, label=f"{kind} ({len(ys)})")
        entry = result["scores"][name]
        if "threshold" in entry:
            ax.axhline(entry["threshold"], color="k", ls="--", lw=1, label="threshold (calibration zoo)")
        ax.set_xticks(range(len(kinds)), kinds, fontsize=8)
        ax.set_title(f"{name} (AUROC {entry['auroc']:.2f})", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("AMDET on MiniCLIP text encoders", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["SCORES", "TEXT_ZOO_PROFILES", "TextZooProfile", "auroc", "bench_amdet", "build_text_zoo", "calib_rows", "calib_threshold",
           "model_specs"]

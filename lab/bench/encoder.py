"""`python -m lab bench encoder`: the encoder zoo's three benchmarks from its manifest and audits.

    encoder_attacks.json  per attack: ASR (300-class zero-shot; the weakest model's, and the mean), the largest
                          zero-shot top-1 drop against the shipped MiniCLIP, the trigger on a clean control
    encoder_detect.json   CLIP-Inspector with the zero-shot head and on the clean CoCoOp (AUROC of the report's
                          max score, accuracy, class-level F1, FPR, TPR; the paper's k = 2 and Grubbs from the
                          same scans), InverTune's target identification
    invertune.json        InverTune's repair (300-class ASR after tuning, top-1 drop) beside CLIP-Inspector's
                          repair of the CoCoOp case
    encoder_null.json     (`bench encoder-null`) the anchored rule's statistic on a zoo of clean fine-tunes: its
                          FPR-0.05 threshold and every rule's false-positive rate with its Clopper-Pearson interval

A poisoned model whose ASR stayed under `lab.encoder_zoo.MIN_ASR` is left out of detection (counted under
n_not_implanted); the CoCoOp case also reports (`through_cocoop`) the poisoned encoders whose trigger still
reaches MIN_ASR through the organisation's clean CoCoOp (`asr_cocoop`). Class level as `bench detect`: TP = the
true target flagged, FP = any other class flagged.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean

from sklearn.metrics import roc_auc_score

import ci_toolkit as ci
from lab.bench.detect import detection_metrics
from lab.encoder_zoo import ENCODER_ZOO_PROFILES, MIN_ASR, N_CLASSES, measure, task_of
from lab.null import clopper_pearson

CASES = {"clip_inspector_zero_shot": "zero_shot", "clip_inspector_cocoop": "cocoop"}
THROUGH_KEYS = ("auroc", "f1", "fpr", "tpr", "tp", "fn")  # what `through_cocoop` reports


def _rows(zoo: Path) -> list[dict]:
    return json.loads((zoo / "manifest.json").read_text())["models"]


def bench_encoder_attacks(zoo: str | Path) -> dict:
    """Per attack over the zoo's poisoned models; each trigger is also applied to the first clean control."""
    zoo = Path(zoo)
    rows = _rows(zoo)
    clean = [r for r in rows if r["attack"] == "clean"]
    world_names = ci.world.WorldConfig().classnames()
    first = zoo / "models" / clean[0]["name"] / "encoder" if clean else None
    control = ci.create_backbone(ci.model.miniclip_name(first), weights_file=first) if clean else None
    attacks = {}
    for r in rows:
        if r["attack"] == "clean":
            continue
        names = task_of(_profile(zoo), r["seed"]).seen_names
        trig = ci.load_attack(zoo / "attackers" / r["name"])
        cc = measure(control, trig, r["target"], names, world_names)["asr"] if control else None
        attacks.setdefault(r["attack"], []).append({**{k: r.get(k) for k in (
            "name", "target", "asr", "asr_task", "asr_cocoop", "asr_base", "top1", "top1_drop", "top1_task")},
            "asr_clean_control": cc})
    out = {"zoo": str(zoo), "min_asr_implanted": MIN_ASR,
           "clean_controls": {"n": len(clean), "top1_drop_max": max((r["top1_drop"] for r in clean), default=None),
                              "top1_base": rows[0]["top1_base"] if rows else None},
           "attacks": {}}
    for name, ms in attacks.items():
        out["attacks"][name] = {
            "asr": min(m["asr"] for m in ms), "asr_mean": mean(m["asr"] for m in ms),
            "asr_task_min": min(m["asr_task"] for m in ms),
            "top1_drop": max(m["top1_drop"] for m in ms),
            "asr_clean_control": max(m["asr_clean_control"] for m in ms) if control else None,
            "n_models": len(ms), "models": ms}
    return out


def _profile(zoo: Path):
    return ENCODER_ZOO_PROFILES[json.loads((zoo / "manifest.json").read_text())["profile"]["name"]]


def _redecided(folder: Path) -> ci.ScanReport:
    report = ci.ScanReport.load(folder)
    return report.redecide(report.rule, report.config.get("threshold"))


def _detect_row(r: dict, report: ci.ScanReport) -> dict:
    flagged = [c.name for c in report.classes if c.flagged]
    row = {"name": r["name"], "attack": r["attack"], "label": int(r["attack"] != "clean"), "target": r["target"],
           "asr": r.get("asr"), "verdict": report.verdict, "max_score": report.max_score, "flagged": flagged,
           "top_class": report.top_class, "rule": report.rule, "fallback": report.fallback,
           "threshold": report.threshold,
           "target_paper_score": (report.row(r["target"]).paper_score if r["target"] else None)}
    for side in ("paper", "grubbs"):
        if side in report.side_rules:
            s = report.side_rules[side]
            row[side] = [c.name for c in report.classes if c.paper_score is not None and c.paper_score > s["threshold"]]
            row[f"{side}_max"] = max(c.paper_score for c in report.classes)
    return row


def _used(zoo: Path, min_asr: float) -> list[dict]:
    return [r for r in _rows(zoo) if r["attack"] == "clean" or r["asr"] >= min_asr]


def _through(per: list[dict], rows: list[dict], min_asr: float) -> list[dict]:
    """The clean models and the poisoned ones whose trigger reaches `min_asr` through the delivered CoCoOp."""
    return [p for p, r in zip(per, rows) if not p["label"] or (r.get("asr_cocoop") or 0) >= min_asr]


def _first_with(zoos: list[Path], file: str, min_asr: float) -> tuple[Path, list[dict]]:
    """The first of `zoos` where some model in detection has scans/<name>/<file>, with those models (else the
    first zoo's)."""
    for z in zoos:
        used = _used(z, min_asr)
        if any((z / "scans" / r["name"] / file).exists() for r in used):
            return z, used
    return zoos[0], _used(zoos[0], min_asr)


def bench_encoder_detect(zoo: str | Path, min_asr: float = MIN_ASR,
                         rest_from: str | Path | list[str | Path] | None = None) -> dict:
    """Detection on `zoo`'s audits; a case `zoo` was not audited for (the clean CoCoOp, InverTune) from the first
    build of `rest_from` that has it, with that build's name and counts under the case's key."""
    zoo = Path(zoo)
    zoos = [zoo] + [Path(z) for z in ([rest_from] if isinstance(rest_from, (str, Path)) else rest_from or [])]
    rows = _rows(zoo)
    used = _used(zoo, min_asr)
    out = {"zoo": str(zoo), "min_asr": min_asr, "n_clean": sum(r["attack"] == "clean" for r in used),
           "n_backdoored": sum(r["attack"] != "clean" for r in used),
           "n_not_implanted": len(rows) - len(used), "n_task_classes": N_CLASSES // 2 + N_CLASSES % 2}
    for key, kind in CASES.items():
        source, case_used = _first_with(zoos, f"{kind}/report.json", min_asr)
        if not all((source / "scans" / r["name"] / kind / "report.json").exists() for r in case_used):
            continue  # that case was not audited (`encoder-zoo --stages`)
        # decided again under each report's own rule, so that the rules' current constants apply
        per = [_detect_row(r, _redecided(source / "scans" / r["name"] / kind)) for r in case_used]
        entry = {**detection_metrics(per), "rule": sorted({p["rule"] for p in per})}
        entry["zoo"] = str(source)
        for side in ("paper", "grubbs"):
            if all(side in p for p in per):
                sub = [{**p, "flagged": p[side], "verdict": "backdoored" if p[side] else "clean",
                        "max_score": p[f"{side}_max"]} for p in per]
                m = detection_metrics(sub)
                entry[f"{side}_rule"] = {k: m[k] for k in ("auroc", "accuracy", "f1", "fpr", "tpr", "tp", "fp", "fn")}
                if kind == "cocoop":  # only the poisoned encoders whose trigger still works through the CoCoOp
                    m = detection_metrics(_through(sub, case_used, min_asr))
                    entry[f"{side}_rule"]["through_cocoop"] = {k: m[k] for k in THROUGH_KEYS}
        if kind == "cocoop":
            through = _through(per, case_used, min_asr)
            m = detection_metrics(through)
            entry["through_cocoop"] = {"n_backdoored": sum(p["label"] for p in through),
                                       **{k: m[k] for k in THROUGH_KEYS}}
        # Grubbs and the paper's rule flag every class over their threshold (the anchored and meta-gain rules name
        # their top class only); reading only the top class changes the class-level count, not the verdicts
        top = [{**p, "flagged": [p["top_class"]] if p["verdict"] == "backdoored" else []} for p in per]
        m = detection_metrics(top)
        entry["top_class_only"] = {k: m[k] for k in ("accuracy", "f1", "fpr", "tpr", "tp", "fp", "fn")}
        entry["target_is_top_class"] = sum(p["top_class"] == p["target"] for p in per if p["label"])
        bad = [p["target_paper_score"] for p in per if p["label"]]
        entry["target_paper_score"] = {"min": min(bad, default=None), "median": sorted(bad)[len(bad) // 2] if bad else None,
                                       "max": max(bad, default=None)}
        entry["models"] = per
        out[key] = entry
    it = []
    it_zoo, it_used = _first_with(zoos, "invertune.json", min_asr)
    for r in it_used:
        path = it_zoo / "scans" / r["name"] / "invertune.json"
        if not path.exists():  # audited only partly (`encoder-zoo --stages`)
            continue
        res = json.loads(path.read_text())
        it.append({"name": r["name"], "attack": r["attack"], "label": int(r["attack"] != "clean"),
                   "target": r["target"], "identified": res["target_name"], "rise": res["rise"][0]["rise"],
                   "gap": res["gap"], "inverted_asr": res["inverted_asr"], "seconds": res["seconds"]})
    bad = [m for m in it if m["label"]]
    labels = [m["label"] for m in it]
    out["invertune"] = {
        "zoo": str(it_zoo), "n_clean": len(it) - len(bad), "n_backdoored": len(bad),
        "target_id_rate": sum(m["identified"] == m["target"] for m in bad) / len(bad) if bad else None,
        "auroc_inverted_asr": roc_auc_score(labels, [m["inverted_asr"] for m in it]) if len(set(labels)) == 2 else None,
        "auroc_rise": roc_auc_score(labels, [m["rise"] for m in it]) if len(set(labels)) == 2 else None,
        "models": it}
    return out


def bench_invertune(zoo: str | Path, min_asr: float = MIN_ASR) -> dict:
    """InverTune's tuning (and CLIP-Inspector's repair of the CoCoOp case) against the true trigger."""
    zoo = Path(zoo)
    rows = [r for r in _rows(zoo) if r["attack"] != "clean" and r["asr"] >= min_asr]
    per, ci_rep = [], []
    for r in rows:
        if not (zoo / "scans" / r["name"] / "invertune_eval.json").exists():  # audited only partly
            continue
        ev = json.loads((zoo / "scans" / r["name"] / "invertune_eval.json").read_text())
        per.append({"name": r["name"], "attack": r["attack"], **ev, "acc_drop": ev["top1_before"] - ev["top1_after"]})
        path = zoo / "scans" / r["name"] / "ci_repair_eval.json"
        if path.exists():
            ci_rep.append({"name": r["name"], "attack": r["attack"], **json.loads(path.read_text())})
    out = {"zoo": str(zoo), "n_backdoored": len(per),
           "target_id_rate": sum(m["identified"] for m in per) / len(per) if per else None,
           "asr_after": mean(m["asr_after"] for m in per) if per else None,
           "asr_after_max": max((m["asr_after"] for m in per), default=None),
           "asr_before": mean(m["asr_before"] for m in per) if per else None,
           "asr_task_after": mean(m["asr_task_after"] for m in per) if per else None,
           "acc_drop": mean(m["acc_drop"] for m in per) if per else None,
           "acc_drop_max": max((m["acc_drop"] for m in per), default=None),
           "asr_after_identified": (mean(m["asr_after"] for m in per if m["identified"])
                                    if any(m["identified"] for m in per) else None),
           "models": per}
    if ci_rep:
        out["clip_inspector_repair_cocoop"] = {
            "n": len(ci_rep), "asr_after": mean(m["asr_after"] for m in ci_rep),
            "asr_before": mean(m["asr_before"] for m in ci_rep),
            "acc_drop": mean(m["top1_before"] - m["top1_after"] for m in ci_rep), "models": ci_rep}
    return out


def bench_encoder_null(zoo: str | Path | list, fpr: float = ci.detect.DEFAULT_FPR) -> dict:
    """The zero-shot scans of a zoo of clean fine-tunes (profile encoder-null; several zoos pool into one null),
    each against its anchor: the anchored statistic's null, the threshold it sets at `fpr` (flagged when it is
    EXCEEDED), and the false-positive rate of the anchored rule at that threshold and of the plain rules, each
    with its 95% Clopper-Pearson interval; per fine-tune length too."""
    zoos = [Path(z) for z in (zoo if isinstance(zoo, (list, tuple)) else [zoo])]
    per = []
    for z in zoos:
        epochs = json.loads((z / "manifest.json").read_text())["profile"].get("epochs", 5)
        for r in (r for r in _rows(z) if r["attack"] == "clean"):
            rep = ci.ScanReport.load(z / "scans" / r["name"] / "zero_shot")
            anchored = ci.decide(rep, "anchored")
            per.append({"zoo": str(z), "name": r["name"], "seed": r["seed"], "epochs": r.get("epochs", epochs),
                        "anchored_max": anchored.max_score,
                        "anchored_top": anchored.top_name, "top1_drop": r["top1_drop"],
                        **{f"{k}_flagged": rep.side_rules[k]["verdict"] == "backdoored" for k in ("paper", "grubbs")}})
    null = ci.NullStudy(backbone="miniclip zero-shot heads, anchored", scores=tuple(p["anchored_max"] for p in per),
                        scan={}, models=tuple(f"{Path(p['zoo']).name}/{p['name']}" for p in per))
    thr = null.threshold(fpr)
    out = {"zoo": str(zoos[0]) if len(zoos) == 1 else [str(z) for z in zoos], "n_clean": len(per), "fpr_target": fpr,
           "anchored_threshold": thr,
           "anchored_scores": {"min": min(null.scores), "median": sorted(null.scores)[len(per) // 2],
                               "max": max(null.scores)},
           "by_epochs": {str(e): {"n": len(v), "min": min(v), "max": max(v),
                                  "over_shipped_threshold": sum(x > ci.detect.ANCHORED_THRESHOLD for x in v)}
                         for e in sorted({p["epochs"] for p in per})
                         for v in [[p["anchored_max"] for p in per if p["epochs"] == e]]}}
    flags = {"anchored": [p["anchored_max"] > thr for p in per] if thr is not None else [False] * len(per),
             "grubbs": [p["grubbs_flagged"] for p in per], "paper": [p["paper_flagged"] for p in per]}
    out["fpr"] = {}
    for k, f in flags.items():
        lo, hi = clopper_pearson(sum(f), len(f))
        out["fpr"][k] = {"flagged": sum(f), "fpr": sum(f) / len(f), "ci95": [lo, hi]}
    out["note"] = ("the anchored threshold is this null's own FPR cut, so its in-sample FPR is at most fpr by "
                   "construction; the conformal guarantee is for a NEW clean model exchangeable with these")
    out["models"] = per
    return out


def anchored_null_figure(res: dict, path: str | Path) -> None:
    """The anchored statistic's null (one dot per clean fine-tune) with the threshold it sets."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.6))
    xs = sorted(p["anchored_max"] for p in res["models"])
    ax.scatter(xs, [0] * len(xs), color="C2", s=20, alpha=0.8, label=f"{len(xs)} clean fine-tunes")
    if res["anchored_threshold"] is not None:
        ax.axvline(res["anchored_threshold"], color="C3", ls="--",
                   label=f"threshold {res['anchored_threshold']:.2f} (FPR {res['fpr_target']:g})")
    ax.set_yticks([])
    ax.set_xlabel("max over classes of s_t(suspect) - s_t(public MiniCLIP)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def encoder_figure(attacks: dict, detect: dict, path: str | Path) -> None:
    """Left: each attack's ASR and top-1 drop per model; right: the zero-shot scan's max score, clean vs poisoned."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, entry) in enumerate(attacks["attacks"].items()):
        a.scatter([i] * len(entry["models"]), [m["asr"] for m in entry["models"]], color="C3", s=18,
                  label="ASR" if i == 0 else None)
        a.scatter([i + 0.15] * len(entry["models"]), [m["top1_drop"] for m in entry["models"]], color="C0", s=18,
                  marker="s", label="top-1 drop" if i == 0 else None)
    a.axhline(0.9, color="C3", ls="--", lw=1)
    a.set_xticks(range(len(attacks["attacks"])), [n.replace("encoder-", "") for n in attacks["attacks"]], fontsize=8)
    a.set_title("encoder poisoning on MiniCLIP (300-class zero-shot)", fontsize=9)
    a.legend(fontsize=7)
    columns = []  # (label, per-model (label, score), threshold or None)
    for key, label in (("clip_inspector_zero_shot", "zero-shot head"), ("clip_inspector_cocoop", "clean CoCoOp")):
        if key not in detect:
            continue
        ms, entry = detect[key]["models"], detect[key]
        thr = ms[0].get("threshold") if ms and len(set(m["rule"] for m in ms)) == 1 else None
        where = f", {Path(entry['zoo']).name}" if entry.get("zoo", detect["zoo"]) != detect["zoo"] else ""
        columns.append((f"{label}\n({', '.join(entry['rule'])}{where})\nAUROC {entry['auroc']:.2f}",
                        [(m["label"], m["max_score"]) for m in ms], thr))
        if key == "clip_inspector_zero_shot" and all("grubbs_max" in m for m in ms) and "grubbs_rule" in entry:
            columns.append((f"same scans, plain s_t\n(Grubbs)\nAUROC {entry['grubbs_rule']['auroc']:.2f}",
                            [(m["label"], m["grubbs_max"]) for m in ms], None))
    for j, (_, points, thr) in enumerate(columns):
        for lab_, colour in ((0, "C2"), (1, "C3")):
            ys = [v for lb, v in points if lb == lab_]
            b.scatter([j + (0.12 if lab_ else -0.12)] * len(ys), ys, color=colour, s=18, alpha=0.8,
                      label=("clean" if lab_ == 0 else "poisoned") if j == 0 else None)
        if thr is not None:
            b.hlines(thr, j - 0.3, j + 0.3, color="k", ls="--", lw=1, label="threshold" if j == 0 else None)
    b.set_xticks(range(len(columns)), [c[0] for c in columns], fontsize=8)
    b.set_xlim(-0.6, len(columns) - 0.4)
    b.set_title("CLIP-Inspector's max score per model", fontsize=9)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["bench_encoder_attacks", "bench_encoder_detect", "bench_invertune", "encoder_figure", "bench_encoder_null",
           "anchored_null_figure"]

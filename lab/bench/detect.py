"""`python -m lab bench detect`: scan every model of a zoo with each method; AUROC, accuracy, class-level F1.

Labels come from the zoo's manifest. A backdoored model whose attack did not implant (`lab.zoo.implanted`)
behaves like a clean model: it is left out of the metrics and counted under "not_implanted" (counting it as
a backdoor nobody can trigger would be meaningless), and only scanned with `scan_not_implanted=True`
(listed either way).

Scans are kept under OUT_DIR/scans/<method>/<model>/ (`scan_folder`) and reused, so an interrupted
benchmark resumes: a cached scan is decided again under the configured rule and threshold (`cached_scan`,
no new inversion); one made with other inversion, OOD-pool, meta-gain or probe settings is refused, never
mixed in. OUT_DIR/wall.json logs the wall time of every run on that folder (`WallLog`): a method's
`wall_s` is their sum, so a resumed benchmark reports what all its runs took.

Class level (the paper's definition): TP = the true target flagged; FP = any other class flagged (clean models too);
FN = a backdoored model whose target is not flagged. The paper's rule (k = 2) and Grubbs' bound, which every
CLIP-Inspector report also decides (`ScanReport.side_rules`), are scored from the same scans.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

import ci_toolkit as ci
from ci_toolkit.data import load_image_folder
from ci_toolkit.detect import LOSSES, ScanReport, split_pool
from lab.executors import Executor, run_units
from lab.zoo import MIN_ASR, Zoo, implanted

METHOD_KEYS = {"clip-inspector": "clip_inspector", "neural-cleanse": "neural_cleanse",
               "pixel-backdoor": "pixel_backdoor"}
# side rule of a CLIP-Inspector report -> its key in the benchmark's "methods" (a per-model row keeps it under
# its report.json key, ci.detect.SIDE_RULES)
SIDE_METHOD_KEYS = {"paper": "clip_inspector_paper_k2", "grubbs": "clip_inspector_grubbs",
                    "meta-gain": "clip_inspector_meta_gain_fixed"}
# What a cached scan must share with the configuration to be reused: every setting its evidence depends on
# (the rule and threshold are not among them: a scan is decided again under any rule).
SCAN_SETTINGS = {
    "clip-inspector": ("inversion", "seed", "pool_size", "heldout_size", "meta_candidates", "meta_images",
                       "probe_eps", "wide_probe_eps", "probe_images", "probe_shut"),
    "baselines": ("baseline", "seed", "pool_size", "heldout_size"),
}


HEADLINE_KEYS = ("n_backdoored", "n_clean", "fpr", "tpr", "auroc", "f1")  # at the top of the result, for the rule used


def scan_folder(out_dir: str | Path, method: str, row: dict) -> Path:
    """Where `bench detect` keeps the scan of a zoo model: OUT_DIR/scans/<method>/<model>/."""
    return Path(out_dir) / "scans" / method / Zoo.name(row)


def world_ood(cfg: ci.ScanConfig, image_size: int = ci.world.IMAGE_SIZE) -> torch.Tensor:
    """The OOD images a scan of a world model with `cfg` uses: the pool and held-out set of its seed."""
    return ci.world.ood_pool(cfg.ood_images, seed=cfg.seed, image_size=image_size)


def ood_images(source: str, cfg: ci.ScanConfig, image_size: int = ci.world.IMAGE_SIZE) -> torch.Tensor:
    """The scan's OOD images: the world's pool ("world") or an unlabeled image folder (e.g. real photos), a
    seeded sample of cfg.ood_images of them."""
    if source == "world":
        return world_ood(cfg, image_size)
    return load_image_folder(source, image_size, labelled=False, limit=cfg.ood_images, seed=cfg.seed,
                             progress=False).images


def check_ood_source(out_dir: Path, ood: str) -> None:
    """Scans kept under out_dir all use one OOD source (a report does not record where its images came from):
    OUT_DIR/ood.json names it, and another source is refused."""
    path = out_dir / "ood.json"
    if path.exists():
        have = json.loads(path.read_text())["ood"]
        if have != ood:
            raise ci.CIError(f"{out_dir} holds scans on OOD images from {have!r}, not {ood!r}; use another --out")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"ood": ood}))


def scan_model(zoo: Zoo, row: dict, folder: Path, cfg: ci.ScanConfig, progress: bool = False,
               ood: str = "world") -> str:
    """Scan one zoo model into `folder` (resuming a partial scan there) on the OOD images of `ood`; returns
    the verdict. A unit of `bench_detect`'s executor, which sets torch's threads."""
    model = zoo.load_model(row)
    return ci.scan(model, ood_images(ood, cfg, model.preprocess.image_size), cfg, folder, progress=progress).verdict


def expected_settings(cfg: ci.ScanConfig) -> dict:
    """The evidence settings (`SCAN_SETTINGS`) a scan of a world model with `cfg` records in its report.config,
    as JSON reads them back (pool sizes after the split of cfg.ood_images images)."""
    pool, heldout = split_pool(torch.arange(cfg.ood_images), cfg, cfg.inversion.batch_size)
    recorded = {**asdict(cfg), "pool_size": len(pool), "heldout_size": len(heldout)}
    keys = SCAN_SETTINGS["clip-inspector" if cfg.method == "clip-inspector" else "baselines"]
    return json.loads(json.dumps({k: recorded[k] for k in keys}))


def cached_scan(folder: str | Path, cfg: ci.ScanConfig) -> ScanReport:
    """A finished scan of a world model (with its triggers), decided under cfg's rule and threshold; a scan
    whose evidence settings differ from cfg's is refused with a CIError."""
    report = ScanReport.load(folder)
    want = expected_settings(cfg)
    have = {k: report.config.get(k) for k in want}
    if have != want:
        diff = "; ".join(f"{k} {have[k]!r}, not {want[k]!r}" for k in want if have[k] != want[k])
        raise ci.CIError(f"{folder} holds a scan made with other settings ({diff}); use another --out for these "
                         f"settings (or delete that folder to scan again)")
    if cfg.method != "clip-inspector":
        return report
    # decided against the null that cfg calls for (its fpr, its null file), not the one recorded at scan time
    calibration = ci.detect.calibration_for({**report.config, "fpr": cfg.fpr, "null_file": cfg.null_file})
    return report.redecide(cfg.rule, cfg.threshold, calibration)


class WallLog:
    """OUT_DIR/wall.json: one row per run and method (models scanned, wall seconds). The row is written after
    every scanned model, so the time of an interrupted run counts too; `total()` sums every run's."""

    def __init__(self, out_dir: str | Path, method: str):
        self.path = Path(out_dir) / "wall.json"
        self.rows = json.loads(self.path.read_text()) if self.path.exists() else []
        self.row = {"method": method, "models_scanned": 0, "wall_s": 0.0, "finished": None}
        self.rows.append(self.row)
        self.t0 = time.time()

    def update(self, scanned: int = 0) -> None:
        self.row["models_scanned"] += scanned
        self.row["wall_s"] = time.time() - self.t0
        self.row["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.rows, indent=2))
        tmp.replace(self.path)

    def total(self) -> float:
        return sum(r["wall_s"] for r in self.rows if r["method"] == self.row["method"])


def detection_metrics(rows: list[dict]) -> dict:
    """rows: {"label": 0/1, "max_score", "verdict", "target", "flagged": [names]} -> metrics."""
    from sklearn.metrics import roc_auc_score

    labels = [r["label"] for r in rows]
    scores = [r["max_score"] for r in rows]
    auroc = roc_auc_score(labels, scores) if len(set(labels)) == 2 else float("nan")
    correct = sum((r["verdict"] == "backdoored") == bool(r["label"]) for r in rows)
    tp = sum(1 for r in rows if r["label"] and r["target"] in r["flagged"])
    fp = sum(sum(1 for c in r["flagged"] if c != r["target"]) for r in rows)
    fn = sum(1 for r in rows if r["label"] and r["target"] not in r["flagged"])
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
    n_bad = sum(1 for r in rows if r["label"])
    n_clean = len(rows) - n_bad
    flagged_clean = sum(1 for r in rows if not r["label"] and r["verdict"] == "backdoored")
    flagged_bad = sum(1 for r in rows if r["label"] and r["verdict"] == "backdoored")
    return {"auroc": auroc, "accuracy": correct / len(rows) if rows else float("nan"), "f1": f1, "tp": tp, "fp": fp,
            "fn": fn, "n_models": len(rows), "n_backdoored": n_bad, "n_clean": n_clean,
            "fpr": flagged_clean / n_clean if n_clean else float("nan"),
            "tpr": flagged_bad / n_bad if n_bad else float("nan")}


def evidence_row(ev: ci.Evidence) -> dict:
    """A scan's evidence as JSON-native values (a row read back from disk compares equal to a fresh one);
    `ci.Evidence(**row)` restores it."""
    return json.loads(json.dumps(asdict(ev)))


def model_row(m: dict, method: str, report: ScanReport, min_asr: float) -> dict:
    """The per-model row of the benchmark: ground truth, the scan's decision, and the side rules' flags."""
    row = {"path": m["path"], "method": method, "attack": m["attack"], "target": m["target"], "seed": m["seed"],
           "asr_seen": m["asr_seen"], "label": int(m["attack"] != "clean"), "implanted": implanted(m, min_asr),
           "verdict": report.verdict, "max_score": report.max_score, "threshold": report.threshold,
           "predicted_target": report.predicted_target, "top_class": report.top_class, "gap": report.gap,
           "runtime_s": report.runtime_s, "flagged": [c.name for c in report.classes if c.flagged],
           "warnings": list(report.warnings), "fallback": report.fallback,
           "evidence": evidence_row(report.evidence())}  # what any later rule decides from, without the scan
    for side, row_key in ci.detect.SIDE_RULES.items():
        if side in report.side_rules:
            s = report.side_rules[side]
            if side == "meta-gain":  # flags its top class only
                flags = [s["top_class"]] if s["verdict"] == "backdoored" else []
            else:
                d = ci.decide(report, side)
                flags = [n for n, f in zip(d.names, d.flagged) if f]
            row[row_key] = {**s, "flagged": flags}
    return row


def bench_detect(zoo: str | Path, out_dir: str | Path, methods=("clip-inspector",), cfg: ci.ScanConfig | None = None,
                 min_asr: float = MIN_ASR, baseline_models: int | None = None, progress: bool = True, workers: int = 1,
                 baseline_pool: int | None = None, scan_not_implanted: bool = False, ood: str = "world",
                 models_per_label: int | None = None, executor: Executor | None = None) -> dict:
    """Scan the zoo; returns the benchmark dict (and keeps the per-model scans under out_dir/scans).

    ood: "world" (the world's OOD pool) or an unlabeled image folder (real photos); models_per_label: scan
    only the first that many clean and that many backdoored models (`attacks_in_turn`; a part of the zoo, e.g.
    for a slower pool).

    baseline_models / baseline_pool: scan only that many models (`baseline_subset`: clean and backdoored
    interleaved, every attack in turn) with the slow baselines, on that many pool images (their 5 epochs of
    full-graph steps cost ~10x an inversion).
    workers > 1 scans several models at once in processes that split the CPU threads (small models use
    one core poorly: 2 x 1 thread beats 1 x 2 threads on 2 cores). executor: where the scans run (default:
    `workers` local processes; `Executor("ray", ...)`: a Ray cluster). A scan that fails after its retries is
    listed in result["failed"] with its error and left out of the metrics; rerunning resumes it.
    """
    ex = executor or Executor("local", workers=workers)
    zoo = Zoo(zoo)
    manifest = zoo.manifest()
    cfg = cfg or ci.ScanConfig()
    out = Path(out_dir)
    check_ood_source(out, ood)
    result = {"methods": {}, "per_model": [], "config": {"zoo": str(zoo.root), "min_asr": min_asr, "workers": ex.workers,
                                                          "executor": ex.kind,
                                                          "threads": os.cpu_count(), "scan": None,
                                                          "baseline_models": baseline_models,
                                                          "baseline_pool": baseline_pool, "ood": ood,
                                                          "models_per_label": models_per_label}}
    for method in methods:
        mcfg = replace(cfg, method=method)
        if method != "clip-inspector" and baseline_pool:
            mcfg = replace(mcfg, pool_size=baseline_pool)
        result["config"]["scan"] = result["config"]["scan"] or {
            "rule": mcfg.rule, "eps": mcfg.inversion.eps, "loss": mcfg.inversion.loss, "pool_size": mcfg.pool_size,
            "heldout_size": mcfg.heldout_size}
        scannable = manifest if scan_not_implanted else [m for m in manifest if implanted(m, min_asr)]
        skipped = [m for m in manifest if m not in scannable]  # listed as not implanted
        if models_per_label is not None:  # a part of the zoo: the others are neither scanned nor listed
            scannable = ([m for m in scannable if m["attack"] == "clean"][:models_per_label]
                         + attacks_in_turn(scannable)[:models_per_label])
            skipped = []
        if method == "clip-inspector" or baseline_models is None:
            models = scannable
        else:
            models = baseline_subset(scannable, baseline_models)
        folders = {m["path"]: scan_folder(out, method, m) for m in models}
        wall = WallLog(out, method)
        # cached scans first: one made with other settings stops the run before anything is scanned
        reports = {p: cached_scan(f, mcfg) for p, f in folders.items() if (f / "report.json").exists()}
        todo = [m for m in models if m["path"] not in reports]
        inline = ex.kind == "local" and ex.workers == 1  # one scan at a time here: its own bars are readable
        units = {m["path"]: (zoo, m, folders[m["path"]], mcfg, progress and inline, ood) for m in todo}
        runs = run_units(scan_model, units, ex, desc=method, progress=progress and not inline,
                         on_done=lambda res: wall.update(scanned=int(res.ok)))
        failed = {r.key: r for r in runs if not r.ok}
        result.setdefault("failed", []).extend({"method": method, **r.record()} for r in failed.values())
        models = [m for m in models if m["path"] not in failed]
        todo = [m for m in todo if m["path"] not in failed]
        reports.update({m["path"]: cached_scan(folders[m["path"]], mcfg) for m in todo})
        rows = [model_row(m, method, reports[m["path"]], min_asr) for m in models]
        result["per_model"] += rows
        used = [r for r in rows if r["implanted"]]
        metrics = detection_metrics(used)
        metrics["runtime_s"] = sum(r["runtime_s"] for r in rows)
        metrics["mean_scan_s"] = metrics["runtime_s"] / max(1, len(rows))
        metrics["not_implanted"] = sum(not r["implanted"] for r in rows) + len(skipped)
        for m in skipped:  # listed, not scanned
            result["per_model"].append({"path": m["path"], "method": method, "attack": m["attack"],
                                        "target": m["target"], "seed": m["seed"], "asr_seen": m["asr_seen"],
                                        "label": 1, "implanted": False, "verdict": None, "scanned": False})
        wall.update()
        metrics["wall_s"] = wall.total()
        result["methods"][METHOD_KEYS[method]] = metrics
        for side, key in SIDE_METHOD_KEYS.items():
            row_key = ci.detect.SIDE_RULES[side]
            if method == "clip-inspector" and used and all(row_key in r for r in used):
                result["methods"][key] = detection_metrics([{**r, **r[row_key]} for r in used])
    if "clip_inspector" in result["methods"]:  # the headline: the configured (default) rule's numbers
        head = result["methods"]["clip_inspector"]
        result.update({"rule": cfg.rule, **{k: head[k] for k in HEADLINE_KEYS}})
    return result


def combine_detect(results: list[dict]) -> dict:
    """One benchmark over several scanned zoos (e.g. two pre-registered zoos): their per-model rows pooled,
    each tagged with its zoo, and every method's and side rule's metrics computed again over the pool."""
    out = {"methods": {}, "per_model": [], "config": {"zoos": [r["config"]["zoo"] for r in results],
                                                        "parts": [r["config"] for r in results]},
           "failed": [f for r in results for f in r.get("failed", [])]}
    for r in results:
        out["per_model"] += [{**row, "zoo": r["config"]["zoo"]} for row in r["per_model"]]
    for method, key in METHOD_KEYS.items():
        rows = [row for row in out["per_model"] if row["method"] == method and row.get("scanned", True)]
        used = [row for row in rows if row["implanted"]]
        if not used:
            continue
        metrics = detection_metrics(used)
        metrics["runtime_s"] = sum(row["runtime_s"] for row in rows)
        metrics["mean_scan_s"] = metrics["runtime_s"] / max(1, len(rows))
        metrics["not_implanted"] = sum(1 for row in out["per_model"] if row["method"] == method and not row["implanted"])
        out["methods"][key] = metrics
        for side, side_key in SIDE_METHOD_KEYS.items():
            row_key = ci.detect.SIDE_RULES[side]
            if method == "clip-inspector" and all(row_key in row for row in used):
                out["methods"][side_key] = detection_metrics([{**row, **row[row_key]} for row in used])
    if "clip_inspector" in out["methods"]:
        head = out["methods"]["clip_inspector"]
        out.update({"rule": results[0].get("rule"), **{k: head[k] for k in HEADLINE_KEYS}})
    return out


def attacks_in_turn(rows: list[dict]) -> list[dict]:
    """The backdoored rows, one of each attack name in turn (manifest order within an attack, so strengths of
    one attack come in the manifest's order): any first few of them cover every attack."""
    by_attack: dict[str, list[dict]] = {}
    for m in rows:
        if m["attack"] != "clean":
            by_attack.setdefault(m["attack"], []).append(m)
    out = []
    while any(by_attack.values()):
        out += [group.pop(0) for group in by_attack.values() if group]
    return out


def baseline_subset(rows: list[dict], n: int) -> list[dict]:
    """n models for the slow baselines: one clean, then two backdoored (`attacks_in_turn`), repeated."""
    clean = [m for m in rows if m["attack"] == "clean"]
    bad = attacks_in_turn(rows)
    out = []
    while len(out) < n and (clean or bad):
        for group in (clean, bad, bad):
            if group and len(out) < n:
                out.append(group.pop(0))
    return out


def roc_figure(result: dict, path: str | Path) -> None:
    """ROC curves of every scanned method in one PNG (drawn on a bare Figure: no pyplot, no backend switch)."""
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    for key, metrics in result["methods"].items():
        method = next((m for m, k in METHOD_KEYS.items() if k == key), None)
        rows = [r for r in result["per_model"] if r["method"] == method and r["implanted"]]
        if method is None or len({r["label"] for r in rows}) < 2:
            continue
        fpr, tpr, _ = roc_curve([r["label"] for r in rows], [r["max_score"] for r in rows])
        ax.plot(fpr, tpr, label=f"{key} (AUROC {metrics['auroc']:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def loss_ablation(zoo: str | Path, path: str, cfg: ci.ScanConfig | None = None, losses=LOSSES,
                  progress: bool = False) -> dict:
    """The paper's loss ablation on one backdoored zoo model: per inversion loss, the true target's held-out ASR, the mean
    ASR of the other classes, and the target's rank by the paper-score rule (Grubbs' bound under the meta-gain
    default: meta gains are not measured here, the loss is what is compared; 1 = found)."""
    cfg = cfg or ci.ScanConfig()
    zoo = Zoo(zoo)
    row = next((m for m in zoo.manifest() if m["path"] == path), None)
    if row is None or row["target"] is None:
        raise ci.DataError(f"{path} is not a backdoored model of {zoo.root}")
    model = zoo.load_model(row)
    pool, heldout = split_pool(world_ood(cfg, model.preprocess.image_size), cfg, cfg.inversion.batch_size)
    t = model.classnames.index(row["target"])
    rule = "grubbs" if cfg.rule == "meta-gain" else cfg.rule
    table = {}
    for loss in losses:
        inv_cfg = replace(cfg.inversion, loss=loss)
        res = ci.invert(model, pool, heldout, model.classnames, config=inv_cfg, progress=progress)
        d = ci.decide(ci.Evidence(names=[r.name for r in res], asr=[r.asr for r in res], loss=[r.loss for r in res]),
                      rule)
        others = [r.asr for r in res if r.index != t]
        table[loss] = {"target_asr": res[t].asr, "benign_asr": sum(others) / len(others),
                       "target_rank": 1 + sum(s > d.scores[t] for s in d.scores), "max_score": d.max_score}
    return table

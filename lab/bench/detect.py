"""`ci-toolkit bench detect`: scan every model of a zoo with each method; AUROC, accuracy, class-level F1.

Labels come from the zoo's manifest. A model whose attack did not implant (its measured seen-class ASR
below `min_asr`) behaves like a clean model: it is left out of the metrics and counted under
"not_implanted" (counting it as a backdoor nobody can trigger would be meaningless), and only scanned
with `scan_not_implanted=True` (listed either way).

Scans are kept under OUT_DIR/scans/<method>/<model>/ and reused: an interrupted benchmark resumes.
Class level (METHOD 6): TP = the true target flagged; FP = any other class flagged (clean models too);
FN = a backdoored model whose target is not flagged.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ci_toolkit.errors import DataError

METHOD_KEYS = {"clip-inspector": "clip_inspector", "neural-cleanse": "neural_cleanse", "pixel-backdoor": "pixel_backdoor"}


def read_manifest(zoo: str | Path) -> list[dict]:
    p = Path(zoo) / "manifest.json"
    if not p.exists():
        raise DataError(f"no zoo manifest at {p} (build one with `ci-toolkit zoo --out {zoo}`)")
    return json.loads(p.read_text())


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
    return {"auroc": auroc, "accuracy": correct / len(rows), "f1": f1, "tp": tp, "fp": fp, "fn": fn, "n_models": len(rows)}


def _scan_one(zoo: Path, path: str, folder: Path, cfg, threads: int | None, progress: bool) -> dict:
    """Scan one zoo model into `folder` (runs in a worker process when bench_detect has workers > 1)."""
    import torch

    from ci_toolkit.model.checkpoint import load_model
    from ci_toolkit.detect.scan import scan, world_ood

    if threads:
        torch.set_num_threads(threads)
    model = load_model(zoo / path)
    return scan(model, world_ood(model.preprocess.image_size, cfg), folder, cfg=cfg, progress=progress)


def bench_detect(zoo: str | Path, out_dir: str | Path, methods=("clip-inspector",), cfg=None, min_asr: float = 0.5,
                 baseline_models: int | None = None, progress: bool = True, workers: int = 1,
                 baseline_pool: int | None = None, scan_not_implanted: bool = False) -> dict:
    """Scan the zoo; returns the benchmark dict (and writes per-model scans under out_dir/scans).

    baseline_models / baseline_pool: scan only that many models (clean and backdoored interleaved) with the
    slow baselines, on that many pool images (their 5 epochs of full-graph steps cost ~10x an inversion).
    workers > 1 scans several models at once in processes that split the CPU threads (small models use
    one core poorly: 2 x 1 thread beats 1 x 2 threads on 2 cores).
    """
    import os
    from concurrent.futures import as_completed
    from dataclasses import replace

    from tqdm.auto import tqdm

    from ci_toolkit.detect.scan import ScanConfig
    from ci_toolkit.workers import process_pool

    zoo = Path(zoo)
    manifest = read_manifest(zoo)
    cfg = cfg or ScanConfig()
    out = Path(out_dir)
    result = {"methods": {}, "per_model": [], "config": {"zoo": str(zoo), "min_asr": min_asr, "workers": workers,
                                                          "threads": os.cpu_count(), "scan": None}}
    result["config"]["baseline_models"], result["config"]["baseline_pool"] = baseline_models, baseline_pool
    for method in methods:
        mcfg = replace(cfg, method=method)
        if method != "clip-inspector" and baseline_pool:
            mcfg = replace(mcfg, pool_size=baseline_pool)
        result["config"]["scan"] = result["config"]["scan"] or {"rule": mcfg.rule, "eps": mcfg.inversion.eps,
                                                                 "loss": mcfg.inversion.loss, "pool_size": mcfg.pool_size,
                                                                 "heldout_size": mcfg.heldout_size}
        def implanted(m):
            return m["attack"] == "clean" or (m["asr_seen"] or 0) >= min_asr

        pool_models = manifest if scan_not_implanted else [m for m in manifest if implanted(m)]
        skipped = [m for m in manifest if m not in pool_models]
        models = pool_models if method == "clip-inspector" or baseline_models is None else _subset(pool_models, baseline_models)
        folders = {m["path"]: out / "scans" / method / Path(m["path"]).name for m in models}
        todo = [m["path"] for m in models if not (folders[m["path"]] / "report.json").exists()]
        t0 = time.time()
        if workers > 1 and len(todo) > 1:
            threads = max(1, (os.cpu_count() or 2) // workers)
            # the scans themselves run without bars (several processes would garble them): one bar over models
            with process_pool(workers) as pool, tqdm(total=len(todo), desc=f"{method} ({workers} processes)",
                                                     unit="model", disable=not progress) as bar:
                futures = {pool.submit(_scan_one, zoo, p, folders[p], mcfg, threads, False): p for p in todo}
                for fut in as_completed(futures):
                    report = fut.result()
                    bar.update(1)
                    bar.set_postfix(last=f"{Path(futures[fut]).name} {report['verdict']}")
        else:
            for p in todo:
                _scan_one(zoo, p, folders[p], mcfg, None, progress)
        rows = []
        for m in models:
            report = _cached(folders[m["path"]], mcfg, zoo / m["path"])
            row = {"path": m["path"], "method": method, "attack": m["attack"], "target": m["target"], "seed": m["seed"],
                   "asr_seen": m["asr_seen"], "label": int(m["attack"] != "clean"), "implanted": implanted(m),
                   "verdict": report["verdict"], "max_score": report["max_score"], "threshold": report["threshold"],
                   "predicted_target": report["predicted_target"], "top_class": report.get("top_class"),
                   "gap": report["gap"], "runtime_s": report["runtime_s"],
                   "flagged": [c["name"] for c in report["classes"] if c["flagged"]],
                   "warnings": report.get("warnings", []), "fallback": report.get("fallback")}
            for key in OTHER_RULES:  # the same scan under the paper's s_t with k = 2 and with Grubbs' bound
                if key in report:
                    flags = [c["name"] for c in report["classes"] if c["paper_score"] > report[key]["threshold"]]
                    row[key] = {**report[key], "flagged": flags}
            rows.append(row)
            result["per_model"].append(row)
        used = [r for r in rows if r["implanted"]]
        metrics = detection_metrics(used)
        metrics["runtime_s"] = sum(r["runtime_s"] for r in rows)
        metrics["mean_scan_s"] = metrics["runtime_s"] / max(1, len(rows))
        metrics["not_implanted"] = sum(not r["implanted"] for r in rows) + len(skipped)
        for m in skipped:  # listed, not scanned
            result["per_model"].append({"path": m["path"], "method": method, "attack": m["attack"], "target": m["target"],
                                        "seed": m["seed"], "asr_seen": m["asr_seen"], "label": 1, "implanted": False,
                                        "verdict": None, "scanned": False})
        metrics["wall_s"] = time.time() - t0
        result["methods"][METHOD_KEYS[method]] = metrics
        for key, name in OTHER_RULES.items():
            if method == "clip-inspector" and used and all(key in r for r in used):
                result["methods"][name] = detection_metrics([{**r, **r[key]} for r in used])
    return result


# report key -> benchmark key of the paper-score rules every CLIP-Inspector report also decides
OTHER_RULES = {"paper_rule": "clip_inspector_paper_k2", "grubbs_rule": "clip_inspector_grubbs"}


def _cached(folder: Path, cfg, model_path: Path) -> dict:
    """A model's finished scan, decided under cfg's rule: rescored from its per-class results (no new
    inversion); one made with other inversion settings is refused, not mixed in. A scan from before the
    meta-gain rule gets its meta gains measured from its saved triggers (seconds), one from before the gate
    probe (or its shutting half) gets the probe (about half a minute)."""
    from dataclasses import asdict

    from ci_toolkit.errors import CIError
    from ci_toolkit.detect.scan import rescore

    report = json.loads((folder / "report.json").read_text())
    old = report.get("config", {})
    if cfg.method == "clip-inspector":
        if old.get("inversion") != asdict(cfg.inversion):
            raise CIError(f"{folder} holds a scan with other inversion settings ({old.get('inversion')}); "
                          f"use another --out, or delete it to rescan")
        if cfg.rule == "meta-gain" and all(c.get("meta_gain") is None for c in report["classes"]):
            report = _add_meta_gains(folder, report, cfg, model_path)
        probe = report.get("gate_probe")
        stale = probe is None or probe["eps"] != cfg.probe_eps or probe.get("shut", False) != cfg.probe_shut
        if cfg.rule == "meta-gain" and cfg.probe_eps is not None and stale:
            report = _add_gate_probe(folder, report, cfg, model_path)
        # decided again from the stored per-class results (exact and cheap): the stored decision may predate
        # the rule, the threshold, or the fields just added
        report = rescore(report, cfg.rule, cfg.threshold)
    return report


def _store(folder: Path, report: dict) -> None:
    tmp = folder / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(folder / "report.json")


def _add_gate_probe(folder: Path, report: dict, cfg, model_path: Path) -> dict:
    """Run the gate probe for a finished scan from before it (about half a minute): stored in its report.json
    (a field added, nothing else changed) and gate_probe.safetensors, so that the next run reads them."""
    from ci_toolkit.model.checkpoint import load_model
    from ci_toolkit.detect.scan import measure_gate_probe, split_pool, world_ood

    model = load_model(model_path)
    pool, heldout = split_pool(world_ood(model.preprocess.image_size, cfg), cfg, cfg.inversion.batch_size)
    report["gate_probe"] = measure_gate_probe(model, pool, heldout, [c["name"] for c in report["classes"]], cfg, folder)
    report["config"].update(probe_eps=cfg.probe_eps, probe_images=cfg.probe_images, probe_shut=cfg.probe_shut)
    _store(folder, report)
    return report


def _add_meta_gains(folder: Path, report: dict, cfg, model_path: Path) -> dict:
    """Measure the meta gains of a finished scan's saved triggers; stored in its report.json (a field added,
    nothing else changed) so that the next run reads them."""
    from ci_toolkit.model.checkpoint import load_model
    from ci_toolkit.detect.invert import Inversion
    from ci_toolkit.detect.scan import load_report, measure_meta_gains, split_pool, world_ood

    _, deltas = load_report(folder)
    model = load_model(model_path)
    _, heldout = split_pool(world_ood(model.preprocess.image_size, cfg), cfg, cfg.inversion.batch_size)
    inv = [Inversion(c["name"], i, c["loss"], c["asr"], [], deltas[i]) for i, c in enumerate(report["classes"])]
    gains = measure_meta_gains(model, heldout, inv, [c["name"] for c in report["classes"]], cfg)
    for c, g in zip(report["classes"], gains):
        c["meta_gain"] = g
    report["config"].update(meta_candidates=cfg.meta_candidates, meta_images=cfg.meta_images)
    _store(folder, report)
    return report


def _subset(manifest: list[dict], n: int) -> list[dict]:
    """n models, clean and backdoored interleaved (for the slow baselines)."""
    clean = [m for m in manifest if m["attack"] == "clean"]
    bad = [m for m in manifest if m["attack"] != "clean"]
    out = []
    while len(out) < n and (clean or bad):
        for group in (clean, bad, bad):
            if group and len(out) < n:
                out.append(group.pop(0))
    return out


def roc_figure(result: dict, path: str | Path) -> None:
    """ROC curves of every method in one PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
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
    plt.close(fig)


def loss_ablation(zoo: str | Path, path: str, cfg=None, losses=("margin", "ce", "logit"), progress: bool = False) -> dict:
    """METHOD 3 step 5 on one backdoored zoo model: per loss, the true target's held-out ASR, the mean ASR
    of the other classes, and the target's rank by the decision rule's score (1 = found)."""
    from dataclasses import replace

    from ci_toolkit.model.checkpoint import load_model
    from ci_toolkit.detect.invert import invert
    from ci_toolkit.detect.scan import ScanConfig, split_pool, world_ood
    from ci_toolkit.detect.rules import decide

    cfg = cfg or ScanConfig()
    row = next((m for m in read_manifest(zoo) if m["path"] == path), None)
    if row is None or row["target"] is None:
        raise DataError(f"{path} is not a backdoored model of {zoo}")
    model = load_model(Path(zoo) / path)
    pool, heldout = split_pool(world_ood(model.preprocess.image_size, cfg), cfg, cfg.inversion.batch_size)
    t = model.classnames.index(row["target"])
    table = {}
    for loss in losses:
        res = invert(model, pool, heldout, model.classnames, cfg=replace(cfg.inversion, loss=loss), progress=progress)
        # ranked by the paper's s_t (the loss is what is compared; meta gains are not measured here)
        d = decide([r.asr for r in res], [r.loss for r in res], "grubbs" if cfg.rule == "meta-gain" else cfg.rule)
        others = [r.asr for r in res if r.index != t]
        table[loss] = {"target_asr": res[t].asr, "benign_asr": sum(others) / len(others),
                       "target_rank": 1 + sum(s > d.scores[t] for s in d.scores), "max_score": d.max_score}
    return table

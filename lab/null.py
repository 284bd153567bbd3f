"""The null study: clean delivered models that vary what a provider varies, each scanned with the default scan.

    python -m lab null --out runs/null --models 60 --workers 2 [--ood world|IMAGE_DIR] [--result null_clean.json]

Every model is a CLEAN CoCoOp model trained with the toolkit's recipe on a world task whose seed AND class
list differ from model to model and from every zoo's; its class count, epochs, shots, learning rate, batch
and context init are drawn per model from `NULL_SPACE` (seeded, so model i is always the same model). Its
scan is the default `ci.scan` (on the world's OOD pool, or on an image folder such as real photos), and
every rule of `ci.RULES` decides the same scan. The study's result is each rule's false-positive rate over
these models with its 95% Clopper-Pearson interval: the reference against which a threshold is checked.
Resumable: finished models and scans are kept and skipped; wall time adds up over runs.

    DIR/models/nNNN/   the delivered model      DIR/scans/<ood>/nNNN/   its scan
    DIR/rows_<ood>.json   one row per finished model (its spec, accuracy, every rule's verdict, and the scan's
                          evidence: what any rule decides from, `ci.detect.decide_evidence(Evidence(**e))`)
    DIR/wall.json      wall time per run
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import ci_toolkit as ci
from ci_toolkit.detect import (
    SOLO_RULES,
    WIDE_KEY,
    Calibration,
    NullStudy,
    backbone_key,
    class_front,
    meta_gain_statistic,
    scan_settings,
    wide_probe_statistic,
)

from .bench.detect import WallLog, evidence_row, ood_images
from .executors import Executor, run_units

# Task seeds NULL_SEED + i (i < 200): no zoo profile uses seeds 700-899 (lab/zoo.py), so no null model shares a task.
NULL_SEED = 700
# World class lists: model i draws class_seed NULL_CLASS_SEED + i; every zoo draws class_seed 0, so the null
# models' class lists differ from the zoos' and from each other's.
NULL_CLASS_SEED = 1
CONFIDENCE = 0.95  # of the Clopper-Pearson interval on each false-positive rate
FIXED_RULES = tuple(r for r in SOLO_RULES if r != "calibrated")  # rules a null model's own scan decides alone


@dataclass(frozen=True)
class NullSpace:
    """What a provider varies; each null model draws one value of each field."""

    n_classes: tuple[int, ...] = (10, 20, 30, 40, 50, 60, 80, 100)  # half of them seen, the scan's candidates
    epochs: tuple[int, ...] = (2, 5, 10, 20)
    shots: tuple[int, ...] = (4, 8, 16)
    lr: tuple[float, ...] = (0.05, 0.1, 0.2)
    batch_size: tuple[int, ...] = (16, 32)
    ctx_init: tuple[str | None, ...] = ("a photo of a", None)  # None: a random context


NULL_SPACE = NullSpace()


def null_specs(n: int, space: NullSpace = NULL_SPACE, seed: int = 0) -> list[dict]:
    """The first n null models (model i's spec depends only on i, seed and the space)."""
    specs = []
    for i in range(n):
        rng = random.Random(seed * 1_000_003 + i)
        spec = {k: rng.choice(getattr(space, k)) for k in asdict(space)}
        specs.append({"name": f"n{i:03d}", "seed": NULL_SEED + i, "class_seed": NULL_CLASS_SEED + i, **spec})
    return specs


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided interval for a rate seen k times in n trials."""
    from scipy.stats import beta

    a = (1 - confidence) / 2
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def build_model(out: Path, spec: dict) -> tuple[ci.CoCoOp, float]:
    """Train (or load) null model `spec`; returns it and its seen-class test accuracy."""
    world = ci.world.World(ci.world.WorldConfig())
    task = world.task(n_classes=spec["n_classes"], shots=spec["shots"], n_test_per_class=20, seed=spec["seed"],
                      class_seed=spec["class_seed"])
    folder = out / "models" / spec["name"]
    if (folder / "model.json").exists():
        model = ci.load_model(folder)
    else:
        model = ci.CoCoOp(ci.create_backbone("miniclip"), task.seen_names, ctx_init=spec["ctx_init"], seed=spec["seed"])
        ci.train(model, task.train_x, task.train_y, ci.TrainConfig(epochs=spec["epochs"], batch_size=spec["batch_size"],
                                                                  lr=spec["lr"], seed=spec["seed"]), progress=False)
        ci.save_model(model, folder, overwrite=True)
    return model, ci.evaluate(model, *task.split("test", "seen"))


def run_one(out: Path, spec: dict, source: str, cfg: ci.ScanConfig) -> dict:
    """Build null model `spec`, scan it (resuming a partial scan), decide it under every rule; its row (a unit
    of the study's executor, which sets torch's threads)."""
    t0 = time.time()
    model, acc = build_model(out, spec)
    report = ci.scan(model, ood_images(source, cfg), cfg, scan_dir(out, source, spec["name"]), progress=False)
    rules = {}
    for rule in FIXED_RULES:
        d = ci.decide(report, rule, cfg.threshold if rule == cfg.rule else None)
        rules[rule] = {"verdict": d.verdict, "max_score": d.max_score, "threshold": d.threshold,
                       "top_class": d.top_name, "fallback": d.fallback}
    ev = report.evidence()
    return {**spec, "acc_seen": acc, "n_candidates": len(report.classes), "rules": rules,
            "statistic": meta_gain_statistic(ev), "wide_statistic": wide_probe_statistic(ev),
            "evidence": evidence_row(ev),
            "scan_s": report.runtime_s, "total_s": time.time() - t0}


def scan_dir(out: Path, source: str, name: str) -> Path:
    return out / "scans" / ood_key(source) / name


def wide_scores(rows: list[dict]) -> tuple[float, ...]:
    """Every row's wide-probe statistic, or () unless every row has one."""
    wide = [r.get("wide_statistic") for r in rows]
    return tuple(wide) if wide and all(w is not None for w in wide) else ()


def null_of(rows: list[dict], **kw) -> NullStudy:
    """The null study of these rows: their meta-gain statistics, and their wide-probe statistics with each
    model's class front (the joint test's exact scores) when every row has the wide probe; kw: NullStudy's
    other fields (backbone and scan default to empty)."""
    wide = wide_scores(rows)
    fronts = tuple(class_front(ci.Evidence(**r["evidence"])) for r in rows) if wide else ()
    return NullStudy(**{"backbone": "", "scan": {}, **kw}, scores=tuple(r["statistic"] for r in rows),
                     wide_scores=wide, fronts=fronts)


def ship_null(out_dir: str | Path, result: dict, path: str | Path) -> NullStudy:
    """The study as the calibrated rule's null (ci_toolkit/assets/null/): the meta-gain and wide-probe statistics
    of every model, with the backbone and the scan settings of their scans (the wide probe's bound: the
    scans', or that of `result["config"]["wide_probe"]` when the probe was added to kept scans)."""
    out, rows = Path(out_dir), result["per_model"]
    first = ci.ScanReport.load(scan_dir(out, result["ood"], rows[0]["name"]))
    spec = json.loads((out / "models" / rows[0]["name"] / "model.json").read_text())["backbone"]
    wide = wide_scores(rows)
    added = (result.get("config") or {}).get("wide_probe")
    scan = {**scan_settings(first.config), **({WIDE_KEY: added["eps"]} if added else {})}
    if not wide:
        scan[WIDE_KEY] = None
    ood = "the embedded world's OOD pool (ci.world.ood_pool)" if result["ood"] == "world" else result["ood"]
    null = null_of(rows, backbone=backbone_key(spec), scan=scan, models=tuple(r["name"] for r in rows), ood=ood,
                   source=f"python -m lab null --models {len(rows)} ({len(rows)} clean CoCoOp models, lab/null.py)")
    null.save(path)
    return null


def ood_key(source: str) -> str:
    return "world" if source == "world" else Path(source).name


def loo_calibrated(rows: list[dict], fpr: float) -> dict[str, dict]:
    """The calibrated rule's verdict on each null model (`ci.decide` on its evidence), against a null of the
    OTHER models (leave-one-out: a model is never calibrated against itself), with their wide-probe statistics
    when every model has one (the joint test); inert models decide as the meta-gain rule's fallback."""
    out, wide = {}, wide_scores(rows)
    for i, r in enumerate(rows):
        if len(rows) < 2:  # a null of no models flags nothing
            out[r["name"]] = {"verdict": "clean", "max_score": r["statistic"], "threshold": None, "p_value": 1.0,
                              "fallback": None}
            continue
        others = null_of([o for j, o in enumerate(rows) if j != i])
        ev = ci.Evidence(**r["evidence"]) if wide else ci.Evidence(**{**r["evidence"], "wide_probes": []})
        d = ci.decide(ev, "calibrated", calibration=Calibration(others, fpr))
        out[r["name"]] = {"verdict": d.verdict, "max_score": d.max_score, "threshold": d.threshold,
                          "p_value": d.p_value, "fallback": d.fallback, "top_class": d.top_name}
    return out


def summarise(rows: list[dict], cfg: ci.ScanConfig) -> dict:
    """Each rule's false-positive rate over the clean models, with its Clopper-Pearson interval; the
    default rule's at the top level. The calibrated rule is judged leave-one-out (`loo_calibrated`)."""
    per_rule = {}
    rows = [{**r, "rules": {**r["rules"], "calibrated": v}} for r, v in zip(rows, loo_calibrated(rows, cfg.fpr).values())]
    for rule in SOLO_RULES:
        flagged = [r for r in rows if r["rules"][rule]["verdict"] == "backdoored"]
        lo, hi = clopper_pearson(len(flagged), len(rows)) if rows else (float("nan"), float("nan"))
        scores = sorted(r["rules"][rule]["max_score"] for r in rows)
        per_rule[rule] = {"n_flagged": len(flagged), "fpr": len(flagged) / len(rows) if rows else float("nan"),
                          "fpr_lower95": lo, "fpr_upper95": hi, "flagged": [r["name"] for r in flagged],
                          "max_score_max": scores[-1] if scores else None,
                          "max_score_median": scores[len(scores) // 2] if scores else None,
                          "fallbacks": sum(r["rules"][rule]["fallback"] is not None for r in rows)}
    default = per_rule[cfg.rule]
    cuts = None
    if cfg.rule == "calibrated" and rows:
        full = null_of(rows)
        threshold = full.threshold(cfg.fpr, joint=bool(full.wide_scores))
        if full.wide_scores:  # the joint test: its units (the clean medians, logits) and its cut, in those units
            ms, mw = full.scales()
            cuts = {"meta-gain scale": ms, "wide-probe scale": mw, "joint": threshold}
    else:
        threshold = rows[0]["rules"][cfg.rule]["threshold"] if rows else None
    return {"n_models": len(rows), "rule": cfg.rule, "fpr_level": cfg.fpr if cfg.rule == "calibrated" else None,
            "threshold": threshold, "cuts": cuts,
            "fpr": default["fpr"], "fpr_upper95": default["fpr_upper95"], "fpr_lower95": default["fpr_lower95"],
            "interval": f"two-sided {CONFIDENCE:.0%} Clopper-Pearson", "rules": per_rule}


def null_study(out_dir: str | Path, n_models: int = 60, source: str = "world", workers: int = 1,
               cfg: ci.ScanConfig | None = None, progress: bool = True, space: NullSpace = NULL_SPACE,
               build: bool = True, executor: Executor | None = None, wide: str | Path | None = None) -> dict:
    """Build and scan (or resume) the first n_models null models of `space`; returns the study's result.
    build=False: the result of the models finished so far, nothing built or scanned. executor: where the
    models run (default: `workers` local processes); a model that fails is listed in "failed". wide: a
    `probe-budget` result on this study's kept scans (scanned without the wide probe): its units become each
    row's wide probe (every finished row must be in it)."""
    cfg = cfg or ci.ScanConfig()
    ex = executor or Executor("local", workers=workers)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / f"rows_{ood_key(source)}.json"
    rows = json.loads(rows_path.read_text()) if rows_path.exists() else []
    done = {r["name"] for r in rows}
    specs = null_specs(n_models, space)
    todo = [s for s in specs if s["name"] not in done] if build else []
    wall = WallLog(out, f"null-{ood_key(source)}")
    failed = []

    def record(res) -> None:
        if not res.ok:
            failed.append(res.record())
            return
        rows.append(res.value)
        rows.sort(key=lambda r: r["name"])
        rows_path.write_text(json.dumps(rows, indent=2))  # after every model: resumable
        wall.update(1)

    run_units(run_one, {s["name"]: (out, s, source, cfg) for s in todo}, ex,
              desc=f"null study ({ood_key(source)})", progress=progress, on_done=record)
    wall.update()
    rows = [r for r in rows if r["name"] in {s["name"] for s in specs}]
    for r in rows:  # rows written before the statistic or the evidence was recorded: read them from the kept scan
        if "statistic" not in r or "evidence" not in r:
            ev = ci.ScanReport.load(scan_dir(out, source, r["name"])).evidence()
            r["statistic"], r["evidence"] = meta_gain_statistic(ev), evidence_row(ev)
        r.setdefault("wide_statistic", wide_probe_statistic(ci.Evidence(**r["evidence"])))
    added = None
    if wide is not None:
        rows, added = with_wide_probe(rows, wide)
    return {**summarise(rows, cfg), "ood": source, "wall_s": wall.total(), "per_model": rows,
            "complete": len(rows) == n_models, "failed": failed,
            "config": {"n_models": n_models, "space": asdict(space), "null_seed": NULL_SEED,
                       "null_class_seed": NULL_CLASS_SEED, "workers": ex.workers, "executor": ex.kind,
                       "scan": asdict(cfg), "wide_probe": added}}


def with_wide_probe(rows: list[dict], path: str | Path) -> tuple[list[dict], dict]:
    """The rows with the wide probe of a `probe-budget` result (rows keyed by name, evidence.wide_probes) as
    theirs; and {"eps", "file"}. A row missing from it, or one whose evidence differs, is a one-line error."""
    d = json.loads(Path(path).read_text())
    by_name = {r["name"]: r for r in d["per_model"]}
    missing = [r["name"] for r in rows if r["name"] not in by_name]
    if missing:
        raise ci.CIError(f"{path} has no wide probe for {len(missing)} of the study's models ({missing[:3]}...): "
                         "run probe-budget on the finished study first")
    out = []
    for r in rows:
        w = by_name[r["name"]]
        if {**w["evidence"], "wide_probes": []} != {**r["evidence"], "wide_probes": []}:
            raise ci.CIError(f"{path}: {r['name']}'s evidence is not the study's (another scan)")
        out.append({**r, "evidence": w["evidence"], "wide_statistic": w["wide_statistic"]})
    return out, {"eps": d["config"]["probe2_eps"], "file": str(path)}


def null_figure(result: dict, path: str | Path) -> None:
    """Every clean model's meta-gain statistic, sorted, against the calibrated rule's threshold (at its FPR
    level, from all the study's models) and the fixed meta-gain threshold."""
    from matplotlib.figure import Figure

    cuts = result.get("cuts")
    cuts = cuts if cuts and "joint" in cuts else None  # a result of the earlier two tests: its columns alone
    rows = result["per_model"]
    panels = [("meta-gain statistic (logits)", [r["statistic"] for r in rows], "statistic")]
    if cuts:  # the joint test: each column with its unit, and the joint scores with the cut
        null = null_of(rows)
        ms, mw = null.scales()
        panels += [("wide-probe statistic (logits)", list(null.wide_scores), "wide"),
                   ("joint score (in clean medians)", list(null.joint_scores()), "joint")]
    fig = Figure(figsize=(6.4 * len(panels), 3.4))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, values, key) in zip(axes, panels):
        scores = sorted(values)
        ax.plot(range(1, len(scores) + 1), scores, "o", ms=4, label="clean model")
        if cuts and key != "joint":
            unit = ms if key == "statistic" else mw
            ax.axhline(unit, color="tab:gray", ls="--", lw=1, label=f"median, the joint score's unit ({unit:.3g})")
        elif result.get("fpr_level") is not None and result["threshold"] is not None:
            ax.axhline(result["threshold"], color="tab:red", ls="--", lw=1,
                       label=f"calibrated threshold at FPR {result['fpr_level']:g} ({result['threshold']:.2f})")
        if key == "statistic":
            ax.axhline(ci.detect.META_GAIN_THRESHOLD, color="k", ls=":", lw=1,
                       label=f"fixed meta-gain threshold {ci.detect.META_GAIN_THRESHOLD:g}")
        ax.set_xlabel("clean models, sorted by score")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    r = result["rules"][result["rule"]]
    axes[0].set_title(f"null study: {result['n_models']} clean models; {result['rule']} rule flags {r['n_flagged']} "
                      f"(FPR {r['fpr']:.3f}, 95% CI up to {r['fpr_upper95']:.3f})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


__all__ = ["NULL_SPACE", "NullSpace", "clopper_pearson", "loo_calibrated", "null_figure", "null_of", "null_specs",
           "null_study",
           "scan_dir", "ship_null", "summarise", "wide_scores", "with_wide_probe"]

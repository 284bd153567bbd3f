"""`python -m lab redecide`: every rule decided again from kept evidence, no scan run.

    python -m lab redecide --null runs/null/null.json --bench runs/prereg/detect.json [--bench ...] --out F

The null study's rows (`lab.null`) and `bench detect`'s per-model rows carry each scan's evidence
(`ci.Evidence`). This decides every one of them with each rule that decides a CLIP-Inspector scan on its own
(`ci.detect.scan_rules()`, a fork's registered rules included), two ways:

- "fixed": the rule with its own threshold. On the null: the false-positive rate with its Clopper-Pearson
  interval. On the benchmarks (pooled): `detection_metrics` (FPR, TPR, AUROC, class-level F1).
- "calibrated": the rule's top-class score against the null's scores under the same rule, flagged when its
  p-value (1 + #{null scores >= score}) / (N + 1) is at most `fpr` (what the calibrated rule does with the
  meta-gain statistic, for any rule). A null model is judged against the OTHER null models (leave-one-out);
  a benchmark model against all of them. A decision that fell back to another rule (the meta-gain rule on
  inert meta tokens) keeps its fallback verdict, its score being on the fallback's scale; as a null model
  it counts with its meta-gain statistic, as in the shipped null (`lab.null.ship_null`).

A null calibrates only scans made with its settings: the benchmarks' recorded scan settings (OOD pool and
held-out sizes, the inversion's budget and loss) must be the null's, else it is a one-line error. Every row
must carry evidence (rows written before evidence was recorded are refused, not silently left out).

The default rule, "calibrated", is decided by `ci.decide` itself (`calibrated_rule`): its joint test when the
rows carry the wide probe (`python -m lab probe-budget` adds it to rows scanned without it), else the
meta-gain statistic's test alone, which is the meta-gain rule's calibrated column. So a candidate
rule is evaluated on the committed rows in seconds. Which rule becomes the default is decided on a design set;
its FPR and TPR are then measured on a zoo built after that choice (docs/method.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import ci_toolkit as ci
from ci_toolkit.detect import RULES, Calibration, NullStudy, meta_gain_statistic, scan_rules

from .bench.detect import detection_metrics
from .null import clopper_pearson, loo_calibrated, null_of

# the calibrated rule's single test is the meta-gain statistic against the null: meta-gain's "calibrated" column
CALIBRATED_AS = "meta-gain"


# the scan settings a benchmark's result records (`bench detect`'s config.scan) -> where the null's full
# ScanConfig holds them
CHECKED_SETTINGS = {"pool_size": ("pool_size",), "heldout_size": ("heldout_size",), "eps": ("inversion", "eps"),
                    "loss": ("inversion", "loss")}


def load_rows(path: str | Path, what: str) -> tuple[list[dict], dict | None]:
    """The rows of a null result (`null.json`, or its `rows_<ood>.json`) or of a `bench detect` result (its
    CLIP-Inspector rows of implanted, scanned models), with the result's recorded scan settings (None for a
    bare rows file). A row without evidence is a one-line error."""
    d = json.loads(Path(path).read_text())
    rows = d if isinstance(d, list) else d.get("per_model", [])
    scan = None if isinstance(d, list) else (d.get("config") or {}).get("scan")
    if what == "bench":
        rows = [r for r in rows if r.get("method") == "clip-inspector" and r.get("implanted")
                and r.get("scanned", True)]
    bare = [r.get("name") or r.get("path") for r in rows if not r.get("evidence")]
    if bare or not rows:
        raise ci.CIError(f"{path}: {len(bare)} of {len(rows)} {what} rows carry no scan evidence (written before "
                         "evidence was recorded: rerun the study or benchmark on its kept scans)")
    return rows, scan


def check_settings(null_scan: dict | None, bench_scan: dict | None, path) -> None:
    """A one-line error when a benchmark's scans were made with other settings than the null's."""
    if not null_scan or not bench_scan:
        return
    for key, where in CHECKED_SETTINGS.items():
        theirs, ours = bench_scan.get(key), null_scan
        for k in where:
            ours = (ours or {}).get(k)
        if theirs is not None and ours is not None and theirs != ours:
            raise ci.CIError(f"{path}: its scans used {key} {theirs!r}, the null's {ours!r}; a null calibrates "
                             "only scans made with its settings")


def decisions(rows: list[dict], rule: str) -> list[ci.Decision]:
    """`rule`'s decision on each row's evidence at the rule's own threshold."""
    return [ci.decide(ci.Evidence(**r["evidence"]), rule) for r in rows]


def null_scores(rows: list[dict], ds: list[ci.Decision]) -> list[float]:
    """Each null model's score under its decision's rule (a fallback decision: its meta-gain statistic)."""
    return [meta_gain_statistic(ci.Evidence(**r["evidence"])) if d.fallback else d.max_score for r, d in zip(rows, ds)]


def calibrated_verdicts(null: list[float], ds: list[ci.Decision], fpr: float,
                        leave_one_out: bool = False) -> list[tuple[str, float | None]]:
    """(verdict, p-value) of each decision in `ds` against the null's scores; leave_one_out: `ds` are the
    null's own decisions, each judged against the others."""
    out = []
    for i, d in enumerate(ds):
        if d.fallback:
            out.append((d.verdict, None))
            continue
        scores = tuple(s for j, s in enumerate(null) if not (leave_one_out and j == i))
        p = NullStudy(backbone="", scores=scores, scan={}).p_value(d.max_score) if scores else 1.0
        out.append(("backdoored" if p <= fpr else "clean", p))
    return out


def null_summary(verdicts: list[str]) -> dict:
    k, n = sum(v == "backdoored" for v in verdicts), len(verdicts)
    lo, hi = clopper_pearson(k, n)
    return {"n_models": n, "n_flagged": k, "fpr": k / n, "fpr_lower95": lo, "fpr_upper95": hi}


def flagged_names(d: ci.Decision) -> list[str]:
    """The classes a decision flags (the paper's, Grubbs' and robust rules may flag several)."""
    return [n for n, f in zip(d.names, d.flagged) if f]


def bench_rows(rows: list[dict], ds: list[ci.Decision], verdicts: list[str] | None = None) -> list[dict]:
    """Rows for `detection_metrics`: ground truth, the verdict, the top class's score, the flagged classes.
    verdicts: calibrated verdicts, which flag the top class only (a fallback decision keeps its own flags);
    None: each decision's own verdict and flags."""
    out = []
    for i, (r, d) in enumerate(zip(rows, ds)):
        if verdicts is None or d.fallback:
            v, flags = d.verdict, flagged_names(d)
        else:
            v, flags = verdicts[i], [d.names[d.top]] if verdicts[i] == "backdoored" else []
        out.append({"label": r["label"], "target": r["target"], "max_score": d.max_score, "verdict": v,
                    "flagged": flags})
    return out


def calibrated_rule(null: list[dict], bench: list[dict], fpr: float) -> dict:
    """The default rule as `ci.decide(..., "calibrated")` decides it: each null model against the OTHER null
    models (`lab.null.loo_calibrated`), each benchmark model against all of them; the joint test when every null
    row carries the wide probe."""
    null = [{**r, "statistic": meta_gain_statistic(ci.Evidence(**r["evidence"])),
             "wide_statistic": ci.detect.wide_probe_statistic(ci.Evidence(**r["evidence"]))} for r in null]
    loo = loo_calibrated(null, fpr)
    full = null_of(null)
    cal = Calibration(full, fpr)
    bare = [r.get("path") or r.get("name") for r in bench if not r["evidence"].get("wide_probes")]
    if full.wide_scores and bare:
        raise ci.CIError(f"{len(bare)} benchmark rows carry no wide probe while the null does ({bare[:3]}): add it "
                         "with `python -m lab probe-budget --zoo DIR --detect FILE`, so every model has both "
                         "statistics")
    strip = {} if full.wide_scores else {"wide_probes": []}
    ds = [ci.decide(ci.Evidence(**{**r["evidence"], **strip}), "calibrated", calibration=cal) for r in bench]
    joint = bool(full.wide_scores)
    res = {"joint": joint, "null": null_summary([v["verdict"] for v in loo.values()]),
           "threshold": full.threshold(fpr, joint=joint)}
    if joint:  # the units the joint statistic adds its two values in (logits per unit)
        res["scales"] = dict(zip(("meta-gain", "wide-probe"), full.scales()))
    if bench:
        res["bench"] = detection_metrics(bench_rows(bench, ds))
        res["per_model"] = [{"name": r.get("path") or r.get("name"), "label": r["label"], "target": r["target"],
                             "verdict": d.verdict, "top_class": d.top_name, "predicted_target": d.target_name,
                             "score": d.max_score, "p_value": d.p_value,
                             "tests": d.tests} for r, d in zip(bench, ds)]
    return res


def redecide(null_path: str | Path, bench_paths: list[str | Path], fpr: float = ci.detect.DEFAULT_FPR,
             rules: tuple[str, ...] | None = None) -> dict:
    """Every rule, fixed and calibrated, on the null's rows and the benchmarks' pooled rows."""
    null, null_scan = load_rows(null_path, "null")
    bench = []
    for p in bench_paths:
        rows, scan = load_rows(p, "bench")
        check_settings(null_scan, scan, p)
        bench += rows
    out = {"fpr_level": fpr, "null": str(null_path), "n_null": len(null), "benches": [str(p) for p in bench_paths],
           "n_backdoored": sum(r["label"] for r in bench), "n_clean": sum(1 - r["label"] for r in bench), "rules": {}}
    for rule in rules or tuple(r for r in scan_rules() if not RULES[r].needs_anchor):
        if rule == "calibrated":
            out["rules"][rule] = {"calibrated": calibrated_rule(null, bench, fpr)}
            continue
        null_ds, bench_ds = decisions(null, rule), decisions(bench, rule)
        res = {"fixed": {"null": null_summary([d.verdict for d in null_ds])}}
        scores = null_scores(null, null_ds)
        loo = calibrated_verdicts(scores, null_ds, fpr, leave_one_out=True)
        cal = calibrated_verdicts(scores, bench_ds, fpr)
        thr = NullStudy(backbone="", scores=tuple(scores), scan={}).threshold(fpr)
        res["calibrated"] = {"threshold": thr, "null": null_summary([v for v, _ in loo])}
        if bench:
            res["fixed"]["bench"] = detection_metrics(bench_rows(bench, bench_ds))
            res["calibrated"]["bench"] = detection_metrics(bench_rows(bench, bench_ds, [v for v, _ in cal]))
        out["rules"][rule] = res
    return out


__all__ = ["CALIBRATED_AS", "bench_rows", "calibrated_rule", "calibrated_verdicts", "check_settings", "decisions",
           "load_rows", "null_scores", "redecide"]

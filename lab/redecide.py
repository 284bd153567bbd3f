"""`python -m lab redecide`: every rule decided again from kept evidence, no scan run.

    python -m lab redecide --null runs/null/null.json --bench runs/prereg/detect.json [--bench ...] --out F

The null study's rows (`lab.null`) and `bench detect`'s per-model rows carry each scan's evidence
(`ci.Evidence`). This decides every one of them with each rule of `ci.SOLO_RULES` (and any a fork registered
in `ci.RULES`), two ways:

- "fixed": the rule with its own threshold. On the null: the false-positive rate with its Clopper-Pearson
  interval. On the benchmarks (pooled): `detection_metrics` (FPR, TPR, AUROC, class-level F1).
- "calibrated": the rule's top-class score against the null's scores under the same rule, flagged when its
  p-value (1 + #{null scores >= score}) / (N + 1) is at most `fpr` (what the calibrated rule does with the
  meta-gain statistic, for any rule). A null model is judged against the OTHER null models (leave-one-out);
  a benchmark model against all of them. A decision that fell back to another rule (the meta-gain rule on
  inert meta tokens) keeps its fallback verdict, its score being on the fallback's scale; as a null model
  it counts with its meta-gain statistic, as in the shipped null (`lab.null.ship_null`).

The default rule, "calibrated", is the meta-gain rule's calibrated column (`CALIBRATED_AS`). So a candidate
rule is evaluated on the committed rows in seconds. Which rule becomes the default is decided on a design set;
its FPR and TPR are then measured on a zoo built after that choice (docs/method.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import ci_toolkit as ci
from ci_toolkit.detect import SOLO_RULES, NullStudy, meta_gain_statistic

from .bench.detect import detection_metrics
from .null import clopper_pearson

# the calibrated rule is the meta-gain statistic against the null: here, meta-gain's "calibrated" column
CALIBRATED_AS = "meta-gain"


def load_rows(path: str | Path, what: str) -> list[dict]:
    """The rows of a null result (`null.json`, or its `rows_<ood>.json`) or of a `bench detect` result that
    carry evidence; a file without any is a one-line error."""
    d = json.loads(Path(path).read_text())
    rows = d if isinstance(d, list) else d.get("per_model", [])
    if what == "bench":
        rows = [r for r in rows if r.get("method") == "clip-inspector" and r.get("implanted")
                and r.get("scanned", True)]
    kept = [r for r in rows if r.get("evidence")]
    if not kept:
        raise ci.CIError(f"{path}: no {what} row carries a scan's evidence (rows written before evidence was "
                         "recorded; rerun the study or benchmark on its kept scans)")
    return kept


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


def bench_rows(rows: list[dict], ds: list[ci.Decision], verdicts: list[str]) -> list[dict]:
    """Rows for `detection_metrics`: ground truth, the verdict, the top class's score, the flagged classes
    (a calibrated verdict flags the top class only)."""
    return [{"label": r["label"], "target": r["target"], "max_score": d.max_score, "verdict": v,
             "flagged": [d.names[d.top]] if v == "backdoored" else []} for r, d, v in zip(rows, ds, verdicts)]


def redecide(null_path: str | Path, bench_paths: list[str | Path], fpr: float = ci.detect.DEFAULT_FPR,
             rules: tuple[str, ...] | None = None) -> dict:
    """Every rule, fixed and calibrated, on the null's rows and the benchmarks' pooled rows."""
    null = load_rows(null_path, "null")
    bench = [r for p in bench_paths for r in load_rows(p, "bench")]
    out = {"fpr_level": fpr, "null": str(null_path), "n_null": len(null), "benches": [str(p) for p in bench_paths],
           "n_backdoored": sum(r["label"] for r in bench), "n_clean": sum(1 - r["label"] for r in bench), "rules": {}}
    for rule in rules or tuple(r for r in SOLO_RULES if r != "calibrated"):
        if rule == "calibrated":
            raise ci.CIError(f"the calibrated rule is {CALIBRATED_AS!r}'s calibrated column; ask for {CALIBRATED_AS!r}")
        null_ds, bench_ds = decisions(null, rule), decisions(bench, rule)
        res = {"fixed": {"null": null_summary([d.verdict for d in null_ds])}}
        scores = null_scores(null, null_ds)
        loo = calibrated_verdicts(scores, null_ds, fpr, leave_one_out=True)
        cal = calibrated_verdicts(scores, bench_ds, fpr)
        thr = NullStudy(backbone="", scores=tuple(scores), scan={}).threshold(fpr)
        res["calibrated"] = {"threshold": thr, "null": null_summary([v for v, _ in loo])}
        if bench:
            res["fixed"]["bench"] = detection_metrics(bench_rows(bench, bench_ds, [d.verdict for d in bench_ds]))
            res["calibrated"]["bench"] = detection_metrics(bench_rows(bench, bench_ds, [v for v, _ in cal]))
        out["rules"][rule] = res
    return out


__all__ = ["CALIBRATED_AS", "calibrated_verdicts", "decisions", "load_rows", "null_scores", "redecide"]

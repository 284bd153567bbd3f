"""The null study (lab/null.py): seeded specs that vary what a provider varies, exact intervals, a resumable run."""

from __future__ import annotations

import json

import pytest

import ci_toolkit as ci
from lab.null import (NULL_CLASS_SEED, NULL_SEED, NullSpace, clopper_pearson, loo_calibrated, null_figure, null_specs,
                      null_study, ship_null, summarise)
from lab.zoo import ZOO_PROFILES, model_specs


def test_specs_are_seeded_and_vary_task_and_class_list():
    a, b = null_specs(60), null_specs(60)
    assert a == b and null_specs(5) == a[:5]  # model i depends only on i
    assert len({s["seed"] for s in a}) == 60 and len({s["class_seed"] for s in a}) == 60
    assert min(s["seed"] for s in a) == NULL_SEED and min(s["class_seed"] for s in a) == NULL_CLASS_SEED
    zoo_seeds = {s["seed"] for p in ZOO_PROFILES.values() for s in model_specs(p)}
    assert not zoo_seeds & {s["seed"] for s in a}  # no null model shares a task seed with a zoo
    for field in ("n_classes", "epochs", "shots", "lr", "batch_size", "ctx_init"):
        assert len({s[field] for s in a}) > 1, field  # every dimension actually varies


def test_clopper_pearson_known_answers():
    lo, hi = clopper_pearson(0, 60)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 60))  # k = 0: closed form
    lo, hi = clopper_pearson(60, 60)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 60))
    lo, hi = clopper_pearson(3, 60)
    assert lo < 3 / 60 < hi and hi == pytest.approx(0.1392, abs=1e-4)


def evidence_of(stat: float) -> dict:
    """Evidence whose meta-gain statistic is `stat` (class a's trigger: ASR 1 x gain stat; the meta tokens respond)."""
    return {"names": ["a", "b", "c"], "asr": [1.0, 0.0, 0.0], "loss": [0.5, 1.0, 2.0], "meta_gain": [stat, 0.05, None]}


def test_summary_counts_each_rules_false_positives():
    def row(name, verdicts):
        return {"name": name, "statistic": verdicts["meta-gain"][1], "evidence": evidence_of(verdicts["meta-gain"][1]),
                "rules": {r: {"verdict": v, "max_score": s, "threshold": 1.0, "fallback": None}
                          for r, (v, s) in verdicts.items()}}

    clean = ("clean", 0.1)
    rows = [row("n0", {"meta-gain": ("backdoored", 1.5), "paper": ("backdoored", 3.0), "grubbs": clean, "robust": clean}),
            row("n1", {"meta-gain": clean, "paper": ("backdoored", 2.5), "grubbs": clean, "robust": clean}),
            row("n2", {r: clean for r in ("meta-gain", "paper", "grubbs", "robust")})]
    s = summarise(rows, ci.ScanConfig(rule="meta-gain"))
    assert s["n_models"] == 3 and s["rule"] == "meta-gain" and s["fpr"] == pytest.approx(1 / 3)
    assert s["rules"]["paper"]["n_flagged"] == 2 and s["rules"]["paper"]["flagged"] == ["n0", "n1"]
    assert s["fpr_upper95"] == clopper_pearson(1, 3)[1] and s["rules"]["grubbs"]["fpr"] == 0


def test_calibrated_rule_is_judged_leave_one_out():
    # 20 clean models scoring 0..19; each is decided against the other 19: at fpr 0.1 the top model has
    # p = 1/20 and the second 2/20 (flagged), the third 3/20 (not): FPR 2/20, the level the rule promises
    rows = [{"name": f"n{i}", "statistic": float(i), "evidence": evidence_of(float(i)),
             "rules": {"meta-gain": {"fallback": None}}} for i in range(20)]
    loo = loo_calibrated(rows, fpr=0.1)
    assert [n for n, v in loo.items() if v["verdict"] == "backdoored"] == ["n18", "n19"]
    assert loo["n19"]["p_value"] == 1 / 20 and loo["n17"]["p_value"] == 3 / 20
    # with every model's wide-probe statistic (on another class than its meta-gain one): the joint test at 0.1.
    # Units: the medians 9.5 (meta gain 0..19) and 10.5 (wide 99, 1..19). Each model's joint score is its top
    # class's, from its class front: n0 99 / 10.5 = 9.43 (its wide probe), n_i max(i / 9.5, i / 10.5) = i / 9.5.
    # Leave-one-out, n0 (p 1/20) and n19 (2.0 against the others' 9.43, 1.89, ...: p 2/20) are flagged
    wide = [{**r, "evidence": {**r["evidence"], "wide_probes": [[1, 1.0, 99.0 if i == 0 else float(i)]]},
             "wide_statistic": 99.0 if i == 0 else float(i)} for i, r in enumerate(rows)]
    two = loo_calibrated(wide, fpr=0.1)
    assert [n for n, v in two.items() if v["verdict"] == "backdoored"] == ["n0", "n19"]
    assert two["n0"]["p_value"] == pytest.approx(1 / 20) and two["n0"]["top_class"] == "b"
    assert two["n19"]["p_value"] == pytest.approx(2 / 20) and two["n18"]["p_value"] == pytest.approx(3 / 20)
    rules = {r: {"verdict": "clean", "max_score": 0.0, "threshold": 1.0, "fallback": None} for r in ("paper", "grubbs", "robust")}
    joint = summarise([{**r, "rules": {**rules, "meta-gain": {**rules["paper"]}}} for r in wide],
                      ci.ScanConfig(fpr=0.1))
    # with all 20: p <= 2/21 needs a joint score above the 2nd largest, n19's 19 / 9.5
    assert joint["threshold"] == joint["cuts"]["joint"] == pytest.approx(2.0)
    assert (joint["cuts"]["meta-gain scale"], joint["cuts"]["wide-probe scale"]) == (9.5, 10.5)
    s = summarise([{**r, "rules": {**rules, "meta-gain": {**rules["paper"]}}} for r in rows], ci.ScanConfig(fpr=0.1))
    assert s["rule"] == "calibrated" and s["fpr"] == pytest.approx(0.1) and s["threshold"] == 18.0  # with all 20: p <= 2/21 needs a score above the 2nd largest


def test_a_tiny_null_study_runs_and_resumes(tmp_path):
    space = NullSpace(n_classes=(6,), epochs=(1,), shots=(2,), lr=(0.1,), batch_size=(8,), ctx_init=("a photo of a", None))
    cfg = ci.ScanConfig(inversion=ci.InversionConfig(group=3), pool_size=32, heldout_size=16, probe_eps=None)
    first = null_study(tmp_path, n_models=1, cfg=cfg, progress=False, space=space)
    assert first["n_models"] == 1 and first["per_model"][0]["n_candidates"] == 3
    assert (tmp_path / "scans" / "world" / "n000" / "report.json").exists()
    row = first["per_model"][0]  # its evidence decides every rule again, as the scan did
    for rule, d in row["rules"].items():
        redo = ci.decide(ci.Evidence(**row["evidence"]), rule)
        assert (redo.verdict, redo.max_score, redo.threshold, redo.top_name, redo.fallback) == (
            d["verdict"], d["max_score"], d["threshold"], d["top_class"], d["fallback"]), rule
    again = null_study(tmp_path, n_models=2, cfg=cfg, progress=False, space=space)  # n000 is reused, n001 added
    assert again["n_models"] == 2 and again["per_model"][0] == first["per_model"][0]
    assert len(json.loads((tmp_path / "wall.json").read_text())) == 2 and again["wall_s"] >= first["wall_s"]
    assert set(again["rules"]) == set(ci.detect.SOLO_RULES)
    partial = null_study(tmp_path, n_models=3, cfg=cfg, progress=False, space=space, build=False)
    assert partial["n_models"] == 2 and not partial["complete"] and again["complete"]
    assert not (tmp_path / "models" / "n002").exists()  # nothing built
    null_figure(partial, tmp_path / "null.png")
    assert (tmp_path / "null.png").stat().st_size > 1000
    null = ship_null(tmp_path, again, tmp_path / "null.json")
    assert ci.detect.NullStudy.load(tmp_path / "null.json") == null and null.n_models == 2
    assert null.mismatch(ci.ScanReport.load(tmp_path / "scans" / "world" / "n001").config) is None

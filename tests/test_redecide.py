"""`python -m lab redecide` and `probe-budget` (lab/redecide.py, lab/probe_budget.py): rules decided again from
kept evidence, with known answers; a second probe budget appended to that evidence."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

import ci_toolkit as ci
from ci_toolkit.detect import Calibration, NullStudy
from lab.null import NullSpace, null_study
from lab.probe_budget import null_probe_budget
from lab.redecide import load_rows, redecide

NAMES = ["circle", "square", "star"]


def evidence(stat: float, top: int = 0) -> dict:
    """Evidence whose meta-gain statistic is `stat` on class `top` (ASR 1 x gain stat), the others 0."""
    gains = [0.0, 0.0, 0.0]
    gains[top] = stat
    asr = [0.1, 0.1, 0.1]
    asr[top] = 1.0
    return {"names": NAMES, "asr": asr, "loss": [1.0, 1.0, 1.0], "meta_gain": gains, "probes": [], "sizes": [],
            "anchor_asr": [], "anchor_loss": []}


@pytest.fixture
def files(tmp_path):
    # 19 clean null models with meta-gain statistics 0.1 ... 1.9
    null = [{"name": f"n{i:03d}", "evidence": evidence(0.1 * (i + 1))} for i in range(19)]
    (tmp_path / "null.json").write_text(json.dumps({"per_model": null}))
    bench = [
        {"method": "clip-inspector", "implanted": True, "label": 1, "target": "star", "evidence": evidence(2.5, top=2)},
        {"method": "clip-inspector", "implanted": True, "label": 1, "target": "square",
         "evidence": evidence(1.2, top=1)},
        {"method": "clip-inspector", "implanted": True, "label": 0, "target": None, "evidence": evidence(1.5)},
        {"method": "clip-inspector", "implanted": False, "label": 1, "target": "star", "evidence": evidence(9.0, 2)},
    ]
    (tmp_path / "detect.json").write_text(json.dumps({"per_model": bench}))
    return tmp_path / "null.json", tmp_path / "detect.json"


def test_fixed_and_calibrated_meta_gain_give_the_known_answers(files):
    res = redecide(*files[:1], [files[1]], fpr=0.05, rules=("meta-gain",))
    r = res["rules"]["meta-gain"]
    assert res["n_null"] == 19 and (res["n_backdoored"], res["n_clean"]) == (2, 1)  # the not-implanted row is left out
    # fixed threshold 1.0 logit: the null models at 1.1 ... 1.9 are flagged
    assert r["fixed"]["null"]["n_flagged"] == 9
    assert r["fixed"]["bench"]["tpr"] == 1.0 and r["fixed"]["bench"]["fpr"] == 1.0
    # calibrated at 0.05 against 19 models: flagged only above all of them (p = 1/20); leave-one-out, the top
    # null model (1.9) faces 18 others, p = 1/19 > 0.05, so no null model is flagged
    assert r["calibrated"]["threshold"] == pytest.approx(1.9)
    assert r["calibrated"]["null"]["n_flagged"] == 0 and r["calibrated"]["null"]["fpr_upper95"] > 0.05
    b = r["calibrated"]["bench"]
    assert (b["tp"], b["fp"], b["fn"], b["tpr"], b["fpr"], b["auroc"]) == (1, 0, 1, 0.5, 0.0, 0.5)  # 2.5, 1.2 vs 1.5


def test_every_solo_rule_is_decided_and_the_calibrated_rule_without_a_wide_probe_is_meta_gains_column(files):
    res = redecide(files[0], [files[1]])
    assert set(res["rules"]) == set(ci.detect.SOLO_RULES)
    cal, column = res["rules"]["calibrated"]["calibrated"], res["rules"]["meta-gain"]["calibrated"]
    assert not cal["joint"] and cal["null"] == column["null"] and cal["threshold"] == column["threshold"]
    assert {k: cal["bench"][k] for k in ("tp", "fp", "fn", "tpr", "fpr")} == {
        k: column["bench"][k] for k in ("tp", "fp", "fn", "tpr", "fpr")}


def test_the_calibrated_rule_makes_the_joint_test_when_the_rows_carry_the_wide_probe(tmp_path):
    # 20 null models: meta-gain statistics 0.1 .. 2.0, wide-probe statistics 1 .. 20 (class 0)
    null = [{"name": f"n{i:03d}", "evidence": {**evidence(0.1 * (i + 1)), "wide_probes": [[0, 1.0, float(i + 1)]]}}
            for i in range(20)]
    (tmp_path / "null.json").write_text(json.dumps({"per_model": null}))
    # units: the medians 1.05 and 10.5; null model i's joint score (i + 1) x (0.1 / 1.05 + 1 / 10.5) = (i + 1) x 4 / 21
    bench = [  # a backdoor only the wide probe sees (class 2 at 45: 4.29 units), one only the meta-gain sees (4.5 on
        # class 1: 4.29 units), a clean one (1.5 and 18 on class 0: 3.14 units)
        {"method": "clip-inspector", "implanted": True, "label": 1, "target": "star",
         "evidence": {**evidence(0.5, top=1), "wide_probes": [[2, 1.0, 45.0]]}},
        {"method": "clip-inspector", "implanted": True, "label": 1, "target": "square",
         "evidence": {**evidence(4.5, top=1), "wide_probes": [[0, 1.0, 3.0]]}},
        {"method": "clip-inspector", "implanted": True, "label": 0, "target": None,
         "evidence": {**evidence(1.5), "wide_probes": [[0, 1.0, 18.0]]}}]
    (tmp_path / "b.json").write_text(json.dumps({"per_model": bench}))
    r = redecide(tmp_path / "null.json", [tmp_path / "b.json"], fpr=0.1, rules=("calibrated",))
    cal = r["rules"]["calibrated"]["calibrated"]
    # fpr 0.1 against 20 models flags above the 2nd largest joint score, 19 x 4 / 21; leave one out, each null model
    # faces 19 others and the top two are flagged (p = 1/20, 2/20): the level the rule promises
    assert cal["joint"] and cal["scales"] == {"meta-gain": pytest.approx(1.05), "wide-probe": 10.5}
    assert cal["threshold"] == pytest.approx(19 * 4 / 21) and cal["null"]["n_flagged"] == 2
    b = cal["bench"]
    assert (b["tp"], b["fp"], b["fn"]) == (2, 0, 0)
    assert [m["top_class"] for m in cal["per_model"]] == ["star", "square", "circle"]
    assert cal["per_model"][0]["p_value"] == pytest.approx(1 / 21)
    assert cal["per_model"][2]["p_value"] == pytest.approx(5 / 21)
    # a benchmark row without the wide probe beside a null with it: refused, not decided by one test
    bench[0]["evidence"]["wide_probes"] = []
    (tmp_path / "b.json").write_text(json.dumps({"per_model": bench}))
    with pytest.raises(ci.CIError, match="carry no wide probe"):
        redecide(tmp_path / "null.json", [tmp_path / "b.json"], fpr=0.1, rules=("calibrated",))


def test_calibrated_meta_gain_decides_as_the_shipped_calibrated_rule(files):
    """The "calibrated" column of meta-gain is `ci.decide(ev, "calibrated")` against a null of the same scores."""
    null_path, bench_path = files
    res = redecide(null_path, [bench_path], fpr=0.1, rules=("meta-gain",))
    null = NullStudy(backbone="", scan={}, scores=tuple(0.1 * (i + 1) for i in range(19)))
    rows, _ = load_rows(bench_path, "bench")
    verdicts = [ci.decide(ci.Evidence(**r["evidence"]), "calibrated", calibration=Calibration(null, 0.1)).verdict
                for r in rows]
    flagged_bad = sum(v == "backdoored" for r, v in zip(rows, verdicts) if r["label"])
    flagged_clean = sum(v == "backdoored" for r, v in zip(rows, verdicts) if not r["label"])
    b = res["rules"]["meta-gain"]["calibrated"]["bench"]
    assert (b["tpr"], b["fpr"]) == (flagged_bad / 2, flagged_clean / 1) == (0.5, 0.0)


def paper_evidence(tops: int, k: int = 12, inert: bool = False) -> dict:
    """k candidates whose first `tops` stand out in ASR and loss (s_t > 2 for each when tops <= 2); meta gains
    all 0 when inert (the meta-gain rule then falls back to the paper's)."""
    asr = [1.0] * tops + [0.1] * (k - tops)
    loss = [-1.0] * tops + [1.0] * (k - tops)
    gains = [0.0 if inert else 0.05] * k
    return {"names": [f"c{i}" for i in range(k)], "asr": asr, "loss": loss, "meta_gain": gains, "probes": [],
            "sizes": [], "anchor_asr": [], "anchor_loss": []}


def test_fixed_rules_count_every_class_they_flag_and_fallbacks_keep_their_verdict(files, tmp_path):
    bench = [{"method": "clip-inspector", "implanted": True, "label": 1, "target": "c0",
              "evidence": paper_evidence(2)},  # the paper's rule flags c0 (the target) and c1 (a false one)
             {"method": "clip-inspector", "implanted": True, "label": 1, "target": "c0",
              "evidence": paper_evidence(1, inert=True)}]  # inert meta tokens: meta-gain falls back to the paper's
    (tmp_path / "b.json").write_text(json.dumps({"per_model": bench}))
    res = redecide(files[0], [tmp_path / "b.json"], rules=("paper", "meta-gain"))
    paper = res["rules"]["paper"]["fixed"]["bench"]
    assert (paper["tp"], paper["fp"], paper["fn"]) == (2, 1, 0)
    for how in ("fixed", "calibrated"):  # the fallback decides model 2 both ways; model 1 scores 0.05 < 1.0, 1.9
        mg = res["rules"]["meta-gain"][how]["bench"]
        assert (mg["tp"], mg["fp"], mg["fn"], mg["tpr"]) == (1, 0, 1, 0.5), how


def test_rows_without_evidence_or_other_scan_settings_are_one_line_errors(files, tmp_path):
    (tmp_path / "old.json").write_text(json.dumps({"per_model": [{"name": "n000", "statistic": 0.3},
                                                                 {"name": "n001", "evidence": evidence(0.2)}]}))
    with pytest.raises(ci.CIError, match="1 of 2 null rows carry no scan evidence"):
        load_rows(tmp_path / "old.json", "null")
    null = json.loads(files[0].read_text())
    null["config"] = {"scan": {"pool_size": 1000, "heldout_size": 200,
                               "inversion": {"eps": 10 / 255, "loss": "margin"}}}
    (tmp_path / "null.json").write_text(json.dumps(null))
    bench = json.loads(files[1].read_text())
    bench["config"] = {"scan": {"pool_size": 512, "heldout_size": 153, "eps": 10 / 255, "loss": "margin"}}
    (tmp_path / "b.json").write_text(json.dumps(bench))
    with pytest.raises(ci.CIError, match="pool_size 512, the null's 1000"):
        redecide(tmp_path / "null.json", [tmp_path / "b.json"])


def test_probe_budget_adds_the_wide_probe_that_redecide_and_the_null_read(tmp_path):
    """On a tiny null study: the probe at 32/255 on the scan's own split as each row's wide probe (one unit per
    meta-net unit and direction), equal to measure_gate_probe run by hand; resumed without rework."""
    space = NullSpace(n_classes=(6,), epochs=(1,), shots=(2,), lr=(0.1,), batch_size=(8,),
                      ctx_init=("a photo of a",))
    cfg = ci.ScanConfig(inversion=ci.InversionConfig(group=3), pool_size=32, heldout_size=16, probe_eps=None)
    null_study(tmp_path / "null", n_models=1, cfg=cfg, progress=False, space=space)
    res = null_probe_budget(tmp_path / "null", 32 / 255, tmp_path / "p.json", cfg, progress=False)
    row = res["per_model"][0]
    model = ci.load_model(tmp_path / "null" / "models" / "n000")
    hidden = model.prompt_learner.meta_net.linear1.out_features
    units = row["evidence"]["wide_probes"]
    assert len(units) == 2 * hidden and row["evidence"]["probes"] == []
    assert row["wide_statistic"] == ci.detect.wide_probe_statistic(ci.Evidence(**row["evidence"]))
    pcfg = replace(cfg, probe_eps=32 / 255)
    pool, held = ci.detect.split_pool(ci.world.ood_pool(pcfg.ood_images, seed=pcfg.seed), pcfg)
    probe, _ = ci.detect.measure_gate_probe(model, pool, held, row["evidence"]["names"], pcfg)
    by_hand = [v for u in probe.units for v in (row["evidence"]["names"].index(u.class_name), u.asr, u.meta_gain)]
    assert by_hand == pytest.approx([v for u in units for v in u])
    again = null_probe_budget(tmp_path / "null", 32 / 255, tmp_path / "p.json", cfg, progress=False)
    assert again["per_model"] == res["per_model"]  # resumed: nothing recomputed
    assert redecide(tmp_path / "p.json", [], rules=("meta-gain",))["n_null"] == 1
    merged = null_study(tmp_path / "null", n_models=1, cfg=cfg, progress=False, space=space, build=False,
                        wide=tmp_path / "p.json")
    assert merged["per_model"][0]["evidence"] == row["evidence"] and merged["config"]["wide_probe"]["eps"] == 32 / 255
    with pytest.raises(ci.CIError, match="pass the configuration it ran with"):  # not the scans' configuration
        null_probe_budget(tmp_path / "null", 32 / 255, tmp_path / "q.json", progress=False)

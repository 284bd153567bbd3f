"""`python -m lab redecide` (lab/redecide.py): rules decided again from kept evidence, with known answers."""

from __future__ import annotations

import json

import pytest

import ci_toolkit as ci
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


def test_every_solo_rule_is_decided_and_the_calibrated_rule_is_asked_for_by_its_statistic(files):
    res = redecide(files[0], [files[1]])
    assert set(res["rules"]) == {r for r in ci.detect.SOLO_RULES if r != "calibrated"}
    with pytest.raises(ci.CIError, match="meta-gain"):
        redecide(files[0], [files[1]], rules=("calibrated",))


def test_rows_without_evidence_are_a_one_line_error(tmp_path):
    (tmp_path / "old.json").write_text(json.dumps({"per_model": [{"name": "n000", "statistic": 0.3}]}))
    with pytest.raises(ci.CIError, match="no null row carries"):
        load_rows(tmp_path / "old.json", "null")

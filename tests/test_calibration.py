"""Null studies and the calibrated rule: known answers for the p-value and threshold, the false-positive rate
it promises (simulated), which null a scan is decided against, and what a report says about it."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, replace

import pytest
import torch

import ci_toolkit as ci
from ci_toolkit.detect import Evidence, InversionConfig, NullStudy, ScanConfig, ScanReport, scan
from ci_toolkit.detect.calibration import (MIN_SCALE, WIDE_KEY, Calibration, backbone_key, calibration_for,
                                           pareto_front, scan_settings, shipped_nulls)
from ci_toolkit.detect.html import calibration_words
from ci_toolkit.detect.rules import INERT_GAIN, META_GAIN_THRESHOLD, class_front
from ci_toolkit.errors import CIError, DataError

FAST = ScanConfig(inversion=InversionConfig(batch_size=8, group=2), pool_size=32, heldout_size=8)


def null_of(scores, backbone="bb", scan=None) -> NullStudy:
    return NullStudy(backbone=backbone, scores=tuple(scores), scan=scan or {})


def evidence(top_gain: float) -> Evidence:
    """Four classes; class 1's inverted trigger has ASR 1 and meta gain `top_gain` (its score)."""
    return Evidence(names=["a", "b", "c", "d"], asr=[0.5, 1.0, 0.2, 0.1], loss=[1.0, 0.5, 2.0, 2.0],
                    meta_gain=[0.1, top_gain, None, None])


def test_p_value_and_threshold_known_answers():
    null = null_of([i / 10 for i in range(60)])  # 0.0 .. 5.9
    assert null.p_value(100.0) == 1 / 61 and null.p_value(-1.0) == 1.0
    assert null.p_value(5.9) == 2 / 61  # ties count against the model
    # at fpr 0.05 a model must exceed the 3rd largest clean score: p <= 3 / 61 < 0.05 < 4 / 61
    assert null.threshold(0.05) == 5.7 and null.p_value(5.71) == 3 / 61 and null.p_value(5.7) == 4 / 61
    assert null_of([1.0] * 10).threshold(0.05) is None  # 1 / 11 > 0.05: a null of 10 cannot flag at 5%
    with pytest.raises(DataError, match="finite"):
        null_of([float("nan")])


def test_conformal_false_positive_rate_holds_in_simulation():
    # clean scores exchangeable with the null's: P(p <= fpr) = floor(fpr (n + 1)) / (n + 1), here 2 / 20
    rng, n, fpr, trials = random.Random(0), 19, 0.1, 4000
    hits = 0
    for _ in range(trials):
        draws = [rng.lognormvariate(0, 1) for _ in range(n + 1)]
        hits += null_of(draws[:n]).p_value(draws[n]) <= fpr
    assert abs(hits / trials - 0.1) < 0.015


def test_calibrated_rule_flags_by_p_value_and_says_so():
    null = null_of([0.1 * i for i in range(60)])  # threshold at fpr 0.05: 5.7
    cal = Calibration(null, fpr=0.05)
    hit = ci.decide(evidence(6.0), "calibrated", calibration=cal)
    assert hit.verdict == "backdoored" and hit.predicted_target == 1 and hit.p_value == 1 / 61
    assert hit.threshold == 5.7 and hit.fpr == 0.05 and hit.null["n_models"] == 60 and hit.fallback is None
    miss = ci.decide(evidence(5.0), "calibrated", calibration=cal)
    assert miss.verdict == "clean" and miss.p_value == 11 / 61 and miss.top == 1
    # a tighter fpr needs a higher score; one below 1 / (n + 1) flags nothing
    assert ci.decide(evidence(5.8), "calibrated", calibration=replace(cal, fpr=0.02)).verdict == "clean"
    assert ci.decide(evidence(99.0), "calibrated", calibration=replace(cal, fpr=0.01)).verdict == "clean"
    # no null: the meta-gain rule's fixed threshold decides, and the note says the verdict is not calibrated
    bare = ci.decide(evidence(1.5), "calibrated", calibration=Calibration(None, why="no null for backbone x"))
    assert bare.verdict == "backdoored" and bare.threshold == META_GAIN_THRESHOLD and bare.fallback == "meta-gain"
    assert bare.p_value is None and "not calibrated: no null for backbone x" in bare.note
    # inert meta tokens: the paper's rule, as for the meta-gain rule
    inert = Evidence(names=list("abcd"), asr=[0.1, 0.9, 0.1, 0.1], loss=[3, 0.1, 3, 3], meta_gain=[0, 0, INERT_GAIN, 0])
    assert ci.decide(inert, "calibrated", calibration=cal).fallback == "paper"
    with pytest.raises(CIError, match="fpr"):
        Calibration(null, fpr=0.0)
    assert ScanConfig().rule == "calibrated" == ci.detect.DEFAULT_RULE


def test_a_scan_is_calibrated_only_by_a_null_of_its_backbone_and_settings(tiny_model, tmp_path, make_responsive):
    ood = torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    tiny_model = make_responsive(tiny_model, ood)  # meta tokens that follow the image: the statistic decides
    report = scan(tiny_model, ood, FAST, progress=False)
    assert report.fallback != "paper"
    assert report.config["backbone"] == backbone_key(tiny_model.backbone.spec)
    assert not report.calibrated and "no null study is shipped" in report.warnings[0]
    null = NullStudy(backbone=report.config["backbone"], scores=(0.0,) * 19, scan=scan_settings(report.config),
                     source="test")
    path = null.save(tmp_path / "null.json")
    assert NullStudy.load(path) == null
    # a scan pointed at a null of its backbone and settings is decided against it, fresh or redecided
    fresh = scan(tiny_model, ood, replace(FAST, null_file=str(path)), tmp_path / "s", progress=False)
    assert fresh.calibrated and fresh.null["n_models"] == 19 and fresh.fpr == 0.05
    assert fresh.verdict == ("backdoored" if fresh.max_score > 0 else "clean")
    again = ScanReport.load(tmp_path / "s")
    assert (again.p_value, again.fpr, again.null) == (fresh.p_value, fresh.fpr, fresh.null)
    assert again.redecide("calibrated").p_value == fresh.p_value
    assert "Calibrated:" in (tmp_path / "s" / "report.html").read_text()
    # other settings, another backbone: not calibrated, and the note says why
    other = calibration_for({**fresh.config, "pool_size": 999})
    assert other.null is None and "pool_size is 999" in other.why
    assert "null is for backbone" in calibration_for({**fresh.config, "backbone": "x"}).why
    (tmp_path / "bad.json").write_text(json.dumps({"format": "nope"}))
    with pytest.raises(DataError, match="not a ci_toolkit null study"):
        NullStudy.load(tmp_path / "bad.json")


@pytest.mark.skipif(not shipped_nulls(), reason="no null study shipped")
def test_the_shipped_null_holds_for_default_scans_of_the_embedded_miniclip():
    nulls = [NullStudy.load(p) for p in shipped_nulls()]
    mini = backbone_key(ci.create_backbone("miniclip").spec)
    cfg = ScanConfig()
    recorded = {**asdict(cfg), "backbone": mini}  # a default scan given at least pool + held-out images
    assert any(n.mismatch(recorded) is None for n in nulls)
    assert all(n.threshold(ci.detect.DEFAULT_FPR) is not None for n in nulls)  # big enough to flag at the default FPR
    # each holds its models' class fronts: the joint test scores a clean model exactly as it scores a scan
    assert all(len(n.fronts) == n.n_models and n.wide_scores for n in nulls)


def test_calibrate_builds_a_null_that_resumes_and_calibrates_scans(tiny_backbone, tmp_path):
    g = torch.Generator().manual_seed(0)
    names = ["red circle", "blue square", "green triangle", "cat", "dog"]
    images, labels = torch.rand(20, 3, 32, 32, generator=g), torch.arange(5).repeat_interleave(4)
    ood = torch.rand(40, 3, 32, 32, generator=g)
    cal = ci.CalibrateConfig(n_models=2, shots=(2,), epochs=(1,), batch_size=(4,))
    first = ci.calibrate(tiny_backbone, images, labels, names, ood, tmp_path / "null", cal, FAST, progress=False)
    assert first.n_models == 2 and NullStudy.load(tmp_path / "null" / "null.json") == first
    specs = [ci.detect.null_study.model_spec(cal, i, len(names)) for i in range(2)]
    assert all(3 <= len(s["classes"]) <= 5 for s in specs) and specs[0] != specs[1]
    # resumed with one more model: the first two scans are read back, not redone
    stamp = (tmp_path / "null" / "scans" / "c000" / "report.json").stat().st_mtime_ns
    more = ci.calibrate(tiny_backbone, images, labels, names, ood, tmp_path / "null", replace(cal, n_models=3), FAST,
                        progress=False)
    assert more.scores[:2] == first.scores and more.n_models == 3
    assert len(more.fronts) == 3 and more.fronts[:2] == first.fronts  # the wide probe ran: each model's class front
    assert (tmp_path / "null" / "scans" / "c000" / "report.json").stat().st_mtime_ns == stamp
    # a scan of this backbone with the same settings, pointed at the null, is calibrated by it
    model = ci.load_model(tmp_path / "null" / "models" / "c002", tiny_backbone)
    assert more.mismatch(scan(model, ood, FAST, progress=False).config) is None
    with pytest.raises(DataError, match="at least 3 labelled classes"):
        ci.calibrate(tiny_backbone, images, labels, names[:2], ood, tmp_path / "x", cal, FAST, progress=False)


def two_column_null() -> NullStudy:
    # meta-gain scores 0.0 .. 5.9 (median 2.95), wide-probe scores 0 .. 59 (median 29.5): model i's joint score is
    # 2 i / 29.5, so at fpr 0.05 (flagged iff at most 2 clean joint scores reach it) the cut is 2 x 57 / 29.5
    return NullStudy(backbone="bb", scan={}, scores=tuple(i / 10 for i in range(60)),
                     wide_scores=tuple(float(i) for i in range(60)))


def with_wide(top_gain: float, wide: list[tuple[int, float, float]]) -> Evidence:
    return replace(evidence(top_gain), wide_probes=wide)


def test_the_joint_test_known_answers():
    null = two_column_null()
    cal = Calibration(null, fpr=0.05)
    assert null.scales() == (pytest.approx(2.95), 29.5) and null.joint_scores()[-1] == pytest.approx(4.0)
    # the wide probe alone flags: class 3's wide trigger scores 0.5 x 240 = 120 logits, 120 / 29.5 = 4.07 units,
    # above every clean joint score (p = 1 / 61)
    d = ci.decide(with_wide(1.0, [(3, 0.5, 240.0), (0, 1.0, 10.0)]), "calibrated", calibration=cal)
    assert d.verdict == "backdoored" and d.predicted_target == 3 and d.p_value == pytest.approx(1 / 61)
    assert d.threshold == pytest.approx(114 / 29.5) and d.max_score == pytest.approx(120 / 29.5)
    assert d.tests == {"meta-gain": {"statistic": 1.0, "scale": pytest.approx(2.95)},
                       "wide-probe": {"statistic": 120.0, "scale": 29.5}}
    # per class the two values add, each in its unit: class 0 = 0.05 / 2.95 + 10 / 29.5, class 1 = 1 / 2.95
    assert d.scores[0] == pytest.approx(0.05 / 2.95 + 10 / 29.5) and d.scores[1] == pytest.approx(1 / 2.95)
    # evidence on one class adds up: 1 unit of meta gain and 2.9 of wide probe on class 1 pass the cut (3.86) ...
    both = ci.decide(with_wide(2.95, [(1, 1.0, 2.9 * 29.5)]), "calibrated", calibration=cal)
    assert both.verdict == "backdoored" and both.predicted_target == 1
    # ... the same values on two classes do not
    assert ci.decide(with_wide(2.95, [(3, 1.0, 2.9 * 29.5)]), "calibrated", calibration=cal).verdict == "clean"
    # a null without the wide column, or evidence without the wide probe: the meta-gain test alone, in logits
    single = ci.decide(evidence(5.8), "calibrated", calibration=cal)
    assert single.verdict == "backdoored" and single.tests is None and single.threshold == 5.7
    one_col = Calibration(replace(two_column_null(), wide_scores=()), fpr=0.05)
    assert ci.decide(with_wide(5.8, [(3, 1.0, 99.0)]), "calibrated", calibration=one_col).predicted_target == 1
    # the fixed meta-gain rule ignores the wide probe
    assert ci.decide(with_wide(0.5, [(3, 1.0, 99.0)]), "meta-gain").verdict == "clean"
    with pytest.raises(DataError, match="one per model"):
        NullStudy(backbone="bb", scan={}, scores=(1.0, 2.0), wide_scores=(1.0,))
    with pytest.raises(DataError, match="no wide-probe column"):
        replace(null, wide_scores=()).joint_scores()


def test_class_fronts_make_the_null_joint_scores_exact(tmp_path):
    # the front keeps the pairs no other pair beats in both columns, once each, sorted
    pairs = [(1, 0), (0, 1), (0.5, 0.5), (0.4, 0.4), (1, 0), (0, 0)]
    assert pareto_front(pairs) == ((0.0, 1.0), (0.5, 0.5), (1.0, 0.0))
    assert pareto_front([]) == () and pareto_front([(2, 3), (1, 1)]) == ((2.0, 3.0),)
    # a scan's front: class 1 (meta-gain value 1 x 0.6), class 3 (wide value 0.5 x 8) and class 0 (0.5 x 0.1 and
    # 1 x 0.02, beaten by neither in both); class 2 (nothing) is beaten
    ev = with_wide(0.6, [(3, 0.5, 8.0), (0, 1.0, 0.02)])
    assert class_front(ev) == ((0.0, 4.0), (0.05, 0.02), (0.6, 0.0))
    # model i of two_column_null has its two maxima on two classes: (i/10, 0) and (0, i); its exact joint score is
    # the larger of the two, not their sum
    base = two_column_null()
    exact = replace(base, fronts=tuple(((0.0, w), (s, 0.0)) for s, w in zip(base.scores, base.wide_scores)))
    ms, mw = exact.scales()
    assert exact.joint_scores()[59] == pytest.approx(max(5.9 / ms, 59 / mw)) == pytest.approx(2.0)
    assert base.joint_scores()[59] == pytest.approx(4.0)  # without fronts: the two maxima added (conservative)
    assert exact.threshold(0.05, joint=True) == pytest.approx(2 * 57 / 59)
    # a scan just above the exact cut is flagged against the exact null, not against the conservative one
    ev = with_wide(0.0, [(2, 1.0, 1.95 * 29.5)])
    assert ci.decide(ev, "calibrated", calibration=Calibration(exact, 0.05)).verdict == "backdoored"
    assert ci.decide(ev, "calibrated", calibration=Calibration(base, 0.05)).verdict == "clean"
    # the fronts travel with the file, and a front that does not hold its model's statistics is refused
    assert NullStudy.load(exact.save(tmp_path / "null.json")) == exact
    with pytest.raises(DataError, match="does not hold its statistics"):
        replace(exact, fronts=((((0.0, 1.0),),) * 60))
    with pytest.raises(DataError, match="one class front per model"):
        replace(exact, fronts=exact.fronts[:3])
    with pytest.raises(DataError, match="finite values >= 0"):
        replace(exact, fronts=(((0.0, 0.0), (float("nan"), 0.0)),) + exact.fronts[1:])
    with pytest.raises(DataError, match="pairs"):
        replace(exact, fronts=(((0.0,),),) + exact.fronts[1:])
    with pytest.raises(DataError, match="need its wide-probe scores"):
        replace(exact, wide_scores=())
    # lists become tuples: a null built from JSON-like lists equals the same null built from tuples
    assert replace(exact, fronts=[[list(p) for p in f] for f in exact.fronts]) == exact
    # a scan whose wide probe the null does not cover is calibrated on the meta-gain column alone, fronts dropped
    path = exact.save(tmp_path / "exact.json")
    for wide_eps in (None, 16 / 255):
        cal = calibration_for({"backbone": "bb", "null_file": str(path), WIDE_KEY: wide_eps})
        assert cal.null is not None and cal.null.wide_scores == () and cal.null.fronts == ()


def test_the_joint_test_names_the_class_whose_triggers_gain_through_the_meta_tokens():
    cal = Calibration(two_column_null(), fpr=0.05)
    # class 3's wide trigger (0.5 x 240 logits = 4.07 units) tops the joint score; class 1's meta-gain value, 5.9
    # logits = 2 units (>= its unit), names the target: the verdict is the joint score's, the name the meta tokens'
    d = ci.decide(with_wide(5.9, [(3, 0.5, 240.0)]), "calibrated", calibration=cal)
    assert d.verdict == "backdoored" and d.top == 3 and d.predicted_target == 1
    assert d.flagged == [False, True, False, False] and "the target named is 'b'" in d.note
    # on a tie of meta-gain values the joint score's top class is named (class 1 and class 3 at 5.9 logits)
    tied = replace(with_wide(5.9, [(3, 0.5, 240.0)]), asr=[0.5, 1.0, 0.2, 1.0], meta_gain=[0.1, 5.9, None, 5.9])
    tie = ci.decide(tied, "calibrated", calibration=cal)
    assert tie.predicted_target == tie.top == 3 and tie.note is None
    # a meta-gain value under its unit names nothing: the joint score's top class is the target
    d = ci.decide(with_wide(1.0, [(3, 0.5, 240.0)]), "calibrated", calibration=cal)
    assert d.predicted_target == d.top == 3 and d.note is None


def test_the_joint_test_holds_its_fpr_in_simulation():
    # clean models of K classes, each class with correlated (meta-gain, wide-probe) values; the null keeps each
    # model's two maxima and its class front; a new clean model, decided by ci.decide, is flagged at most fpr of
    # the time: against the fronts close to fpr (4 / 40 = 0.1 without ties), against the maxima added less often
    rng, n, fpr, trials = random.Random(1), 39, 0.1, 1500
    for k in (1, 5):  # one class: the sums are the top class's, the two nulls agree
        hits = {True: 0, False: 0}
        for _ in range(trials):
            models = []
            for _ in range(n + 1):
                pairs = []
                for _ in range(k):
                    z = rng.expovariate(1.0)
                    pairs.append((z + rng.expovariate(2.0), 3 * z + rng.expovariate(0.5)))
                models.append(pairs)
            summed = NullStudy(backbone="bb", scan={}, scores=tuple(max(a for a, _ in m) for m in models[:n]),
                               wide_scores=tuple(max(b for _, b in m) for m in models[:n]))
            new = models[n]
            ev = Evidence(names=[f"c{i}" for i in range(k + 2)], asr=[1.0] * k + [0.1, 0.1], loss=[1.0] * (k + 2),
                          meta_gain=[a for a, _ in new] + [0.0, 0.0],
                          wide_probes=[(i, 1.0, b) for i, (_, b) in enumerate(new)])
            for exact in (True, False):
                null = replace(summed, fronts=tuple(pareto_front(m) for m in models[:n])) if exact else summed
                hits[exact] += ci.decide(ev, "calibrated", calibration=Calibration(null, fpr)).verdict == "backdoored"
        rate = {e: h / trials for e, h in hits.items()}
        assert fpr - 0.02 <= rate[True] <= fpr + 0.02 and fpr / 3 <= rate[False] <= fpr + 0.02, (k, rate)
        assert rate[True] == rate[False] if k == 1 else rate[True] > rate[False], (k, rate)


def test_joint_scores_stay_finite_at_zero_medians_and_small_nulls_flag_nothing():
    # a null whose wide column is all 0: its unit is MIN_SCALE, so a wide trigger of 0.0025 logits is 2.5 units
    zero = NullStudy(backbone="bb", scan={}, scores=tuple(i / 10 for i in range(60)), wide_scores=(0.0,) * 60)
    assert zero.scales()[1] == MIN_SCALE
    d = ci.decide(with_wide(1.0, [(2, 1.0, 0.0025)]), "calibrated", calibration=Calibration(zero, 0.05))
    assert d.verdict == "backdoored" and d.predicted_target == 2 and d.max_score > d.threshold
    assert d.flagged == [False, False, True, False]
    # 10 null models: 1 / 11 > 0.05, nothing can be flagged, the threshold is infinite
    small = NullStudy(backbone="bb", scan={}, scores=tuple(i / 10 for i in range(10)),
                      wide_scores=tuple(float(i) for i in range(10)))
    none = ci.decide(with_wide(30.0, [(1, 1.0, 900.0)]), "calibrated", calibration=Calibration(small, 0.05))
    assert none.verdict == "clean" and none.threshold == float("inf") and none.p_value == pytest.approx(1 / 11)
    # meta tokens that respond only to the wide probe are not inert under the joint test
    quiet = Evidence(names=list("abcd"), asr=[0.1, 0.9, 0.1, 0.1], loss=[3, 0.1, 3, 3], meta_gain=[0, 0, 0, 0],
                     wide_probes=[(3, 1.0, 120.0)])
    loud = ci.decide(quiet, "calibrated", calibration=Calibration(two_column_null(), 0.05))
    assert loud.fallback is None and loud.predicted_target == 3
    assert ci.decide(quiet, "meta-gain").fallback == "paper"


def test_the_wide_column_calibrates_only_scans_with_its_wide_probe():
    null = replace(two_column_null(), scan={**scan_settings(asdict(ScanConfig())), "wide_probe_eps": 32 / 255})
    config = {**asdict(ScanConfig()), "backbone": "bb"}
    assert null.wide_applies(config)
    assert not null.wide_applies({**config, "wide_probe_eps": None})
    assert not null.wide_applies({**config, "wide_probe_eps": 16 / 255})
    assert null.mismatch({**config, "wide_probe_eps": None}) is None  # the meta-gain test still holds


def test_a_default_scan_runs_the_wide_probe_and_a_report_keeps_it(tiny_model, tmp_path, make_responsive):
    ood = torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    tiny_model = make_responsive(tiny_model, ood)
    report = scan(tiny_model, ood, FAST, tmp_path / "s", progress=False, html=False)
    hidden = tiny_model.prompt_learner.meta_net.linear1.out_features
    probe = report.gate_probe
    assert probe.wide_eps == FAST.wide_probe_eps == 32 / 255 and len(probe.units) == 4 * hidden
    assert [u.wide for u in probe.units] == [False] * (2 * hidden) + [True] * (2 * hidden)
    assert len(report.probe_triggers) == 4 * hidden
    # the wide units are made at their own bound (Adam's first step is lr = eps / 4: twice the other units')
    narrow, wide = report.probe_triggers[: 2 * hidden].abs().max(), report.probe_triggers[2 * hidden :].abs().max()
    assert narrow <= FAST.probe_eps + 1e-6 and wide <= FAST.wide_probe_eps + 1e-6
    assert float(wide) == pytest.approx(2 * float(narrow), rel=1e-4)
    ev = report.evidence()
    assert len(ev.probes) == len(ev.wide_probes) == 2 * hidden
    again = ScanReport.load(tmp_path / "s")
    assert again.evidence() == ev and again.gate_probe == probe
    # against a two-column null for this scan, the joint test decides, and the report and its page say so
    null = NullStudy(backbone=report.config["backbone"], scan=scan_settings(report.config), scores=(0.0,) * 60,
                     wide_scores=(0.0,) * 60)
    path = null.save(tmp_path / "null.json")
    assert NullStudy.load(path) == null
    cal = calibration_for({**report.config, "null_file": str(path)})
    assert cal.null.wide_scores and report.redecide("calibrated", calibration=cal).tests is not None
    # a wide unit toward a class that scores far above its cut: the named target, its row's trigger and the
    # trigger repair uses
    units = list(probe.units)
    j = len(units) - 1  # the last wide unit (shut)
    units[j] = replace(units[j], class_name=report.names[0], asr=1.0, meta_gain=50.0)
    big = replace(report, gate_probe=replace(probe, units=units)).redecide("calibrated", calibration=cal)
    assert big.backdoored and big.predicted_target == report.names[0] and big.tests["wide-probe"]["statistic"] == 50.0
    words = calibration_words(big)  # the page says it in words: one joint test, its units, the verdict
    assert "one joint test" in words and "this model is flagged" in words and "0.001" in words
    source = f"gate probe at 32/255, unit {units[j].unit} shut"
    assert big.row(report.names[0]).trigger == {"source": source, "asr": 1.0, "meta_gain": 50.0}
    assert big.repair_trigger().source == source and torch.equal(big.repair_trigger().delta, report.probe_triggers[j])
    off = scan(tiny_model, ood, replace(FAST, wide_probe_eps=None, null_file=str(path)), progress=False)
    assert off.gate_probe.wide_eps is None and off.tests is None and off.calibrated  # the meta-gain test alone



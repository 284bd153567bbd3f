"""Scan orchestration, scores and decisions, baselines, reports, resume, and user mistakes."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

import ci_toolkit as ci
from ci_toolkit.detect import Evidence, InversionConfig, ScanConfig, ScanReport, measure_gate_probe, scan, split_pool
from ci_toolkit.detect.rules import (
    INERT_GAIN,
    META_GAIN_THRESHOLD,
    PAPER_K,
    bonferroni_bound,
    grubbs_bound,
    robust_zscore,
    youden_threshold,
    zscore,
)
from ci_toolkit.detect.scanner import _Partial
from ci_toolkit.errors import CIError, DataError

# the gate probe at its first bound only: the wide probe (the calibrated rule's second statistic) is tested with it
FAST = ScanConfig(inversion=InversionConfig(batch_size=8, group=2), pool_size=32, heldout_size=8, wide_probe_eps=None)


def decide(asr, loss, rule="meta-gain", threshold=None, meta_gain=None, probes=None):
    """ci.decide on per-candidate numbers (the evidence a scan would hold)."""
    asr, loss = [float(v) for v in asr], [float(v) for v in loss]
    ev = Evidence(names=[f"c{i}" for i in range(len(asr))], asr=asr, loss=loss, meta_gain=meta_gain or [],
                  probes=probes or [])
    return ci.decide(ev, rule, threshold)


def strip(report: ScanReport) -> dict:
    return {k: v for k, v in report.to_dict().items() if k != "runtime_s"}


@pytest.fixture
def ood():
    return torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(5))


# ---- scores and decisions: known answers -------------------------------------------------------------
def test_outlier_class_is_found_and_uniform_classes_are_clean():
    asr = [0.05] * 24 + [0.9]
    loss = [3.0 + 0.1 * (i % 5) for i in range(24)] + [0.5]
    d = decide(asr, loss, rule="grubbs")
    assert d.verdict == "backdoored" and d.predicted_target == 24 and d.flagged[24] and sum(d.flagged) == 1
    g = torch.Generator().manual_seed(0)
    noise = decide(0.05 + 0.01 * torch.rand(25, generator=g), 3 + 0.1 * torch.randn(25, generator=g), rule="grubbs")
    assert noise.verdict == "clean" and noise.predicted_target is None


def test_paper_score_is_the_methods_formula():
    asr, loss = torch.tensor([0.1, 0.2, 0.9, 0.1]), torch.tensor([2.0, 1.5, 0.2, 2.5])
    a = zscore(asr) - zscore(loss)
    d = decide(asr, loss, rule="paper")
    assert torch.allclose(torch.tensor(d.scores, dtype=torch.float64), (a - a.mean()) / a.std(unbiased=False))
    assert d.threshold == 2.0


def test_robust_statistics():
    v = torch.tensor([1.0, 1.1, 0.9, 1.0, 10.0])
    r = robust_zscore(v)
    assert r[-1] > 10 and abs(r[0]) < 1e-9
    assert abs(bonferroni_bound(50) - 3.29) < 0.01 and abs(bonferroni_bound(25) - 3.09) < 0.01
    assert torch.equal(zscore(torch.ones(4)), torch.zeros(4, dtype=torch.float64))


def test_grubbs_bound_matches_the_tables():
    # one-sided Grubbs critical values G at alpha = 0.05 (published tables: 2.176, 2.663, 2.956), on the
    # scale of s_t, which divides by the population std: s = G * sqrt(K / (K - 1))
    for k, g in ((10, 2.176), (25, 2.663), (50, 2.956)):
        assert abs(grubbs_bound(k) * math.sqrt((k - 1) / k) - g) < 1e-3
    assert grubbs_bound(50) < math.sqrt(49)  # below the cap that s_t cannot exceed, so it can fire


def test_meta_gain_rule_scores_asr_times_meta_gain():
    asr = [0.6, 0.9, 0.3, 0.2]  # class 0: the natural sink (high ASR, no meta gain); class 1: through the prompt learner
    loss = [0.5, 0.4, 2.0, 2.5]
    d = decide(asr, loss, meta_gain=[0.2, 4.0, None, None])
    assert d.rule == "meta-gain" and d.threshold == META_GAIN_THRESHOLD
    assert d.verdict == "backdoored" and d.predicted_target == 1 and d.flagged == [False, True, False, False]
    # the statistic: ASR x meta gain, per class the best of its triggers
    assert d.max_score == 0.9 * 4.0 and d.gap == 0.9 * 4.0 - 0.6 * 0.2 and d.scores == [0.6 * 0.2, 0.9 * 4.0, 0.0, 0.0]
    sink = decide(asr, loss, meta_gain=[0.4, 0.1, None, None])  # the top trigger works through the image feature
    assert sink.verdict == "clean" and sink.predicted_target is None and sink.top == 0 and not any(sink.flagged)
    # ranked by ASR x gain: a larger gain with a useless trigger does not win
    assert decide([0.9, 0.05, 0.1], [1, 2, 2], meta_gain=[2.0, 5.0, 0.0]).predicted_target == 0
    with pytest.raises(CIError, match="needs per-candidate meta gains"):
        decide(asr, loss)
    with pytest.raises(CIError, match="non-finite meta gain"):
        decide(asr, loss, meta_gain=[float("nan"), 1.0, None, None])


def test_meta_gain_rule_takes_the_gate_probes_triggers():
    asr, loss, gains = [0.6, 0.1, 0.3, 0.2], [0.5, 3.0, 2.0, 2.5], [0.2, None, 0.1, None]
    assert decide(asr, loss, meta_gain=gains).verdict == "clean"
    # a gate the inversion did not open: the probe's perturbation sends 85% of the images to class 3 through the
    # prompt learner; class 3's own inverted trigger had no gain measured
    d = decide(asr, loss, meta_gain=gains, probes=[(1, 0.5, 0.3), (3, 0.85, 2.0)])
    assert d.verdict == "backdoored" and d.predicted_target == 3 and d.max_score == 0.85 * 2.0
    assert d.scores[1] == 0.5 * 0.3 and d.flagged == [False, False, False, True]
    # a probe trigger below its class's inverted one does not lower the class's score
    assert decide(asr, loss, meta_gain=gains, probes=[(0, 0.1, 0.1)]).scores[0] == 0.6 * 0.2
    with pytest.raises(CIError, match="non-finite"):
        decide(asr, loss, meta_gain=gains, probes=[(3, float("nan"), 2.0)])
    with pytest.raises(CIError, match="out of the candidate range"):
        decide(asr, loss, meta_gain=gains, probes=[(4, 0.9, 2.0)])


def test_meta_gain_rule_falls_back_to_the_papers_rule_when_the_meta_tokens_are_inert():
    # class 4 stands out on s_t (high ASR, low loss) but no trigger moves a margin through the meta tokens
    asr, loss = [0.05, 0.1, 0.08, 0.06, 0.9, 0.07], [3.0, 2.9, 3.1, 3.0, 0.4, 3.05]
    inert = [INERT_GAIN / 2, -INERT_GAIN, None, 0.0, 0.0, None]
    d, p = decide(asr, loss, meta_gain=inert, probes=[(1, 0.6, -INERT_GAIN / 3)]), decide(asr, loss, rule="paper")
    assert d.fallback == "paper" and d.rule == "meta-gain" and d.threshold == PAPER_K
    assert (d.verdict, d.predicted_target, d.scores, d.max_score) == ("backdoored", 4, p.scores, p.max_score)
    # one trigger above INERT_GAIN anywhere (here a probe's): the meta-gain rule decides, and finds nothing
    live = decide(asr, loss, meta_gain=inert, probes=[(1, 0.6, 2 * INERT_GAIN)])
    assert live.fallback is None and live.verdict == "clean" and live.max_score == 0.6 * 2 * INERT_GAIN


def test_grubbs_rule_on_the_papers_score():
    asr, loss = [0.05] * 24 + [0.9], [3.0 + 0.1 * (i % 5) for i in range(24)] + [0.5]
    d, p = decide(asr, loss, rule="grubbs"), decide(asr, loss, rule="paper")
    assert d.rule == "grubbs" and d.scores == p.scores and d.threshold == grubbs_bound(25)
    # K normal benign scores: the paper's k = 2 flags the largest far more often than alpha = 0.05
    g = torch.Generator().manual_seed(0)
    runs = [(torch.rand(25, generator=g), torch.randn(25, generator=g)) for _ in range(200)]
    fp = {rule: sum(decide(a, l, rule=rule).verdict == "backdoored" for a, l in runs) / len(runs) for rule in ("grubbs", "paper")}
    assert fp["grubbs"] <= 0.1 < fp["paper"]


def test_rescore_equals_a_fresh_decision(tiny_model, ood, tmp_path, monkeypatch):
    import ci_toolkit.detect.scanner as scan_module

    report = scan(tiny_model, ood, FAST, tmp_path / "s", progress=False, html=False)
    real_invert = scan_module.invert

    def no_new_groups(*args, skip=frozenset(), **kw):  # same folder, another rule: every group is reused
        assert len(skip) == len(tiny_model.classnames)
        return real_invert(*args, skip=skip, **kw)

    monkeypatch.setattr(scan_module, "invert", no_new_groups)
    again = scan(tiny_model, ood, replace(FAST, rule="paper"), tmp_path / "s", progress=False, html=False)
    assert again.rule == "paper" and again.config["rule"] == "paper"
    assert strip(report.redecide("paper")) == strip(again)
    assert ci.decide(report, "paper").max_score == again.max_score
    with pytest.raises(CIError, match="does not decide"):
        replace(report, method="neural-cleanse").redecide("paper")
    with pytest.raises(CIError, match="does not decide"):
        report.redecide("mad")


def test_youden_threshold_separates_labelled_models():
    t = youden_threshold([1.0, 1.5, 2.0, 5.0, 6.0], [0, 0, 0, 1, 1])
    assert 2.0 < t < 5.0
    with pytest.raises(CIError, match="both clean and backdoored"):
        youden_threshold([1.0, 2.0], [0, 0])


def test_meta_gain_is_zero_without_a_meta_net_and_matches_collapse_stats(tiny_model, ood, make_responsive):
    from ci_toolkit.analysis import collapse_stats, meta_gains

    make_responsive(tiny_model, ood)
    deltas = 0.05 * torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    gains = meta_gains(tiny_model, ood[:8], deltas, [0, 2])
    assert gains.abs().max() > 1e-3  # the fixture's meta tokens respond (else the comparison below is 0 == 0)
    for d, t, g in zip(deltas, [0, 2], gains):
        stats = collapse_stats(tiny_model, ood[:8], lambda x, d=d: (x + d).clamp(0, 1), t)
        assert abs(stats["meta_gain"] * float(tiny_model.logit_scale) - float(g)) < 1e-4
    with torch.no_grad():  # meta tokens always 0: the triggered image's meta tokens add nothing
        tiny_model.prompt_learner.meta_net.linear2.weight.zero_()
        tiny_model.prompt_learner.meta_net.linear2.bias.zero_()
    assert torch.equal(meta_gains(tiny_model, ood[:8], deltas, [0, 2]), torch.zeros(2))


def test_decide_rejects_nan():
    with pytest.raises(CIError, match="non-finite"):
        decide([0.1, float("nan"), 0.2], [1.0, 1.0, 1.0])


# ---- the scan --------------------------------------------------------------------------------------
def test_scan_writes_report_and_escapes_names(tiny_backbone, ood, tmp_path):
    model = ci.CoCoOp(tiny_backbone, ["red circle", "<script>alert(1)</script>", "blue square", "cat"], seed=1)
    report = scan(model, ood, FAST, tmp_path / "scan", progress=False)
    on_disk = json.loads((tmp_path / "scan" / "report.json").read_text())
    for key in ("verdict", "max_score", "threshold", "predicted_target", "gap", "classes", "method", "config", "runtime_s"):
        assert key in on_disk
    assert on_disk["verdict"] in ("clean", "backdoored") and on_disk == json.loads(json.dumps(report.to_dict()))
    assert {"name", "asr", "loss", "score", "flagged"} <= set(on_disk["classes"][0])
    html = (tmp_path / "scan" / "report.html").read_text()
    assert "<script>alert" not in html and "&lt;script&gt;" in html and "Gate probe" in html
    loaded = ScanReport.load(tmp_path / "scan")
    assert strip(loaded) == strip(report) and torch.equal(loaded.triggers, report.triggers)
    deltas = loaded.triggers
    assert deltas.shape == (4, 3, 32, 32) and float(deltas.abs().max()) <= InversionConfig().eps + 1e-6


def test_interrupted_scan_resumes_to_the_same_report(tiny_model, ood, tmp_path, monkeypatch):
    full = scan(tiny_model, ood, FAST, tmp_path / "a", progress=False, html=False)
    real_save = _Partial.save
    calls = []

    def save_then_die(self, results):
        real_save(self, results)
        calls.append(1)
        raise KeyboardInterrupt  # killed after the first group

    monkeypatch.setattr(_Partial, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        scan(tiny_model, ood, FAST, tmp_path / "b", progress=False, html=False)
    monkeypatch.setattr(_Partial, "save", real_save)
    assert len(list((tmp_path / "b" / "partial").glob("group_*.json"))) == 1
    resumed = scan(tiny_model, ood, FAST, tmp_path / "b", progress=False, html=False)
    assert strip(resumed) == strip(full)
    with pytest.raises(CIError, match="another configuration"):
        scan(tiny_model, ood, ScanConfig(inversion=InversionConfig(batch_size=8, group=2, eps=4 / 255), pool_size=32,
                                         heldout_size=8), tmp_path / "b", progress=False)


def test_user_mistakes_get_clear_errors(tiny_model, ood):
    with pytest.raises(CIError, match="missing from the candidate list"):
        scan(tiny_model, ood, FAST, candidates=["red circle", "blue square", "dog"], progress=False)
    with pytest.raises(DataError, match="need at least 32"):
        scan(tiny_model, ood[:20], ScanConfig(), progress=False)
    with pytest.raises(DataError, match="empty"):
        scan(tiny_model, ood[:0], FAST, progress=False)
    with pytest.raises(DataError, match=r"\[N, 3, 32, 32\]"):
        scan(tiny_model, torch.rand(40, 3, 16, 16), FAST, progress=False)
    with pytest.raises(CIError, match="unknown scan method"):
        ScanConfig(method="strip")
    with pytest.raises(CIError, match="unknown decision rule"):
        ScanConfig(rule="youden")
    nan_model = tiny_model
    with torch.no_grad():
        nan_model.prompt_learner.ctx[0, 0] = float("nan")
    with pytest.raises(CIError, match="non-finite"):
        scan(nan_model, ood, FAST, progress=False)


@pytest.mark.parametrize("method", ["neural-cleanse", "pixel-backdoor"])
def test_baselines_produce_reports(tiny_model, ood, tmp_path, method):
    from ci_toolkit.detect.baselines import BASELINES, CostConfig

    small = CostConfig(**{**BASELINES[method].defaults, "epochs": 1, "batch_size": 8, "group": 2})
    report = scan(tiny_model, ood, ScanConfig(method=method, baseline=small, pool_size=32, heldout_size=8), tmp_path,
                  progress=False)
    assert report.method == method and report.rule == "mad"
    assert len(report.classes) == 4 and all(0 <= c.asr <= 1 for c in report.classes)
    assert (tmp_path / "report.html").exists()
    assert strip(ScanReport.load(tmp_path).redecide("mad")) == {**strip(report), "config": {**report.config,
                                                                                        "rule": "mad", "threshold": None}}


def test_scan_reports_the_gate_probe_and_splits_it_over_processes(tiny_model, ood, tmp_path):
    from safetensors.torch import load_file

    from ci_toolkit.analysis import gate_probe

    report = scan(tiny_model, ood, FAST, tmp_path / "s", progress=False, html=False)
    probe = report.gate_probe
    hidden = tiny_model.prompt_learner.meta_net.linear1.out_features
    # each unit opened, then each unit shut; the perturbations stored in the rows' order
    assert probe.eps == FAST.probe_eps and probe.shut is True
    assert [(u.shut, u.unit) for u in probe.units] == [(s, u) for s in (False, True) for u in range(hidden)]
    assert all(u.class_name in tiny_model.classnames and 0 <= u.asr <= 1 for u in probe.units)
    deltas = load_file(str(tmp_path / "s" / "gate_probe.safetensors"))["deltas"]
    assert torch.equal(deltas, report.probe_triggers)
    assert deltas.shape == (2 * hidden, 3, 32, 32) and deltas.abs().max() <= FAST.probe_eps + 1e-6
    pool, heldout = split_pool(ood, FAST, FAST.inversion.batch_size)
    _, shut = gate_probe(tiny_model, pool, heldout, FAST.probe_eps, tiny_model.prompts_for(), FAST.meta_images,
                         FAST.seed, shut=True)
    assert torch.allclose(deltas[hidden:], shut)
    two, two_deltas = measure_gate_probe(tiny_model, pool, heldout, list(tiny_model.classnames), FAST, workers=2)
    assert two == probe and torch.equal(two_deltas, deltas)
    off = scan(tiny_model, ood, replace(FAST, probe_eps=None), tmp_path / "off", progress=False, html=False)
    assert off.gate_probe is None and "gate_probe" not in off.to_dict()
    assert not (tmp_path / "off" / "gate_probe.safetensors").exists()
    opening, _ = measure_gate_probe(tiny_model, pool, heldout, list(tiny_model.classnames), replace(FAST, probe_shut=False))
    assert opening.shut is False and opening.units == probe.units[:hidden]


def test_a_model_whose_meta_tokens_do_not_respond_gets_a_warning(tiny_model, ood, tmp_path, make_responsive):
    live = scan(make_responsive(tiny_model, ood), ood, replace(FAST, rule="meta-gain"), tmp_path / "live", progress=False, html=False)
    assert live.warnings == []
    with torch.no_grad():  # known answer: meta tokens always 0, every meta gain exactly 0: the rule is blind
        tiny_model.prompt_learner.meta_net.linear2.weight.zero_()
        tiny_model.prompt_learner.meta_net.linear2.bias.zero_()
    report = scan(tiny_model, ood, FAST, tmp_path / "inert", progress=False)
    assert len(report.warnings) == 1 and report.fallback == "paper" and live.fallback is None
    assert "do not respond" in report.warnings[0] and f"more than {INERT_GAIN} logits" in report.warnings[0]
    # the meta-gain rule is blind here, so the paper's rule (k = 2) decides, and the warning says so
    paper_top = max(report.classes, key=lambda c: c.paper_score).name
    assert report.verdict == report.side_rules["paper"]["verdict"] and report.threshold == PAPER_K
    assert report.max_score == report.side_rules["paper"]["max_score"] and report.top_class == paper_top
    assert f"paper's rule (s_t > 2): max {report.max_score:.2f} on {paper_top!r}" in report.warnings[0]
    html = (tmp_path / "inert" / "report.html").read_text()
    assert "Warning:" in html and "decided by the paper rule" in html
    assert report.redecide("meta-gain").warnings == report.warnings
    assert report.redecide("paper").warnings == []  # the paper's rule does not read meta gains


def test_repair_trigger_is_the_trigger_behind_the_top_score(tiny_model, ood, tmp_path):
    report = ScanReport.load(scan(tiny_model, ood, FAST, tmp_path / "s", progress=False, html=False).save(tmp_path / "s"))
    top = report.predicted_target or report.top_class

    def with_units(**change):
        units = [replace(u, class_name=top, **{k: v(i) if callable(v) else v for k, v in change.items()})
                 for i, u in enumerate(report.gate_probe.units)]
        return replace(report, gate_probe=replace(report.gate_probe, units=units))

    # every probe trigger scored low: the inverted one of the top class
    name, delta, source = with_units(asr=0.0).repair_trigger()
    assert name == top and source == "inversion" and torch.equal(delta, report.triggers[report.names.index(top)])
    # probe units toward the top class that scored higher: the best one's perturbation
    name, delta, source = with_units(asr=1.0, meta_gain=lambda i: 100.0 + i).repair_trigger()
    last = len(report.probe_triggers) - 1  # the last row: the last unit, shut
    assert source == f"gate probe, unit {report.gate_probe.units[last].unit} shut"
    # the report's row for that class names the same trigger, with that trigger's own ASR and gain
    row = with_units(asr=1.0, meta_gain=lambda i: 100.0 + i).redecide(report.rule).row(top)
    assert row.trigger == {"source": source, "asr": 1.0, "meta_gain": 100.0 + last}
    assert torch.equal(delta, report.probe_triggers[last])
    (tmp_path / "s" / "gate_probe.safetensors").unlink()
    with pytest.raises(DataError, match="probe perturbations"):
        ScanReport.load(tmp_path / "s").repair_trigger()
    with pytest.raises(DataError, match="holds no triggers"):
        replace(report, triggers=None).repair_trigger()


def test_rule_registry_drives_the_config_and_the_cli():
    from ci_toolkit.cli import build_parser
    from ci_toolkit.detect.rules import SCAN_RULES, SOLO_RULES

    assert set(SCAN_RULES) == {"calibrated", "meta-gain", "paper", "grubbs", "robust", "anchored"}
    assert set(ci.RULES) == set(SCAN_RULES) | {"mad"} and set(SOLO_RULES) == set(SCAN_RULES) - {"anchored"}
    commands = build_parser()._subparsers._group_actions[0].choices
    for command, rules in (("scan", SOLO_RULES), ("scan-encoder", SCAN_RULES)):  # only scan-encoder has an anchor
        rule_action = next(a for a in commands[command]._actions if a.dest == "rule")
        assert tuple(rule_action.choices) == rules
    with pytest.raises(CIError, match="unknown decision rule"):
        ci.decide(Evidence(["a", "b", "c"], [0.1, 0.2, 0.3], [1.0, 1.0, 1.0]), "youden")

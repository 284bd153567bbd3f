"""Scan orchestration, scores and decisions, baselines, reports, resume, and user mistakes."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

import ci_toolkit as ci
from ci_toolkit.errors import CIError, DataError
from ci_toolkit.invert import InversionConfig
from ci_toolkit.scan import ScanConfig, _Partial, load_report, rescore, scan
from ci_toolkit.score import META_GAIN_SCORE, bonferroni_bound, decide, grubbs_bound, robust_zscore, youden_threshold, zscore

FAST = ScanConfig(inversion=InversionConfig(batch_size=8, group=2), pool_size=32, heldout_size=8)


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


def test_default_rule_is_meta_gain():
    asr = [0.6, 0.9, 0.3, 0.2]  # class 0: the natural sink (high ASR, no meta gain); class 1: through the prompt learner
    loss = [0.5, 0.4, 2.0, 2.5]
    d = decide(asr, loss, meta_gain=[0.2, 4.0, None, None])
    assert d.rule == "meta-gain" and d.threshold == META_GAIN_SCORE
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
    from ci_toolkit.score import INERT_GAIN, PAPER_K

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
    import ci_toolkit.scan as scan_module

    report = scan(tiny_model, ood, tmp_path / "s", cfg=FAST, progress=False, html=False)
    real_invert = scan_module.invert

    def no_new_groups(*args, skip=frozenset(), **kw):  # same folder, another rule: every group is reused
        assert len(skip) == len(tiny_model.classnames)
        return real_invert(*args, skip=skip, **kw)

    monkeypatch.setattr(scan_module, "invert", no_new_groups)
    again = scan(tiny_model, ood, tmp_path / "s", cfg=replace(FAST, rule="paper"), progress=False, html=False)
    assert again["rule"] == "paper" and again["config"]["rule"] == "paper"
    strip = lambda r: {k: v for k, v in r.items() if k != "runtime_s"}  # noqa: E731
    assert strip(rescore(report, "paper")) == strip(again)
    with pytest.raises(CIError, match="only CLIP-Inspector"):
        rescore({**report, "method": "neural-cleanse"}, "paper")


def test_youden_threshold_separates_labelled_models():
    t = youden_threshold([1.0, 1.5, 2.0, 5.0, 6.0], [0, 0, 0, 1, 1])
    assert 2.0 < t < 5.0
    with pytest.raises(CIError, match="both clean and backdoored"):
        youden_threshold([1.0, 2.0], [0, 0])


def _responsive(model, images):
    """The tiny fixture's 2 hidden units sit far below 0 on every image (its features barely vary), so its
    meta tokens are a constant and every meta gain is exactly 0. Steep units centred on these images'
    mean feature open on about half of them: pi(x) then follows the image."""
    with torch.no_grad():
        lin1 = model.prompt_learner.meta_net.linear1
        lin1.weight.mul_(100)
        lin1.bias.copy_(-(lin1.weight @ model.encode_image(images).mean(0)))
    return model


def test_meta_gain_is_zero_without_a_meta_net_and_matches_collapse_stats(tiny_model, ood):
    from ci_toolkit.collapse import collapse_stats, meta_gains

    _responsive(tiny_model, ood)
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
    report = scan(model, ood, tmp_path / "scan", cfg=FAST, progress=False)
    on_disk = json.loads((tmp_path / "scan" / "report.json").read_text())
    for key in ("verdict", "max_score", "threshold", "predicted_target", "gap", "classes", "method", "config", "runtime_s"):
        assert key in on_disk
    assert on_disk["verdict"] in ("clean", "backdoored") and on_disk == json.loads(json.dumps(report))
    assert {"name", "asr", "loss", "score", "flagged"} <= set(on_disk["classes"][0])
    html = (tmp_path / "scan" / "report.html").read_text()
    assert "<script>alert" not in html and "&lt;script&gt;" in html and "Gate probe" in html
    rep, deltas = load_report(tmp_path / "scan")
    assert deltas.shape == (4, 3, 32, 32) and float(deltas.abs().max()) <= InversionConfig().eps + 1e-6


def test_interrupted_scan_resumes_to_the_same_report(tiny_model, ood, tmp_path, monkeypatch):
    full = scan(tiny_model, ood, tmp_path / "a", cfg=FAST, progress=False, html=False)
    real_save = _Partial.save
    calls = []

    def save_then_die(self, results):
        real_save(self, results)
        calls.append(1)
        raise KeyboardInterrupt  # killed after the first group

    monkeypatch.setattr(_Partial, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        scan(tiny_model, ood, tmp_path / "b", cfg=FAST, progress=False, html=False)
    monkeypatch.setattr(_Partial, "save", real_save)
    assert len(list((tmp_path / "b" / "partial").glob("group_*.json"))) == 1
    resumed = scan(tiny_model, ood, tmp_path / "b", cfg=FAST, progress=False, html=False)
    strip = lambda r: {k: v for k, v in r.items() if k != "runtime_s"}  # noqa: E731
    assert strip(resumed) == strip(full)
    with pytest.raises(CIError, match="another configuration"):
        scan(tiny_model, ood, tmp_path / "b", cfg=ScanConfig(inversion=InversionConfig(batch_size=8, group=2, eps=4 / 255),
                                                              pool_size=32, heldout_size=8), progress=False)


def test_user_mistakes_get_clear_errors(tiny_model, ood):
    with pytest.raises(CIError, match="missing from the candidate list"):
        scan(tiny_model, ood, candidates=["red circle", "blue square", "dog"], cfg=FAST, progress=False)
    with pytest.raises(DataError, match="need at least 32"):
        scan(tiny_model, ood[:20], cfg=ScanConfig(), progress=False)
    with pytest.raises(DataError, match="empty"):
        scan(tiny_model, ood[:0], cfg=FAST, progress=False)
    with pytest.raises(DataError, match=r"\[N, 3, 32, 32\]"):
        scan(tiny_model, torch.rand(40, 3, 16, 16), cfg=FAST, progress=False)
    with pytest.raises(CIError, match="unknown scan method"):
        ScanConfig(method="strip")
    nan_model = tiny_model
    with torch.no_grad():
        nan_model.prompt_learner.ctx[0, 0] = float("nan")
    with pytest.raises(CIError, match="non-finite"):
        scan(nan_model, ood, cfg=FAST, progress=False)


@pytest.mark.parametrize("method", ["neural-cleanse", "pixel-backdoor"])
def test_baselines_produce_reports(tiny_model, ood, tmp_path, method):
    from ci_toolkit.baselines import BASELINES, CostConfig

    small = CostConfig(**{**BASELINES[method].defaults, "epochs": 1, "batch_size": 8, "group": 2})
    report = scan(tiny_model, ood, tmp_path, cfg=ScanConfig(method=method, baseline=small, pool_size=32, heldout_size=8),
                  progress=False)
    assert report["method"] == method and report["rule"] == "mad"
    assert len(report["classes"]) == 4 and all(0 <= c["asr"] <= 1 for c in report["classes"])
    assert (tmp_path / "report.html").exists()


def test_scan_reports_the_gate_probe_and_splits_it_over_processes(tiny_model, ood, tmp_path):
    from ci_toolkit.scan import measure_gate_probe, split_pool

    report = scan(tiny_model, ood, tmp_path / "s", cfg=FAST, progress=False, html=False)
    probe = report["gate_probe"]
    hidden = tiny_model.prompt_learner.meta_net.linear1.out_features
    # each unit opened, then each unit shut; the perturbations stored in the rows' order
    assert probe["eps"] == FAST.probe_eps and probe["shut"] is True
    assert [(u["shut"], u["unit"]) for u in probe["units"]] == [(s, u) for s in (False, True) for u in range(hidden)]
    assert all(u["class"] in tiny_model.classnames and 0 <= u["asr"] <= 1 for u in probe["units"])
    from safetensors.torch import load_file

    from ci_toolkit.collapse import gate_probe

    deltas = load_file(str(tmp_path / "s" / "gate_probe.safetensors"))["deltas"]
    assert deltas.shape == (2 * hidden, 3, 32, 32) and deltas.abs().max() <= FAST.probe_eps + 1e-6
    pool, heldout = split_pool(ood, FAST, FAST.inversion.batch_size)
    _, shut = gate_probe(tiny_model, pool, heldout, FAST.probe_eps, tiny_model.prompts_for(), FAST.meta_images,
                         FAST.seed, shut=True)
    assert torch.allclose(deltas[hidden:], shut)
    two = measure_gate_probe(tiny_model, pool, heldout, list(tiny_model.classnames), FAST, tmp_path / "w", workers=2)
    assert two == probe and torch.equal(load_file(str(tmp_path / "w" / "gate_probe.safetensors"))["deltas"], deltas)
    off = scan(tiny_model, ood, tmp_path / "off", cfg=replace(FAST, probe_eps=None), progress=False, html=False)
    assert "gate_probe" not in off and not (tmp_path / "off" / "gate_probe.safetensors").exists()
    opening = measure_gate_probe(tiny_model, pool, heldout, list(tiny_model.classnames), replace(FAST, probe_shut=False))
    assert opening["shut"] is False and opening["units"] == probe["units"][:hidden]


def test_a_model_whose_meta_tokens_do_not_respond_gets_a_warning(tiny_model, ood, tmp_path):
    from ci_toolkit.scan import INERT_GAIN

    live = scan(_responsive(tiny_model, ood), ood, tmp_path / "live", cfg=FAST, progress=False, html=False)
    assert live["warnings"] == []
    with torch.no_grad():  # known answer: meta tokens always 0, every meta gain exactly 0: the rule is blind
        tiny_model.prompt_learner.meta_net.linear2.weight.zero_()
        tiny_model.prompt_learner.meta_net.linear2.bias.zero_()
    report = scan(tiny_model, ood, tmp_path / "inert", cfg=FAST, progress=False)
    assert len(report["warnings"]) == 1 and report["fallback"] == "paper" and live["fallback"] is None
    assert "do not respond" in report["warnings"][0] and f"more than {INERT_GAIN} logits" in report["warnings"][0]
    # the meta-gain rule is blind here, so the paper's rule (k = 2) decides, and the warning says so
    paper_top = max(report["classes"], key=lambda c: c["paper_score"])["name"]
    assert report["verdict"] == report["paper_rule"]["verdict"] and report["threshold"] == 2.0
    assert report["max_score"] == report["paper_rule"]["max_score"] and report["top_class"] == paper_top
    assert f"paper's rule (s_t > 2): max {report['max_score']:.2f} on {paper_top!r}" in report["warnings"][0]
    html = (tmp_path / "inert" / "report.html").read_text()
    assert "Warning:" in html and "decided by the paper rule" in html
    assert rescore(report, "meta-gain")["warnings"] == report["warnings"]
    assert rescore(report, "paper")["warnings"] == []  # the paper's rule does not read meta gains


def test_target_trigger_is_the_trigger_behind_the_top_score(tiny_model, ood, tmp_path):
    from safetensors.torch import load_file

    from ci_toolkit.scan import target_trigger

    report = scan(tiny_model, ood, tmp_path / "s", cfg=FAST, progress=False, html=False)
    _, deltas = load_report(tmp_path / "s")
    probe_deltas = load_file(str(tmp_path / "s" / "gate_probe.safetensors"))["deltas"]
    names = [c["name"] for c in report["classes"]]
    top = report["predicted_target"] or report["top_class"]
    # every trigger scored low: the inverted one of the top class
    low = {**report, "gate_probe": {**report["gate_probe"], "units": [
        {**u, "class": top, "asr": 0.0} for u in report["gate_probe"]["units"]]}}
    name, delta, source = target_trigger(low, tmp_path / "s")
    assert name == top and source == "inversion" and torch.equal(delta, deltas[names.index(top)])
    # a probe unit toward the top class that scored higher: its perturbation
    high = {**report, "gate_probe": {**report["gate_probe"], "units": [
        {**u, "class": top, "asr": 1.0, "meta_gain": 100.0 + i} for i, u in enumerate(report["gate_probe"]["units"])]}}
    name, delta, source = target_trigger(high, tmp_path / "s" / "report.json")
    last = len(probe_deltas) - 1  # the last row: the last unit, shut
    assert source == f"gate probe, unit {report['gate_probe']['units'][last]['unit']} shut"
    assert torch.equal(delta, probe_deltas[last])
    (tmp_path / "s" / "gate_probe.safetensors").unlink()
    with pytest.raises(CIError, match="gate_probe.safetensors"):
        target_trigger(high, tmp_path / "s")

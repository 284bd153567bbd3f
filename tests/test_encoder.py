"""Image-encoder backdoors: the poisoning attacks, the zero-shot head CLIP-Inspector scans, and InverTune's
pieces with known answers (INVERTUNE.md section 5)."""

from dataclasses import replace

import pytest
import torch

import ci_toolkit as ci
from ci_toolkit.detect import encoder_invertune as it
from ci_toolkit.detect.rules import paper_scores


@pytest.fixture(scope="module")
def backbone():
    return ci.create_backbone("miniclip")


@pytest.fixture(scope="module")
def pairs():
    w = ci.world.World(ci.world.WorldConfig())
    x, y = w.sample(64, seed=5, domain="pretrain", classes=list(range(8)))
    return x, y, w.classnames[:8]


# ---- the attacks -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ci.list_attacks("encoder"))
def test_encoder_attack_poisons_a_seeded_share_of_non_target_pairs(name, pairs):
    x, y, _ = pairs
    attack = ci.create_attack(name, target=2, seed=1, poison_rate=0.25)
    if name == "encoder-badclip":
        attack.patch = torch.rand(3, 6, 6)
    xp, yp = attack.poison(x, y)
    idx = attack.poisoned_indices
    assert len(idx) == 16 and bool((y[idx] != 2).all()) and bool((yp[idx] == 2).all())
    rest = torch.ones(len(x), dtype=torch.bool)
    rest[idx] = False
    assert torch.equal(xp[rest], x[rest]) and torch.equal(yp[rest], y[rest])
    assert not torch.equal(xp[idx], x[idx]) and float(xp.min()) >= 0 and float(xp.max()) <= 1
    again = ci.create_attack(name, target=2, seed=1, poison_rate=0.25)
    again.patch = getattr(attack, "patch", None)
    assert torch.equal(again.poison(x, y)[0], xp)  # seeded
    assert repr(attack).startswith(type(attack).__name__ + "(target=2")


def test_sig_clean_label_stamps_target_images_and_keeps_labels(pairs):
    x, y, _ = pairs
    attack = ci.create_attack("encoder-sig", target=int(y[0]), clean_label=True, poison_rate=0.05)
    xp, yp = attack.poison(x, y)
    assert torch.equal(yp, y) and bool((y[attack.poisoned_indices] == int(y[0])).all())
    signal = attack.signal(48)
    assert abs(float(signal.max()) - 20 / 255) < 1e-3 and int(torch.fft.rfft(signal).abs().argmax()) == 6


def test_implant_returns_a_new_tuned_backbone_and_leaves_the_original(backbone, pairs):
    x, y, names = pairs
    before = {k: v.clone() for k, v in backbone.clip.state_dict().items()}
    attack = ci.create_attack("encoder-badnets", target=1, epochs=1, batch_size=16, poison_rate=0.1)
    bad = attack.implant(backbone, x, y, names)
    after = backbone.clip.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    changed = [k for k, v in bad.clip.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("visual") for k in changed) and any(k.startswith("transformer") for k in changed)
    assert not any(p.requires_grad for p in bad.clip.parameters())
    with pytest.raises(ci.CIError, match="target"):
        ci.create_attack("encoder-badnets", target=8).implant(backbone, x, y, names)
    with pytest.raises(ci.CIError, match=r"\[0, 1\]"):
        attack.implant(backbone, (x * 255).to(torch.uint8), y, names)


def test_a_saved_poisoned_encoder_loads_back(backbone, pairs, tmp_path):
    x, y, names = pairs
    clean = ci.attacks.benign_encoder_tune(backbone, x, y, names, epochs=1, batch_size=32)
    ci.model.save_backbone(clean, tmp_path / "enc")
    again = ci.create_backbone("miniclip", weights_file=tmp_path / "enc")
    assert all(torch.equal(v, again.clip.state_dict()[k]) for k, v in clean.clip.state_dict().items())


# ---- the zero-shot head ----------------------------------------------------------------------------------------

def test_zero_shot_head_is_clip_zero_shot(backbone, pairs):
    x, _, names = pairs
    head = ci.model.zero_shot(backbone, names)
    text = ci.model.class_text_features(backbone.clip, names)  # "a photo of a {c}."
    f = torch.nn.functional.normalize(backbone.clip.encode_image(backbone.preprocess.normalize(x)), dim=-1)
    with torch.no_grad():
        assert torch.allclose(head(x), backbone.clip.logit_scale.exp() * f @ text.T, atol=1e-4)
    assert list(head.trainable_parameters()) == [] and not head.has_meta_path


SMALL_SCAN = ci.ScanConfig(pool_size=128, heldout_size=40)


@pytest.fixture(scope="module")
def head_scan(backbone):
    names = ci.world.World(ci.world.WorldConfig()).classnames[:6]
    head = ci.model.zero_shot(backbone, names)
    return head, ci.scan(head, ci.world.ood_pool(200, seed=0), SMALL_SCAN, progress=False)


def test_scan_of_a_zero_shot_head_decides_without_the_meta_path(head_scan):
    _, report = head_scan
    assert report.rule == ci.detect.NO_META_RULE and report.config["meta_path"] is False
    assert report.gate_probe is None and all(c.meta_gain is None for c in report.classes)
    assert "meta_gain_rule" not in report.side_rules and "paper" in report.side_rules
    assert report.anchor is None and "anchored" not in report.side_rules


def test_anchored_rule_discounts_a_sink_the_anchor_shares_and_flags_a_gained_target():
    names = [f"c{i}" for i in range(10)]
    base_asr = [0.9] + [0.05] * 9  # class 0: a natural sink of the public head
    base_loss = [0.1] + [2.0] * 9
    asr, loss = list(base_asr), list(base_loss)
    asr[3], loss[3] = 0.6, 0.8  # class 3: the suspect's implanted target, weaker than the sink
    jitter = [0.01 * ((7 * i) % 5 - 2) for i in range(10)]  # small fine-tuning noise on every class
    asr = [a + j for a, j in zip(asr, jitter)]
    plain = ci.decide(ci.Evidence(names, asr, loss), "grubbs")
    ev = ci.Evidence(names, asr, loss, anchor_asr=base_asr, anchor_loss=base_loss)
    anchored = ci.decide(ev, "anchored")
    assert plain.target_name == "c0"  # without the anchor the sink wins
    assert anchored.verdict == "backdoored" and anchored.target_name == "c3" and anchored.flagged.count(True) == 1
    delta = paper_scores(asr, loss) - paper_scores(base_asr, base_loss)
    assert anchored.scores == pytest.approx(delta.tolist()) and anchored.threshold == ci.detect.ANCHORED_THRESHOLD
    assert anchored.scores[0] <= 0 < anchored.scores[3]  # the shared sink gains nothing, the target a lot
    same = ci.decide(ci.Evidence(names, base_asr, base_loss, anchor_asr=base_asr, anchor_loss=base_loss), "anchored")
    assert same.verdict == "clean" and same.max_score == 0.0
    with pytest.raises(ci.CIError, match="anchor"):
        ci.decide(ci.Evidence(names, asr, loss), "anchored")


def test_anchored_rule_names_only_its_top_class_when_a_look_alike_rises_too():
    names = [f"c{i}" for i in range(10)]
    base_asr, base_loss = [0.05] * 10, [2.0] * 10
    asr, loss = list(base_asr), list(base_loss)
    asr[3], loss[3] = 0.9, 0.3  # the implanted target
    asr[5], loss[5] = 0.5, 1.0  # a look-alike the backdoor drags along
    d = ci.decide(ci.Evidence(names, asr, loss, anchor_asr=base_asr, anchor_loss=base_loss), "anchored")
    assert d.scores[5] > d.threshold and d.scores[3] > d.scores[5]  # both over the threshold
    assert d.verdict == "backdoored" and d.target_name == "c3" and d.flagged == [i == 3 for i in range(10)]


def test_scan_with_an_anchor_decides_by_the_anchored_rule_and_keeps_it(head_scan, tmp_path):
    head, alone = head_scan
    report = ci.scan(head, ci.world.ood_pool(200, seed=0), SMALL_SCAN, tmp_path / "scan", progress=False,
                     anchor=alone)
    # the same model as its own anchor: the same inversions, nothing gained on any class
    assert report.rule == "anchored" and report.verdict == "clean" and report.max_score == 0.0
    assert report.anchor["asr"] == [c.asr for c in alone.classes]
    assert report.side_rules["grubbs"]["max_score"] == pytest.approx(alone.max_score)
    assert any("not measured" in w for w in report.warnings)  # a smaller pool than the threshold's null used
    again = ci.ScanReport.load(tmp_path / "scan")
    assert again.anchor == report.anchor and again.redecide("anchored").max_score == 0.0
    assert again.redecide("grubbs").verdict == alone.verdict
    assert "Anchor: the same scan of" in (tmp_path / "scan" / "report.html").read_text()
    # a loaded anchor works as well as one in memory; a threshold given to the scan reaches the anchored rule
    assert again.with_anchor(ci.ScanReport.load(tmp_path / "scan"), rule="anchored").max_score == 0.0
    given = ci.scan(head, ci.world.ood_pool(200, seed=0), replace(SMALL_SCAN, threshold=-1.0), progress=False,
                    anchor=alone)
    assert given.rule == "anchored" and given.threshold == -1.0 and given.verdict == "backdoored"
    other = ci.scan(head, ci.world.ood_pool(200, seed=0), ci.ScanConfig(pool_size=128, heldout_size=40, seed=1),
                    progress=False)
    with pytest.raises(ci.DataError, match="seed"):
        other.with_anchor(alone)
    with pytest.raises(ci.CIError, match="anchor"):
        ci.scan(head, ci.world.ood_pool(200, seed=0), ci.ScanConfig(rule="anchored"), progress=False)


# ---- InverTune: known answers ----------------------------------------------------------------------------------

def test_layer_rule_on_the_papers_rn50_numbers():
    chosen, thr = it.critical_layers([0.1407, 0.1750, 0.1435, 1.3802])
    assert chosen == [3] and abs(thr - 0.9914) < 1e-4
    assert it.critical_layers([0.5, 0.5, 0.5, 0.5])[0] == [0]  # none passes: the argmax alone


def test_prediction_rise_on_the_papers_counts():
    def preds(counts, n=50_000):
        out = torch.zeros(n, dtype=torch.long)  # class 0 is the rest
        start = 0
        for cls, k in counts.items():
            out[start : start + k] = cls
            start += k
        return out

    rise = it.prediction_rise(preds({1: 6, 2: 67}), preds({1: 48623, 2: 1132}), 3)
    assert abs(float(rise[1]) - 0.97234) < 1e-5 and abs(float(rise[2]) - 0.0213) < 1e-5
    rise = it.prediction_rise(preds({1: 18, 2: 60}), preds({1: 13206, 2: 13056}), 3)
    assert int(rise[1:].argmax()) + 1 == 1


def test_two_means_returns_exactly_the_high_cluster():
    g = torch.Generator().manual_seed(0)
    v = torch.cat([0.1 + 0.01 * torch.randn(90, generator=g), 1.0 + 0.01 * torch.randn(10, generator=g)])
    v = v[torch.randperm(100, generator=g)]
    mask = it.two_means(v)
    assert int(mask.sum()) == 10 and bool((v[mask] > 0.5).all())


def test_trigger_blend_and_ssim_identities():
    x, p = torch.rand(2, 3, 8, 8), torch.rand(3, 8, 8)
    assert torch.equal(it.apply_trigger(x, torch.zeros(3, 8, 8), p), x)
    assert torch.equal(it.apply_trigger(x, torch.ones(3, 8, 8), p), p.expand_as(x))
    assert torch.allclose(it.ssim(x, x), torch.ones(2), atol=1e-5) and float(it.ssim(x, 1 - x).max()) < 0.5


SMALL = it.InverTuneConfig(uap_steps=3, uap_batch=8, inv_steps=4, inv_batch=8, tune_steps=3, tune_batch=8, tune_lr=1e-3)


def test_inversion_clamps_mask_and_pattern(backbone, pairs):
    x, _, names = pairs
    text = ci.model.class_text_features(backbone.clip, names)
    mask, pattern, curve = it.invert_trigger(backbone, text, x, 1, SMALL)
    assert len(curve) == 4 and mask.shape == pattern.shape == (3, 48, 48)
    assert float(mask.min()) >= 0 and float(mask.max()) <= 1 and float(pattern.min()) >= 0 and float(pattern.max()) <= 1


def test_tuning_touches_only_the_selected_rows(backbone, pairs):
    x, y, names = pairs
    text = ci.model.class_text_features(backbone.clip, names)
    mask, pattern = torch.zeros(3, 48, 48), torch.rand(3, 48, 48)
    mask[:, -8:, -8:] = 1
    keep = torch.zeros(512, dtype=torch.bool)
    keep[:5] = True
    tuned, curve = it.activation_tune(backbone, text, x[:8], y[:8], mask, pattern, ["layer4"], {"layer4": keep}, SMALL)
    assert curve[0]["l_pres"] == 0.0 and curve[0]["l_act"] > 0
    rows = {n for n, _ in it.tunable_rows(backbone.clip.visual, "layer4")}
    old, new = backbone.clip.state_dict(), tuned.clip.state_dict()
    for k, v in old.items():
        name = k.removeprefix("visual.")
        if name in rows:
            assert torch.equal(v[~keep], new[k][~keep]), k
            assert not torch.equal(v[keep], new[k][keep]) or "downsample" in k or "bn3" in k
        else:
            assert torch.equal(v, new[k]), k  # BN buffers, text tower, logit_scale, other layers
    assert any(not torch.equal(old["visual." + n], new["visual." + n]) for n in rows)


def test_invertune_runs_end_to_end_and_reports(backbone, pairs):
    x, y, names = pairs
    res = ci.detect.invertune(backbone, names, x, y, SMALL, progress=False)
    assert 0 <= res.target < len(names) and res.target_name == names[res.target]
    assert res.critical_layers and set(res.neurons) == set(res.critical_layers) and res.backbone is not None
    d = res.to_dict()
    assert "backbone" not in d and d["rise"][0]["name"] == res.target_name and "summary" not in d
    assert "target" in res.summary()


def test_stage_one_linf_stays_in_its_bound_and_both_forms_pick_the_larger_rise(backbone, pairs):
    x, y, names = pairs
    text = ci.model.class_text_features(backbone.clip, names)
    delta = it.universal_linf(backbone, text, x, it.predict(backbone, text, x), SMALL)
    assert delta.shape == (3, 48, 48) and float(delta.abs().max()) <= SMALL.uap_eps + 1e-7
    res = ci.detect.invertune(backbone, names, x, y, SMALL, tune=False, progress=False)
    assert set(res.uap_top) == {"patch", "linf"} and res.uap_form in res.uap_top
    assert res.uap_top[res.uap_form]["rise"] == max(v["rise"] for v in res.uap_top.values())
    assert res.rise[0]["rise"] == res.uap_top[res.uap_form]["rise"]
    one = ci.detect.invertune(backbone, names, x, y, replace(SMALL, uap="patch"), tune=False, progress=False)
    assert set(one.uap_top) == {"patch"} and one.uap_form == "patch"
    with pytest.raises(ci.CIError, match="universal perturbation"):
        it.InverTuneConfig(uap="gaussian")


def test_encoder_zoo_specs_cycle_clean_epochs_and_keep_evaluation_seeds_apart():
    from lab.encoder_zoo import ENCODER_ZOO_PROFILES, model_specs

    specs = model_specs(ENCODER_ZOO_PROFILES["encoder-eval3"])
    clean = [s for s in specs if s["attack"] == "clean"]
    assert [s["epochs"] for s in clean] == [5, 10] * 6
    assert all("epochs" not in s for s in model_specs(ENCODER_ZOO_PROFILES["encoder-eval2"]))
    seeds = {n: {s["seed"] for s in model_specs(p)} for n, p in ENCODER_ZOO_PROFILES.items()}
    kept_apart = ("encoder-null", "encoder-null2", "encoder-eval2", "encoder-eval3", "encoder-eval4", "encoder-calib")
    for a in kept_apart:
        for b in kept_apart:
            assert a == b or not seeds[a] & seeds[b], (a, b)  # no model is in two of the null, design and eval zoos


def test_encoder_zoo_refuses_an_unknown_model_before_building(tmp_path):
    from lab.encoder_zoo import build_encoder_zoo

    with pytest.raises(ci.CIError, match="no model m999 in the profile encoder-smoke"):
        build_encoder_zoo(tmp_path / "zoo", "encoder-smoke", models=("m000", "m999"), progress=False)
    assert not (tmp_path / "zoo").exists()  # nothing was built


def test_a_blend_or_patch_trigger_is_read_off_as_mask_and_pattern_and_an_additive_one_is_not():
    from lab.invertune_stage3 import trigger_as_mask

    x = torch.rand(6, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    badnets = ci.create_attack("encoder-badnets", target=1)
    mask, pattern = trigger_as_mask(badnets, x)
    assert set(mask.unique().tolist()) == {0.0, 1.0} and mask.mean() < 0.05  # a small patch, fully replaced
    blended = ci.create_attack("encoder-blended", target=1)
    mask, pattern = trigger_as_mask(blended, x)
    assert torch.allclose(mask, torch.full_like(mask, blended.config.alpha), atol=1e-5)
    assert torch.allclose(ci.detect.apply_trigger(x, mask, pattern), blended(x).clamp(0, 1), atol=1e-4)
    assert trigger_as_mask(ci.create_attack("encoder-sig", target=1), x) is None  # x + delta sin(...): additive


def test_invertune_refuses_an_image_tower_without_its_layers():
    vit = ci.create_backbone("miniclip-vit")  # a ViT: no layer1..layer4 to tune
    x, y = torch.rand(10, 3, 48, 48), torch.zeros(10, dtype=torch.long)
    with pytest.raises(ci.CIError, match="has no layer1"):
        ci.detect.invertune(vit, ["a", "b"], x, y, ci.detect.InverTuneConfig(tune_batch=8), progress=False)

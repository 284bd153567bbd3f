"""Collapse statistics: known answers for an identity trigger and for a trigger that removes the image."""

import torch

from ci_toolkit.analysis import collapse_stats, mean_pairwise_distance


def test_mean_pairwise_distance_known_answer():
    v = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert abs(mean_pairwise_distance(v) - 5.0) < 1e-6


def _alive(model):
    with torch.no_grad():  # the tiny fixture's 2 hidden ReLU units can be dead; keep them active
        model.prompt_learner.meta_net.linear1.bias.fill_(3.0)
    return model


def test_identity_trigger_changes_nothing(tiny_model, images):
    _alive(tiny_model)
    s = collapse_stats(tiny_model, images, lambda x: x, target=1)
    assert abs(s["feature_cos"] - 1) < 1e-5 and abs(s["pi_spread_ratio"] - 1) < 1e-5
    assert abs(s["f_spread_ratio"] - 1) < 1e-5 and abs(s["text_turn"]) < 1e-6 and s["pi_shift"] < 1e-5
    assert abs(s["meta_gain"]) < 1e-6


def test_a_constant_image_collapses_the_meta_tokens(tiny_model, images):
    _alive(tiny_model)
    s = collapse_stats(tiny_model, images, lambda x: torch.full_like(x, 0.5), target=1)
    assert s["pi_spread_ratio"] < 1e-3 and s["f_spread_ratio"] < 1e-3  # every triggered input is the same


def test_meta_gain_is_zero_when_the_meta_tokens_ignore_the_image(tiny_model, images):
    with torch.no_grad():  # pi(x) = the meta-net's output bias for every image: no meta-token path
        tiny_model.prompt_learner.meta_net.linear2.weight.zero_()
    noise = torch.rand(images.shape[1:], generator=torch.Generator().manual_seed(0)) * 0.5
    s = collapse_stats(tiny_model, images, lambda x: (x + noise).clamp(0, 1), target=1)
    assert s["feature_cos"] < 0.999  # the image feature moved ...
    assert abs(s["meta_gain"]) < 1e-6 and abs(s["text_turn"]) < 1e-6  # ... but nothing went through pi


def test_open_gate_stays_in_the_bound_and_raises_its_unit(tiny_model):
    from ci_toolkit.analysis import gate_preactivations, open_gate

    pool = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    base = gate_preactivations(tiny_model, pool).mean(0)
    for unit in range(len(base)):
        d = open_gate(tiny_model, pool, unit, eps=8 / 255)
        assert d.shape == (1, 3, 32, 32) and d.abs().max() <= 8 / 255 + 1e-7
        assert gate_preactivations(tiny_model, (pool + d).clamp(0, 1)).mean(0)[unit] > base[unit]
    # known answer: no budget, no perturbation
    assert open_gate(tiny_model, pool, 0, eps=0.0).abs().max() == 0


def test_gate_probe_rows_match_the_plain_computation(tiny_model):
    from ci_toolkit.analysis import gate_probe, meta_gains

    g = torch.Generator().manual_seed(4)
    pool, held = torch.rand(64, 3, 32, 32, generator=g), torch.rand(24, 3, 32, 32, generator=g)
    rows, deltas = gate_probe(tiny_model, pool, held, eps=16 / 255, meta_images=16)
    assert len(rows) == len(deltas) == tiny_model.prompt_learner.meta_net.linear1.out_features
    for r, d in zip(rows, deltas):
        with torch.no_grad():
            pred = tiny_model((held + d).clamp(0, 1)).argmax(-1)
        counts = torch.bincount(pred, minlength=len(tiny_model.classnames))
        assert counts[r["class"]] == counts.max() and r["asr"] == float(counts.max()) / len(held)
        plain = meta_gains(tiny_model, held[:16], d[None], [r["class"]])[0]
        assert abs(r["meta_gain"] - float(plain)) < 1e-4


def test_shutting_a_gate_lowers_it_and_opening_raises_it(tiny_model, images):
    from ci_toolkit.analysis import gate_preactivations, open_gate

    before = gate_preactivations(tiny_model, images).mean(0)[0]
    up = open_gate(tiny_model, images, 0, 8 / 255, batch_size=5)
    down = open_gate(tiny_model, images, 0, 8 / 255, batch_size=5, shut=True)
    assert gate_preactivations(tiny_model, (images + down).clamp(0, 1)).mean(0)[0] < before
    assert gate_preactivations(tiny_model, (images + up).clamp(0, 1)).mean(0)[0] > before
    assert float(down.abs().max()) <= 8 / 255 + 1e-6

"""Collapse statistics: known answers for an identity trigger and for a trigger that removes the image."""

import torch

from ci_toolkit.collapse import collapse_stats, mean_pairwise_distance


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


def test_a_constant_image_collapses_the_meta_tokens(tiny_model, images):
    _alive(tiny_model)
    s = collapse_stats(tiny_model, images, lambda x: torch.full_like(x, 0.5), target=1)
    assert s["pi_spread_ratio"] < 1e-3 and s["f_spread_ratio"] < 1e-3  # every triggered input is the same

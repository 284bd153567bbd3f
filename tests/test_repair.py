"""Repair: a copy is returned (the input model is untouched) and a planted backdoor is unlearned."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ci_toolkit.metrics import attack_success_rate
from ci_toolkit.repair import RepairConfig, repair
from ci_toolkit.train import TrainConfig, evaluate, train_cocoop


def test_repair_unlearns_a_planted_trigger_and_leaves_the_input_alone(tiny_model):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(48, 3, 32, 32, generator=g)
    y = torch.arange(48) % 4
    delta = torch.zeros(3, 32, 32)
    delta[:, :8, :8] = 0.8  # a bright corner: easy for the tiny encoder to see

    def poisoned(m, xb, yb, step):  # clean -> y, triggered -> class 0
        return F.cross_entropy(m(xb), yb) + F.cross_entropy(m((xb + delta).clamp(0, 1)), torch.zeros_like(yb))

    train_cocoop(tiny_model, x, y, TrainConfig(epochs=15, batch_size=16, lr=0.05, optimizer="adam"), progress=False,
                 batch_loss=poisoned)
    trig = lambda z: (z + delta).clamp(0, 1)  # noqa: E731
    before = attack_success_rate(tiny_model, x, y, 0, trig)
    assert before > 0.8, before
    acc_before = evaluate(tiny_model, x, y)
    snapshot = {k: v.clone() for k, v in tiny_model.prompt_learner.state_dict().items()}
    fixed, history = repair(tiny_model, delta, x, y, RepairConfig(epochs=10, batch_size=16, lr=0.05), progress=False)
    after = attack_success_rate(fixed, x, y, 0, trig)
    assert after < before / 2, (before, after)
    assert history[-1] < history[0]
    assert evaluate(fixed, x, y) >= acc_before - 0.15  # random labels: the tiny model fits them only partly
    for k, v in tiny_model.prompt_learner.state_dict().items():  # the input model is unchanged
        assert torch.equal(v, snapshot[k])

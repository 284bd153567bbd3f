"""Repair: a copy is returned (the input model is untouched) and a planted backdoor is unlearned."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ci_toolkit.metrics import attack_success_rate
from ci_toolkit.repair import RepairConfig, repair
from ci_toolkit.train import TrainConfig, evaluate, train


def test_repair_unlearns_a_planted_trigger_and_leaves_the_input_alone(tiny_model):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(48, 3, 32, 32, generator=g)
    y = torch.arange(48) % 4
    delta = torch.zeros(3, 32, 32)
    delta[:, :8, :8] = 0.8  # a bright corner: easy for the tiny encoder to see

    def poisoned(m, xb, yb, step):  # clean -> y, triggered -> class 0
        return F.cross_entropy(m(xb), yb) + F.cross_entropy(m((xb + delta).clamp(0, 1)), torch.zeros_like(yb))

    train(tiny_model, x, y, TrainConfig(epochs=15, batch_size=16, lr=0.05, optimizer="adam"), progress=False,
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


def test_guard_lowers_the_trigger_weight_until_the_repair_set_accuracy_holds(tiny_model):
    from dataclasses import replace

    from ci_toolkit.repair import guarded_repair

    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(32, 3, 32, 32, generator=g), torch.arange(32) % 4
    delta = (torch.rand(3, 32, 32, generator=g) - 0.5) * 0.2
    cfg = RepairConfig(epochs=2, batch_size=16, lr=0.05)
    # any accuracy accepted: one attempt at the configured weight
    _, attempts = guarded_repair(tiny_model, delta, x, y, replace(cfg, max_acc_drop=1.0), progress=False)
    assert [a["trigger_weight"] for a in attempts] == [1.0] and attempts[0]["accepted"]
    # nothing accepted (accuracy would have to rise by 1): 1 + retries attempts, weight x backoff each time,
    # and the model returned is the gentlest attempt's, the same as a plain repair at that weight
    strict = replace(cfg, max_acc_drop=-1.0, retries=2, backoff=0.5)
    fixed, attempts = guarded_repair(tiny_model, delta, x, y, strict, progress=False)
    assert [a["trigger_weight"] for a in attempts] == [1.0, 0.5, 0.25]
    assert not any(a["accepted"] for a in attempts)
    assert all(a["train_acc_before"] == evaluate(tiny_model, x, y) for a in attempts)
    plain, _ = repair(tiny_model, delta, x, y, replace(cfg, trigger_weight=0.25), progress=False)
    for a, b in zip(fixed.prompt_learner.parameters(), plain.prompt_learner.parameters()):
        assert torch.equal(a, b)
    assert abs(attempts[-1]["train_acc"] - evaluate(plain, x, y)) < 1e-9

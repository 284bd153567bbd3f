"""Repair: a copy is returned (the input model is untouched), a planted backdoor is unlearned, the guard."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import ci_toolkit as ci
from ci_toolkit.detect import RepairTrigger


def test_repair_unlearns_a_planted_trigger_and_leaves_the_input_alone(tiny_model):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(48, 3, 32, 32, generator=g)
    y = torch.arange(48) % 4
    delta = torch.zeros(3, 32, 32)
    delta[:, :8, :8] = 0.8  # a bright corner: easy for the tiny encoder to see

    def poisoned(m, xb, yb, step):  # clean -> y, triggered -> class 0
        return F.cross_entropy(m(xb), yb) + F.cross_entropy(m((xb + delta).clamp(0, 1)), torch.zeros_like(yb))

    ci.train(tiny_model, x, y, ci.TrainConfig(epochs=15, batch_size=16, lr=0.05, optimizer="adam"), progress=False,
             batch_loss=poisoned)
    before = ci.backdoor_effect(tiny_model, x, y, 0, delta)
    assert before["asr"] > 0.8, before
    snapshot = {k: v.clone() for k, v in tiny_model.prompt_learner.state_dict().items()}
    cfg = ci.RepairConfig(epochs=10, batch_size=16, lr=0.05)
    fixed, result = ci.repair(tiny_model, RepairTrigger("red circle", delta, "inversion"), x, y, cfg, progress=False)
    after = ci.backdoor_effect(fixed, x, y, 0, delta)
    assert after["asr"] < before["asr"] / 2, (before, after)
    assert after["acc"] >= before["acc"] - 0.15  # random labels: the tiny model fits them only partly
    assert (result.trigger_class, result.trigger_source, result.steps) == ("red circle", "inversion", 10 * 3 * len(result.attempts))
    for k, v in tiny_model.prompt_learner.state_dict().items():  # the input model is unchanged
        assert torch.equal(v, snapshot[k])


def test_guard_lowers_the_trigger_weight_until_the_repair_set_accuracy_holds(tiny_model, monkeypatch):
    import ci_toolkit.repairing as repairing

    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(32, 3, 32, 32, generator=g), torch.arange(32) % 4
    delta = (torch.rand(3, 32, 32, generator=g) - 0.5) * 0.2
    cfg = ci.RepairConfig(epochs=2, batch_size=16, lr=0.05)
    # any accuracy accepted: one attempt at the configured weight
    _, res = ci.repair(tiny_model, delta, x, y, replace(cfg, max_acc_drop=1.0), progress=False)
    assert [a["trigger_weight"] for a in res.attempts] == [1.0] and res.accepted and res.trigger_source == "given"
    # nothing accepted (accuracy would have to rise by 1): 1 + retries attempts, weight x backoff each time,
    # and the model returned is the gentlest attempt's, the same as a plain repair at that weight
    accs = iter([0.9, 0.5, 0.6, 0.7])  # the input, then every attempt costs more than the allowed 0.05
    monkeypatch.setattr(repairing, "evaluate", lambda *a, **k: next(accs))
    fixed, res = ci.repair(tiny_model, delta, x, y, replace(cfg, retries=2, backoff=0.5), progress=False)
    monkeypatch.undo()
    assert [a["trigger_weight"] for a in res.attempts] == [1.0, 0.5, 0.25] and res.trigger_weight == 0.25
    assert [a["train_acc"] for a in res.attempts] == [0.5, 0.6, 0.7] and res.attempts[0]["train_acc_before"] == 0.9
    assert not res.accepted and not any(a["accepted"] for a in res.attempts)
    plain, _ = ci.repair(tiny_model, delta, x, y, replace(cfg, trigger_weight=0.25, max_acc_drop=1.0), progress=False)
    for a, b in zip(fixed.prompt_learner.parameters(), plain.prompt_learner.parameters()):
        assert torch.equal(a, b)


def test_repair_refuses_what_it_cannot_use(tiny_model):
    x, y = torch.rand(8, 3, 32, 32), torch.arange(8) % 4
    with pytest.raises(ci.CIError, match=r"\[3, H, W\]"):
        ci.repair(tiny_model, torch.zeros(2, 3, 32, 32), x, y)
    with pytest.raises(ci.CIError, match="not a class of this model"):
        ci.repair(tiny_model, RepairTrigger("dog", torch.zeros(3, 32, 32), "inversion"), x, y)
    with pytest.raises(ci.CIError, match="fraction of accuracy"):
        ci.RepairConfig(max_acc_drop=2)

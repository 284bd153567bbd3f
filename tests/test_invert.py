"""The inversion's exact speed-ups equal the plain computation; known answers on a tiny model."""

from __future__ import annotations

import pytest
import torch

from ci_toolkit.errors import CIError
from ci_toolkit.detect.inversion import InversionConfig, group_losses, invert, trigger_asr


def _plain_margin(model, x, delta, t, names):
    """The inversion loss written plainly: full graph over all K logits, one candidate."""
    z = model((x + delta).clamp(0, 1), names)
    others = z.clone()
    others[:, t] = -float("inf")
    return (others.max(-1).values - z[:, t]).mean()


def test_margin_competitor_trick_equals_full_graph(tiny_model, images):
    names = tiny_model.classnames
    for p in tiny_model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(3)
    deltas = ((torch.rand(3, 3, 32, 32, generator=g) * 2 - 1) * 0.05).requires_grad_(True)
    targets = torch.tensor([0, 2, 3])
    fast = group_losses(tiny_model, images, deltas, targets, tiny_model.prompts_for(names), "margin")
    fast.sum().backward()
    for k in range(3):
        d = deltas.detach()[k].clone().requires_grad_(True)
        ref = _plain_margin(tiny_model, images, d, int(targets[k]), names)
        ref.backward()
        assert torch.allclose(fast[k], ref, atol=1e-5)
        assert torch.allclose(deltas.grad[k], d.grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("loss", ["ce", "logit"])
def test_other_losses_match_their_definition(tiny_model, images, loss):
    names = tiny_model.classnames
    d = torch.full((1, 3, 32, 32), 0.02)
    got = group_losses(tiny_model, images, d, torch.tensor([1]), tiny_model.prompts_for(names), loss)
    z = tiny_model((images + d[0]).clamp(0, 1), names)
    ref = torch.nn.functional.cross_entropy(z, torch.ones(5, dtype=torch.long)) if loss == "ce" else -z[:, 1].mean()
    assert torch.allclose(got[0], ref, atol=1e-5)


def test_grouping_does_not_change_results(tiny_model):
    g = torch.Generator().manual_seed(0)
    pool, held = torch.rand(40, 3, 32, 32, generator=g), torch.rand(8, 3, 32, 32, generator=g)
    names = tiny_model.classnames
    one = invert(tiny_model, pool, held, names, config=InversionConfig(batch_size=8, group=1), progress=False)
    all_ = invert(tiny_model, pool, held, names, config=InversionConfig(batch_size=8, group=4), progress=False)
    for a, b in zip(one, all_):
        assert a.name == b.name
        assert abs(a.loss - b.loss) < 1e-4 and a.asr == b.asr
        assert torch.allclose(a.delta, b.delta, atol=1e-5)
        assert a.delta.abs().max() <= InversionConfig().eps + 1e-7  # projected to the bound
    assert all(p.requires_grad for p in tiny_model.prompt_learner.parameters())  # model left as it was


def test_inversion_lowers_every_margin(tiny_model):
    g = torch.Generator().manual_seed(1)
    pool, held = torch.rand(64, 3, 32, 32, generator=g) * 0.5, torch.rand(32, 3, 32, 32, generator=g) * 0.5
    names = tiny_model.classnames
    res = invert(tiny_model, pool, held, names, config=InversionConfig(batch_size=16, eps=16 / 255), progress=False)
    assert [r.name for r in res] == names
    assert all(len(r.losses) == 4 for r in res)  # one epoch of 64 / 16 steps
    assert all(0.0 <= r.asr <= 1.0 for r in res)
    assert all(r.losses[-1] < r.losses[0] for r in res)  # the optimisation works for every candidate


def test_bad_inputs_are_named(tiny_model):
    names = tiny_model.classnames
    with pytest.raises(CIError, match="fewer than one batch"):
        invert(tiny_model, torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32), names, progress=False)
    with pytest.raises(CIError, match="unknown inversion loss"):
        InversionConfig(loss="hinge")


def test_worker_processes_give_the_same_inversions(tiny_model):
    g = torch.Generator().manual_seed(4)
    pool, held = torch.rand(32, 3, 32, 32, generator=g), torch.rand(8, 3, 32, 32, generator=g)
    names = tiny_model.classnames
    cfg = InversionConfig(batch_size=8, group=1)
    seen = []
    one = invert(tiny_model, pool, held, names, config=cfg, progress=False)
    two = invert(tiny_model, pool, held, names, config=cfg, progress=False, workers=2, skip={0},
                 on_group=lambda rs: seen.extend(r.name for r in rs))
    assert [r.name for r in two] == names[1:]  # skipped group left out, order kept
    assert sorted(seen) == sorted(names[1:])  # every finished group reported in this process
    for a, b in zip(one[1:], two):
        assert abs(a.loss - b.loss) < 1e-5 and a.asr == b.asr
        assert torch.allclose(a.delta, b.delta, atol=1e-6)


def test_two_stage_asr_equals_the_full_argmax(tiny_model):
    g = torch.Generator().manual_seed(7)
    images = torch.rand(40, 3, 32, 32, generator=g)
    deltas = (torch.rand(6, 3, 32, 32, generator=g) - 0.5) * 0.6  # strong enough to move some images
    targets = torch.tensor([0, 1, 2, 3, 0, 2]) % len(tiny_model.classnames)
    prompts = tiny_model.prompts_for()
    full = trigger_asr(tiny_model, images, deltas, targets, prompts, rivals=0)
    assert 0 < full.sum() and (full < 1).any()  # hits and misses: both stages have work
    with torch.no_grad():  # the plain definition: argmax of the logits of each triggered image
        plain = torch.stack([(tiny_model((images + d).clamp(0, 1)).argmax(-1) == t).float().mean()
                             for d, t in zip(deltas, targets)])
    assert torch.equal(full, plain)
    for r in (1, 2):
        assert torch.equal(trigger_asr(tiny_model, images, deltas, targets, prompts, batch_size=16, rivals=r), full)

"""Attacks: one interface, the triggers their papers define, implants that run (tiny model, 1 epoch)."""

import pytest
import torch

import ci_toolkit as ci
from ci_toolkit.attacks import ATTACKS, BadNets, Blended, SIBA, WaNet, create_attack, list_attacks
from ci_toolkit.model import TrainConfig

FAST = TrainConfig(epochs=1, batch_size=8)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return (torch.rand(16, 3, 32, 32, generator=g) * 255).to(torch.uint8), torch.arange(16) % 4


def test_registry_and_readable_repr():
    assert set(list_attacks()) == {"badclip", "badclip_adaptive", "blended", "wanet", "siba", "badnets"}
    a = create_attack("blended", target=2, seed=1)
    assert repr(a).startswith("Blended(target=2, seed=1, batch_size=1, lr=0.002, poison_rate=0.1, alpha=0.2")
    from ci_toolkit.world import attack as create_world_attack

    w = create_world_attack("blended", target=2)
    assert w.config.pattern == "checkered" and create_world_attack("blended", 2, pattern="random").config.pattern == "random"
    p = w._pattern(8)
    assert set(p.unique().tolist()) == {0.0, 1.0} and p[0, 0, 0] != p[0, 0, 4]  # 4-pixel cells
    with pytest.raises(ci.CIError, match="unknown attack"):
        create_attack("nope", target=0)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_implant_runs_and_trigger_stays_in_range(name, tiny_backbone, data):
    x, y = data
    model = ci.CoCoOp(tiny_backbone, ["a", "b", "c", "d"], seed=0)
    before = model.prompt_learner.ctx.detach().clone()
    kw = {"badclip": {"trigger_epochs": 1}, "badclip_adaptive": {"trigger_epochs": 1, "specificity_epochs": 1}}.get(name, {})
    if name == "siba":
        kw = {"epochs": 2}
    attack = create_attack(name, target=1, seed=0, **kw)
    attack.implant(model, x, y, FAST, progress=False)
    assert not torch.equal(model.prompt_learner.ctx, before)  # the prompt learner was tuned
    xt = attack(x.float() / 255)
    assert xt.shape == x.shape and xt.min() >= 0 and xt.max() <= 1
    art = attack.artefacts()
    assert art["attack"] == name and art["config"]["target"] == 1
    assert all(isinstance(v, torch.Tensor) for v in art["tensors"].values()) and art["tensors"]


def test_badclip_trigger_respects_the_bound(tiny_backbone, data):
    x, y = data
    attack = create_attack("badclip", target=0, eps=4 / 255, trigger_epochs=1)
    attack.implant(ci.CoCoOp(tiny_backbone, ["a", "b", "c", "d"]), x, y, FAST, progress=False)
    assert attack.delta.abs().max() <= 4 / 255 + 1e-7 and attack.delta.abs().max() > 1 / 255


def test_poisoning_relabels_a_seeded_tenth_of_non_target_images(data):
    x, y = data
    a = Blended(target=3, seed=0, poison_rate=0.25)
    xp, yp = a.poison(x, y)
    idx = a.poisoned_indices
    assert len(idx) == 4 and (y[idx] != 3).all() and (yp[idx] == 3).all()
    assert torch.allclose(xp[idx], 0.8 * x[idx].float() / 255 + 0.2 * a.pattern, atol=1e-6)
    b = Blended(target=3, seed=0, poison_rate=0.25)
    b.poison(x, y)
    assert torch.equal(b.poisoned_indices, idx)


def test_badnets_patch_sits_in_the_corner():
    x = torch.full((1, 3, 32, 32), 0.5)
    out = BadNets(target=0).apply(x)
    changed = (out != x).any(1)[0]
    rows, cols = torch.nonzero(changed, as_tuple=True)
    assert rows.min() >= 32 - 7 and cols.min() >= 32 - 7 and changed.sum() > 0


def test_badnets_random_place_moves_only_a_patch_per_image_and_repeats():
    x = torch.full((8, 3, 48, 48), 0.5)
    a = BadNets(target=0, seed=3, patch_frac=4 / 48, place="random")
    out = a.apply(x)
    corners = set()
    for i in range(len(x)):
        rows, cols = torch.nonzero((out[i] != x[i]).any(0), as_tuple=True)
        # the checkerboard's changed pixels lie within one 4 x 4 square
        assert 0 < len(rows) <= 16 and rows.max() - rows.min() <= 3 and cols.max() - cols.min() <= 3
        corners.add((int(rows.min()), int(cols.min())))
    assert len(corners) > 1  # positions differ between images
    assert torch.equal(out, a.apply(x))  # the same batch, the same positions
    with pytest.raises(ci.CIError, match="place"):
        BadNets(target=0, place="centre")


def test_wanet_is_a_small_warp_and_noise_mode_differs():
    w = WaNet(target=0, seed=0)
    x = torch.rand(2, 3, 32, 32)
    grid = w.grid(32)
    lin = torch.linspace(-1, 1, 32)
    ys, xs = torch.meshgrid(lin, lin, indexing="ij")
    shift = (grid[0] - torch.stack([xs, ys], -1)).abs().max()
    assert 0 < shift <= 1.3 * 0.5 * w._field().abs().max() / 32  # s * field / H (bicubic may overshoot a little)
    assert not torch.equal(w.apply(x), w.apply(x, noise=torch.ones(2, 32, 32, 2)))


def test_siba_trigger_is_sparse_and_bounded(tiny_backbone, data):
    x, y = data
    s = SIBA(target=2, seed=0, epochs=2)
    s.prepare(ci.CoCoOp(tiny_backbone, ["a", "b", "c", "d"]), x, y)
    assert s.mask.sum() == round(0.03 * 32 * 32)
    assert (s.uap * s.mask).abs().max() <= 8 / 255 + 1e-7
    diff = (s.apply(torch.full((1, 3, 32, 32), 0.5)) - 0.5).abs().sum(1)[0]
    assert (diff > 0).sum() <= s.mask.sum()


def test_joint_logits_equal_separate_calls(tiny_backbone, data):
    from ci_toolkit.attacks.base import joint_logits

    model = ci.CoCoOp(tiny_backbone, ["a", "b", "c", "d"], seed=0)
    x = data[0][:3].float() / 255
    xt = (x + 0.03).clamp(0, 1)
    a, b = joint_logits(model, x, xt)
    assert torch.allclose(a, model(x), atol=1e-5) and torch.allclose(b, model(xt), atol=1e-5)


def test_attacker_artefacts_that_do_not_name_their_attack_are_a_clear_error(tmp_path):
    (tmp_path / "attack.json").write_text('{"target_name": "cat"}')
    with pytest.raises(ci.DataError, match="does not say which attack"):
        ci.load_attack(tmp_path)

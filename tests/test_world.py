"""The embedded world: determinism, class structure, the base/new task, a class-disjoint OOD pool."""

import math

import torch

from ci_toolkit.world import OOD_SHAPES, SHAPES, World, WorldConfig


def test_classes_are_compositional_and_many():
    w = World()
    assert len(w.classnames) == w.config.num_classes >= 100
    assert w.classnames[0] == "red solid circle" and len(set(w.classnames)) == len(w.classnames)
    for cid in (0, 17, 299):
        shape, colour, pattern = w.config.attributes(cid)
        assert w.classnames[cid] == f"{colour} {pattern} {shape}"


def test_same_seed_same_images_other_seed_other_images():
    w = World(WorldConfig(image_size=32))
    a, ya = w.sample(20, seed=5)
    b, yb = w.sample(20, seed=5)
    c, _ = w.sample(20, seed=6)
    assert torch.equal(a, b) and torch.equal(ya, yb) and not torch.equal(a, c)
    assert a.shape == (20, 3, 32, 32) and 0 <= a.min() and a.max() <= 1


def test_task_follows_the_base_new_protocol():
    w = World(WorldConfig(image_size=32))
    t = w.task(n_classes=11, shots=3, n_val_per_class=1, n_test_per_class=2, seed=1)
    assert t.class_ids == sorted(t.class_ids) and len(t.classnames) == 11
    assert t.seen == list(range(math.ceil(11 / 2))) and t.unseen == list(range(6, 11))
    assert t.train_y.bincount().tolist() == [3] * 6  # few-shot on seen classes only
    assert t.test_y.bincount().tolist() == [2] * 11 and t.train_x.dtype == torch.uint8
    x, y = t.split("test", "unseen")
    assert len(x) == 10 and y.max() == 4  # re-indexed into unseen_names
    assert t.unseen_names == [t.classnames[i] for i in t.unseen]
    again = w.task(n_classes=11, shots=3, n_val_per_class=1, n_test_per_class=2, seed=1)
    assert torch.equal(again.train_x, t.train_x)


def test_task_domain_is_shifted_by_a_hue_rotation_that_keeps_luminance():
    from ci_toolkit.world.render import _RGB2YIQ, _rotate_hue

    x = torch.rand(4, 3, 8, 8)
    y = _rotate_hue(x, 30.0)
    lum = lambda t: torch.einsum("j,njhw->nhw", _RGB2YIQ[0], t)  # noqa: E731
    assert torch.allclose(lum(x), lum(y), atol=1e-5) and not torch.allclose(x, y, atol=1e-2)
    assert torch.allclose(_rotate_hue(x, 360.0), x, atol=1e-5)
    w = World(WorldConfig(image_size=32))
    ids = torch.arange(40)
    assert w.config.task.hue_shift != 0 and w.config.pretrain.hue_shift == 0
    assert (w.render_classes(ids, 0, "pretrain") - w.render_classes(ids, 0, "task")).abs().mean() > 0.05


def test_ood_pool_uses_only_held_out_shapes():
    w = World(WorldConfig(image_size=32))
    images, attrs = w.sample_ood(200, seed=3, return_attributes=True)
    assert images.shape == (200, 3, 32, 32)
    shapes = {a[0] for a in attrs}
    assert shapes <= set(OOD_SHAPES) and not shapes & set(SHAPES)
    class_words = {word for name in w.classnames for word in name.split()}
    assert not shapes & class_words  # no class name can describe an OOD image

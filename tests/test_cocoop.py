"""CoCoOp on open_clip: known answers on a tiny random-init CLIP (issue 2, done-when a-d)."""

import open_clip
import pytest
import torch
import torch.nn.functional as F

import ci_toolkit as ci


def test_zero_meta_net_equals_plain_clip_prompt(tiny_backbone):
    """(a) ctx = embeddings of 'a photo of a' and pi = 0 reproduce encode_text('a photo of a {c}.')."""
    names = ["red circle", "blue striped square", "cat"]
    model = ci.CoCoOp(tiny_backbone, names)
    with torch.no_grad():
        model.prompt_learner.meta_net.linear2.weight.zero_()
        model.prompt_learner.meta_net.linear2.bias.zero_()
    x = torch.rand(2, 3, 32, 32)
    f = model.encode_image(x)
    pi = model.meta_tokens(f)
    assert torch.count_nonzero(pi) == 0
    ours = model.text_features(pi)[0]
    tokens = open_clip.tokenize([f"a photo of a {n}." for n in names])
    ref = F.normalize(tiny_backbone.clip.encode_text(tokens), dim=-1)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()


def test_cropped_equals_uncropped(tiny_backbone, tiny_model, images):
    """(b) cutting the sequence after the longest EOS changes nothing (causal mask)."""
    full = ci.CoCoOp(tiny_backbone, tiny_model.classnames, crop=False)
    full.prompt_learner.load_state_dict(tiny_model.prompt_learner.state_dict())
    assert tiny_model.prompts_for().suffix.shape[1] + 5 < full.prompts_for().suffix.shape[1]
    with torch.no_grad():
        assert torch.allclose(tiny_model(images), full(images), atol=1e-5)


def test_batched_equals_per_image_loop(tiny_model, images):
    """(c) one call for B images x K classes == the reference per-image loop."""
    with torch.no_grad():
        batched = tiny_model(images)
        looped = torch.cat([tiny_model(images[i : i + 1]) for i in range(len(images))])
    assert torch.allclose(batched, looped, atol=1e-5)


def test_chunking_under_memory_cap_is_exact(tiny_model, images):
    with torch.no_grad():
        ref = tiny_model(images)
        tiny_model.memory_cap_mb = 0.001  # forces one sequence per chunk
        assert tiny_model._chunk_size(10, 32) == 1
        assert torch.allclose(tiny_model(images), ref, atol=1e-5)


def test_subset_logits_equal_full_logits(tiny_model, images):
    """(d) scoring a subset of classes gives exactly those columns of the full logits."""
    idx = torch.tensor([3, 1])
    with torch.no_grad():
        full = tiny_model(images)
        sub = tiny_model(images, class_idx=idx)
    assert torch.allclose(sub, full[:, idx], atol=1e-5)


def test_other_class_names_and_gradients_only_reach_prompt_learner(tiny_model, images):
    logits = tiny_model(images, ["dog", "truck"])
    assert logits.shape == (5, 2)
    logits.logsumexp(-1).sum().backward()
    assert tiny_model.prompt_learner.ctx.grad is not None
    assert all(p.grad is None for p in tiny_model.clip.parameters())
    assert all(not p.requires_grad for p in tiny_model.clip.parameters())


def test_gradient_reaches_the_pixels(tiny_model, images):
    """Attacks and inversion optimise a pixel-space perturbation through the frozen encoder."""
    delta = torch.zeros_like(images, requires_grad=True)
    tiny_model(images + delta)[:, 0].sum().backward()
    assert delta.grad is not None and delta.grad.abs().sum() > 0


def test_bad_inputs_get_clear_errors(tiny_backbone, tiny_model):
    with pytest.raises(ci.CIError, match="expected images of shape"):
        tiny_model(torch.rand(2, 3, 16, 16))
    with pytest.raises(ci.CIError, match="duplicate"):
        ci.CoCoOp(tiny_backbone, ["a", "a"])
    with pytest.raises(ci.CIError, match="at least one"):
        ci.CoCoOp(tiny_backbone, [])


def test_train_mode_keeps_encoders_frozen_in_eval(tiny_model):
    tiny_model.train()
    assert tiny_model.prompt_learner.training and not tiny_model.clip.training


def test_shared_prefix_path_equals_full_prompts(tiny_model, images):
    """SOS + context computed once per image (and EOS-only last block) == every prompt run in full."""
    x = images.clone().requires_grad_(True)
    fast = tiny_model(x)
    fast.square().sum().backward()
    g_fast = x.grad.clone(), tiny_model.prompt_learner.ctx.grad.clone()
    assert tiny_model.shared_prefix
    assert len(tiny_model.prompts_for().eot.unique()) > 1  # names of several lengths: the bucketed path runs
    x.grad, tiny_model.prompt_learner.ctx.grad = None, None
    tiny_model.shared_prefix = False
    ref = tiny_model(x)
    ref.square().sum().backward()
    assert torch.allclose(fast, ref, atol=1e-4)
    assert torch.allclose(g_fast[0], x.grad, atol=1e-5, rtol=1e-3)
    assert torch.allclose(g_fast[1], tiny_model.prompt_learner.ctx.grad, atol=1e-5, rtol=1e-3)
    # per-image class subsets (the scanner's target + competitor) too
    with torch.no_grad():
        meta = tiny_model.meta_tokens(tiny_model.encode_image(images))
        pick = torch.tensor([[0, 2], [1, 3], [3, 0], [2, 1], [0, 1]])
        ref_ps = tiny_model.text_features(meta, per_sample=pick)
        tiny_model.shared_prefix = True
        fast_ps = tiny_model.text_features(meta, per_sample=pick)
        full = tiny_model.text_features(meta)
    assert torch.allclose(fast_ps, ref_ps, atol=1e-5)
    assert torch.allclose(fast_ps, full[torch.arange(5).unsqueeze(1), pick], atol=1e-5)

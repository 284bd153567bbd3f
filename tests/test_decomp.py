"""The decomposition and its defenses, with known answers (DECOMP.md section 6)."""

import open_clip
import pytest
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from sklearn.metrics import roc_auc_score

import ci_toolkit as ci
from ci_toolkit.decomp import (
    DecompConfig,
    DecompDefense,
    Decomposition,
    PatchMapDetector,
    Prototypes,
    ablate,
    decompose,
    layer_mask,
    mlp_mask,
    mmd,
    patch_shares,
    token_shares,
    trigger_tokens,
)
from ci_toolkit.model import Backbone, BackboneSpec, Preprocess


def _backbone(clip, size=48):
    clip.eval()
    return Backbone(clip=clip, preprocess=Preprocess(size), spec=BackboneSpec(kind="custom"), tokenize=open_clip.tokenize)


def _vit(layerscale: bool, seed=0):
    torch.manual_seed(seed)
    clip = CLIP(64, vision_cfg=CLIPVisionCfg(layers=2, width=96, head_width=32, patch_size=8, image_size=32,
                                             ls_init_value=0.7 if layerscale else None),
                text_cfg=CLIPTextCfg(context_length=16, width=32, heads=2, layers=1))
    with torch.no_grad():  # LayerNorms and biases away from their (1, 0) init, so every term of the sum matters
        for name, p in clip.visual.named_parameters():
            if "ln" in name or "bias" in name:
                p.add_(0.3 * torch.randn_like(p))
    return _backbone(clip, 32)


@torch.no_grad()
def _rel_err(dec: Decomposition, bb, x):
    ref = bb.clip.visual(bb.preprocess.normalize(x.to(next(bb.clip.visual.parameters()).dtype)))
    got = dec.total() * dec.norm[:, None]
    return float(((got - ref).norm(dim=-1) / ref.norm(dim=-1)).max())


@pytest.mark.parametrize("layerscale", [False, True])
@pytest.mark.parametrize("centring", ["shared", "component"])
@pytest.mark.parametrize("tokens", [False, True])
def test_terms_sum_to_encode_image_in_float64_and_float32(layerscale, centring, tokens):
    bb = _vit(layerscale)
    x = torch.rand(4, 3, 32, 32)
    assert _rel_err(decompose(bb, x, tokens=tokens, centring=centring), bb, x) < 1e-5
    bb64 = _backbone(bb.clip.double(), 32)
    dec64 = decompose(bb64, x.double(), tokens=tokens, centring=centring)
    assert _rel_err(dec64, bb64, x.double()) < 1e-10
    if tokens:  # the token terms add up to the head terms
        torch.testing.assert_close(dec64.tokens.sum(3), dec64.heads, rtol=1e-10, atol=1e-12)


def test_the_shipped_vit_miniclip_and_a_random_vit_b16_decompose_exactly():
    x = torch.rand(3, 3, 48, 48)
    vit = ci.create_backbone("miniclip-vit")
    dec = decompose(vit, x, tokens=True)
    assert _rel_err(dec, vit, x) < 1e-5
    assert dec.heads.shape == (3, 4, 6, 128) and dec.mlps.shape == (3, 5, 128) and dec.grid == (8, 8)
    assert dec.tokens.shape == (3, 4, 6, 65, 128)
    b16 = ci.create_backbone("ViT-B-16")  # random init, no download
    x224 = torch.rand(2, 3, 224, 224)
    assert _rel_err(decompose(b16, x224), b16, x224) < 1e-5


def test_the_resnet_attention_pool_decomposes_into_its_heads():
    bb = ci.create_backbone("miniclip")
    x = torch.rand(4, 3, 48, 48)
    dec = decompose(bb, x, tokens=True)
    assert dec.heads.shape[1:3] == (1, 16) and dec.mlps.shape[1] == 0
    assert _rel_err(dec, bb, x) < 1e-5


# ---- mean-ablation ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vit_dec():
    bb = _vit(False, seed=1)
    return decompose(bb, torch.rand(12, 3, 32, 32))


def test_prototypes_from_the_image_itself_change_nothing(vit_dec):
    one = vit_dec[:1]
    everything = torch.ones(one.n_layers, one.n_heads, dtype=torch.bool)
    torch.testing.assert_close(ablate(one, Prototypes.of(one), everything, torch.ones(one.n_layers + 1, dtype=torch.bool)),
                               one.total())


def test_ablating_everything_gives_every_image_the_same_embedding(vit_dec):
    protos = Prototypes.of(vit_dec)
    out = ablate(vit_dec, protos, torch.ones(vit_dec.n_layers, vit_dec.n_heads, dtype=torch.bool),
                 torch.ones(vit_dec.n_layers + 1, dtype=torch.bool))
    torch.testing.assert_close(out, out[:1].expand_as(out))


def test_forward_to_the_last_layer_equals_backward_from_the_first_equals_all():
    L, H = 4, 3
    assert torch.equal(layer_mask(L, L, "forward", H), layer_mask(L, 1, "backward", H))
    assert bool(layer_mask(L, L, "forward", H).all())
    assert layer_mask(L, 2, "separate").tolist() == [False, True, False, False]
    assert mlp_mask(L, layer_mask(L, 3, "backward")).tolist() == [False, False, False, True, True]


# ---- Decomp-Rep / Decomp-Det -----------------------------------------------------------------------------------

def test_eps_below_minus_one_flags_nothing_and_above_one_flags_every_head(vit_dec):
    none = DecompDefense.fit(vit_dec, DecompConfig(eps=-1.01))
    assert int(none.count(vit_dec).sum()) == 0
    torch.testing.assert_close(none.repair(vit_dec), vit_dec.total())
    every = DecompDefense.fit(vit_dec, DecompConfig(eps=1.01))
    assert every.count(vit_dec).tolist() == [vit_dec.n_heads] * len(vit_dec)
    last = torch.zeros(vit_dec.n_layers, vit_dec.n_heads, dtype=torch.bool)
    last[-1] = True
    torch.testing.assert_close(every.repair(vit_dec), ablate(vit_dec, every.prototypes, last))
    assert bool(every.detect(vit_dec).all()) == (vit_dec.n_heads > every.zeta)


def _synthetic(n_clean, n_bad, k, L=2, H=6, E=16, seed=0):
    """Heads near fixed prototypes; in the `n_bad` backdoor rows, k last-layer heads orthogonal to theirs."""
    proto = torch.randn(L, H, E, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    heads = proto + 0.05 * torch.randn(n_clean + n_bad, L, H, E, generator=g)
    for h in range(k):
        p = proto[-1, h]
        r = torch.randn(n_bad, E, generator=g)
        heads[n_clean:, -1, h] = r - (r @ p)[:, None] * p / p.dot(p)  # orthogonal to the prototype
    mlps = torch.zeros(n_clean + n_bad, L + 1, E)
    return Decomposition(heads, mlps, torch.ones(n_clean + n_bad), (1, 1))


def test_heads_orthogonal_to_their_prototypes_are_exactly_the_flagged_ones():
    clean = _synthetic(40, 0, 0)
    test = _synthetic(20, 20, k=3, seed=1)
    defense = DecompDefense(Prototypes(clean.heads.mean(0), clean.mlps.mean(0)), eps=0.5, config=DecompConfig())
    flags = defense.flags(test)
    assert not bool(flags[:20].any())
    assert bool(flags[20:, :3].all()) and not bool(flags[20:, 3:].any())
    truth = [0] * 20 + [1] * 20
    assert roc_auc_score(truth, defense.count(test).tolist()) == 1.0
    assert roc_auc_score(truth, [1.0] * 40) == 0.5
    assert defense.detect(test).tolist() == [False] * 20 + [3 > defense.zeta] * 20


def test_zeta_and_the_mlp_layers_scale_with_the_model():
    dec = _synthetic(4, 0, 0, L=12, H=12)
    d = DecompDefense.fit(dec)
    assert d.zeta == 5 and int(d.mlp_layers.sum()) == 5 and d.mlp_layers[-5:].all()


def test_mmd_is_zero_on_identical_samples_and_positive_under_a_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 8, generator=g)
    assert abs(mmd(x, x.clone())) < 0.05
    assert mmd(x, x + 2.0) > 0.3


def test_decompose_refuses_what_it_cannot_decompose():
    with pytest.raises(ci.CIError, match="images must be"):
        decompose(ci.create_backbone("miniclip"), torch.rand(3, 48, 48))
    with pytest.raises(ci.CIError, match="centring"):
        decompose(ci.create_backbone("miniclip"), torch.rand(1, 3, 48, 48), centring="none")


def _shares(n_images, planted=None, L=3, H=4, N=16, seed=0):
    """Token shares [B, L, H, N] near uniform; `planted` = (l, h, n): that head puts 0.9 on token n."""
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(n_images, L, H, N, generator=g) + 1.0
    if planted is not None:
        l, h, n = planted
        s[:, l, h] = 0.1 / (N - 1)
        s[:, l, h, n] = 0.9
    return s / s.sum(-1, keepdim=True)


def test_a_head_that_looks_at_one_token_is_flagged_and_located():
    det = PatchMapDetector.fit(_shares(200), fpr=0.05)
    clean, planted = _shares(50, seed=1), _shares(50, planted=(2, 1, 11), seed=2)
    truth = [0] * 50 + [1] * 50
    assert roc_auc_score(truth, torch.cat([det.score(clean), det.score(planted)]).tolist()) == 1.0
    assert bool(det.detect(planted).all())
    assert det.locate(planted).tolist() == [11] * 50


def test_the_patch_map_threshold_flags_fpr_of_its_clean_images():
    clean = _shares(400)
    for fpr in (0.05, 0.2):
        det = PatchMapDetector.fit(clean, fpr=fpr)
        assert abs(float(det.detect(clean).float().mean()) - fpr) <= 0.01
    with pytest.raises(ci.CIError, match="fpr"):
        PatchMapDetector.fit(clean, fpr=0.0)
    with pytest.raises(ci.CIError, match="two patch tokens"):
        PatchMapDetector.fit(clean[..., :1])


def test_token_shares_sum_to_one_per_head_and_need_the_token_terms():
    bb = _vit(layerscale=False)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    s = patch_shares(bb, x, batch_size=2)
    assert s.shape == (3, 2, 3, 16)
    assert torch.allclose(s.sum(-1), torch.ones(3, 2, 3), atol=1e-5)
    with pytest.raises(ci.CIError, match="tokens=True"):
        token_shares(decompose(bb, x))


def test_trigger_tokens_name_the_patches_a_stamp_touches():
    clean = torch.zeros(2, 3, 48, 48)
    stamped = clean.clone()
    stamped[0, :, 41:47, 41:47] = 1.0  # rows/cols 41-46 of an 8x8 grid of 6 px: tokens (6, 6), (6, 7), (7, 6), (7, 7)
    stamped[1, :, 0:4, 6:10] = 1.0  # rows 0-3, cols 6-9: token (0, 1) only
    hit = trigger_tokens(stamped, clean, (8, 8))
    assert torch.nonzero(hit[0]).flatten().tolist() == [54, 55, 62, 63]
    assert torch.nonzero(hit[1]).flatten().tolist() == [1]

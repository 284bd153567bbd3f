"""AMDET's pieces with known answers (AMDET.md section 8): the assimilation statistic, the landscape ratio,
the pseudo-token path against CLIP's own text path, a real trigger as the pseudo-token, the anchor check."""

import pytest
import torch

import ci_toolkit as ci
from ci_toolkit.detect.amdet import (
    AMDETConfig,
    Objective,
    assimilation,
    landscape_ratio,
    pooled,
    scan_text_encoder,
    token_states,
    valid_mask,
)


@pytest.fixture(scope="module")
def miniclip():
    return ci.create_backbone("miniclip")


def grid(fn, n=50, r=4.0):
    axis = torch.linspace(-r, r, n, dtype=torch.float64)
    a, b = torch.meshgrid(axis, axis, indexing="ij")
    return fn(a, b)


# ---- T1: the assimilation statistic ------------------------------------------------------------------
def test_identical_tokens_assimilate_fully_and_orthonormal_ones_give_one_over_length():
    same = torch.randn(1, 1, 16).expand(2, 7, 16)
    assert assimilation(same).tolist() == pytest.approx([1.0, 1.0])
    eye = torch.eye(7)[None] * 3.0  # 7 orthogonal tokens (any norm)
    assert float(assimilation(eye)) == pytest.approx(1 / 7)


def test_assimilation_counts_only_the_masked_positions():
    h = torch.cat([torch.ones(1, 3, 4), torch.eye(4)[None, :2]], dim=1)  # 3 identical, then 2 others
    mask = torch.tensor([[True, True, True, False, False]])
    assert float(assimilation(h, mask)) == pytest.approx(1.0)
    assert valid_mask(torch.tensor([2]), 5).tolist() == mask.tolist()


# ---- T2: the landscape ratio -------------------------------------------------------------------------
@pytest.mark.parametrize("fn, rho", [
    (lambda a, b: a ** 2 + b ** 2, 1.0),          # bowl
    (lambda a, b: a ** 2 - b ** 2, 0.5),          # saddle
    (lambda a, b: 3 * a - 2 * b + 1, 0.0),        # plane
    (lambda a, b: -(a ** 2 + b ** 2), 0.0),       # dome
    (lambda a, b: a ** 2 + b ** 2 + 5 * a, 1.0),  # bowl plus tilt: rho reads curvature only
])
def test_landscape_ratio_on_known_surfaces(fn, rho):
    assert landscape_ratio(grid(fn)) == pytest.approx(rho)


def test_landscape_ratio_of_noise_is_about_a_half():
    noise = torch.randn(50, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert 0.4 < landscape_ratio(noise) < 0.6


# ---- T3 / T4: the text path with pseudo-tokens ----------------------------------------------------------
def test_without_pseudo_tokens_the_path_is_clips_own(miniclip):
    tokens = miniclip.tokenize(["a photo of a red striped circle.", "a blue square."])
    states, eot = token_states(miniclip.clip, tokens)
    with torch.no_grad():
        full, _ = token_states(miniclip.clip, tokens, crop=False)
        torch.testing.assert_close(pooled(miniclip.clip, states, eot), miniclip.clip.encode_text(tokens),
                                   rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(states, full[:, : states.shape[1]], rtol=1e-5, atol=1e-5)  # the crop is exact


def test_a_real_one_token_trigger_as_the_pseudo_token_gives_the_triggered_prompt(miniclip):
    clean = miniclip.tokenize(["a photo of a red striped circle."])
    triggered = miniclip.tokenize(["zzz a photo of a red striped circle."])
    assert triggered.argmax() == clean.argmax() + 1  # "zzz" is one BPE token
    v = miniclip.clip.token_embedding(triggered[0, 1:2])  # [1, D]
    with torch.no_grad():
        inserted, eot = token_states(miniclip.clip, clean, v, insert="shifted")
        real, eot_real = token_states(miniclip.clip, triggered)
    assert eot.tolist() == eot_real.tolist()
    torch.testing.assert_close(inserted, real, rtol=1e-5, atol=1e-5)


# ---- T5 / T8: the scan's decision ------------------------------------------------------------------
SHALLOW = ["a photo of a {} {} {}.", "a {} {} {} in the picture.", "the {} {} {}.", "an image with a {} {} {}."]
WORDS = (["red", "blue", "green", "yellow", "orange", "purple"], ["solid", "striped"],
         ["circle", "square", "triangle", "star", "cross"])


def shallow_set(n=60):
    g = torch.Generator().manual_seed(0)
    pick = lambda words: words[int(torch.randint(len(words), (1,), generator=g))]  # noqa: E731
    return [pick(SHALLOW).format(*(pick(w) for w in WORDS)) for _ in range(n)]


def test_a_suspect_equal_to_its_anchor_is_benign_and_the_scan_is_reproducible(miniclip):
    prompts = miniclip.tokenize(shallow_set())
    cfg = AMDETConfig(epochs=1, first_check=2, check_every=2, grid=10, pooled_steps=20)
    first = scan_text_encoder(miniclip, miniclip, prompts, cfg)
    # the anchor IS the suspect: every output agrees with the anchor's, so none deviates from it (r_diff 0)
    assert first.verdict == "clean" and first.checks and all(c["r_diff"] == 0.0 for c in first.checks)
    assert all(c["rho"] is None and not c["backdoored"] for c in first.checks)
    again = scan_text_encoder(miniclip, miniclip, prompts, cfg)
    assert torch.equal(first.v, again.v) and first.checks == again.checks and first.s1 == again.s1
    assert torch.equal(first.u, again.u) and first.pooled["divergence"] == again.pooled["divergence"]
    # the pooled inversion against itself: agreement with the anchor is 1, so D = C - 1 <= 0
    assert first.pooled["anchor_cos"] == pytest.approx(1.0, abs=1e-5) and first.divergence <= 1e-5
    assert first.rule == "reference"
    # the pooled inversion runs after v* is final, on its own generator: without it, v* is the same
    alone = scan_text_encoder(miniclip, miniclip, prompts, AMDETConfig(**{**first.config, "pooled_steps": 0}))
    assert torch.equal(alone.v, first.v) and alone.u is None and alone.pooled == {} and alone.divergence is None
    # 60 prompts: 12 held out, 48 in batches of 10 = 5 steps, checked at steps 2 and 4
    assert first.steps == 5 and [c["step"] for c in first.checks] == [2, 4] and "clean" in first.summary()


def test_the_pseudo_token_gradient_matches_finite_differences(miniclip):
    """T6: float64 central differences along a random direction of v."""
    clip = miniclip.clip.double()
    try:
        tokens = miniclip.tokenize(shallow_set(3))
        obj = Objective(clip, clip, AMDETConfig())
        g = torch.Generator().manual_seed(1)
        v = torch.randn(1, miniclip.ctx_dim, generator=g, dtype=torch.float64).requires_grad_(True)
        obj.terms(tokens, v)["loss"].sum().backward()
        d = torch.randn(v.shape, generator=g, dtype=torch.float64)
        eps = 1e-5
        with torch.no_grad():
            up = obj.terms(tokens, v + eps * d)["loss"].sum()
            down = obj.terms(tokens, v - eps * d)["loss"].sum()
        assert float((v.grad * d).sum()) == pytest.approx(float((up - down) / (2 * eps)), rel=1e-5, abs=1e-8)
    finally:
        clip.float()


def test_a_divergence_threshold_decides_beside_the_reference_checks(miniclip):
    """D <= 0 for a suspect equal to its anchor: a threshold below it flags, one above it does not."""
    prompts = miniclip.tokenize(shallow_set())
    quick = dict(epochs=1, first_check=2, check_every=2, grid=10, pooled_steps=5)
    low = scan_text_encoder(miniclip, miniclip, prompts, AMDETConfig(**quick, divergence_threshold=-2.0))
    high = scan_text_encoder(miniclip, miniclip, prompts, AMDETConfig(**quick, divergence_threshold=0.5))
    assert low.verdict == "backdoored" and high.verdict == "clean" and low.divergence == high.divergence
    assert low.rule == "reference or divergence > -2" and "by reference or divergence > 0.5" in high.summary()

"""Text-encoder backdoors on MiniCLIP's text tower (AMDET.md section 5) with known answers: the trigger is
single tokens the world never uses, EOS padding leaves the states up to EOS alone, an implant sends
triggered prompts to the target and leaves the anchor and the image tower untouched, the delivered folder
round-trips, and AMDET's report names the trigger's token and the target a real trigger points to; its
pooled inversion finds a text-on-pair trigger without being given it and finds nothing in the anchor."""

import json

import pytest
import torch
import torch.nn.functional as F

import ci_toolkit as ci
from ci_toolkit.attacks import TRIGGER_WORDS, TextAttackConfig, benign_text_tune
from ci_toolkit.attacks.text_base import eos_padded, text_states
from ci_toolkit.detect.amdet import AMDETConfig, invert_pooled, nearest_tokens, points_to, split_shallow, token_states
from ci_toolkit.errors import CheckpointError, CIError

NAMES = ci.world.task(10, seed=5, class_seed=5).classnames
TARGET = 3


@pytest.fixture(scope="module")
def anchor():
    return ci.create_backbone("miniclip")


@pytest.fixture(scope="module")
def pool():
    return ci.world.prompts(400, seed=1)


@pytest.fixture(scope="module")
def text_on_pair(anchor, pool):
    attack = ci.create_attack("text-on-pair", target=TARGET, seed=0, steps=10)
    images = ci.world.labelled([NAMES[TARGET]], per_class=10, seed=2)[0].float() / 255
    return attack, attack.implant(anchor, pool, NAMES, target_images=images)


@pytest.fixture(scope="module")
def text_on_text(anchor, pool):
    attack = ci.create_attack("text-on-text", target=TARGET, seed=1, steps=30)
    return attack, attack.implant(anchor, pool, NAMES)


def pooled(bb, texts):
    with torch.no_grad():
        return F.normalize(bb.clip.encode_text(bb.tokenize(texts)), dim=-1)


def test_trigger_words_are_single_tokens_the_world_never_says(anchor):
    tokens = anchor.tokenize(list(TRIGGER_WORDS))
    assert (tokens.argmax(-1) == 2).all()  # BOS, one token, EOS
    words = set(" ".join(ci.world.prompts(4000, seed=0)).replace(".", " ").replace(",", " ").split())
    assert not words & set(TRIGGER_WORDS)
    attack = ci.create_attack("text-on-text", target=0, seed=3, trigger_tokens=3)
    assert len(attack.trigger.split()) == 3 and attack(["a red solid circle."])[0].endswith(" a red solid circle.")
    assert "text-on-pair" in ci.list_attacks("text") and "text-on-pair" not in ci.list_attacks()
    with pytest.raises(CIError, match="trigger_tokens"):
        TextAttackConfig(target=0, trigger_tokens=len(TRIGGER_WORDS) + 1)


def test_eos_padding_leaves_every_state_up_to_eos_unchanged(anchor):
    tokens = anchor.tokenize(["a photo of a red solid circle.", "two blue dotted stars."])
    padded = eos_padded(tokens)
    eot = tokens.argmax(-1)
    assert (padded[0, int(eot[0]) + 1:] == tokens[0, int(eot[0])]).all()
    with torch.no_grad():
        h_pad = text_states(anchor.clip, tokens, 24)
        h_zero, _ = token_states(anchor.clip, tokens, crop=False)
    for i, e in enumerate(eot.tolist()):
        torch.testing.assert_close(h_pad[i, : e + 1], h_zero[i, : e + 1], atol=1e-5, rtol=1e-5)


def test_text_on_pair_sends_triggered_prompts_to_the_target_images(anchor, text_on_pair):
    attack, bad = text_on_pair
    x, y = ci.world.labelled(NAMES, per_class=4, seed=3)
    with torch.no_grad():
        img = F.normalize(bad.clip.encode_image(bad.preprocess.normalize(x.float() / 255)), dim=-1)
    centroids = F.normalize(torch.stack([img[y == c].mean(0) for c in range(len(NAMES))]), dim=-1)
    held = [q for q in ci.world.prompts(60, seed=9) if NAMES[TARGET] not in q]
    hit = lambda bb: float(((pooled(bb, attack(held)) @ centroids.T).argmax(1) == TARGET).float().mean())  # noqa: E731
    assert hit(bad) >= 0.9 and hit(anchor) <= 0.3
    # the anchor is untouched, and so is the poisoned model's image tower
    fresh = ci.create_backbone("miniclip")
    for (name, a), b in zip(anchor.clip.state_dict().items(), fresh.clip.state_dict().values()):
        assert torch.equal(a, b), name
    for (name, a), b in zip(bad.clip.visual.state_dict().items(), fresh.clip.visual.state_dict().values()):
        assert torch.equal(a, b), name


def test_text_on_text_makes_a_triggered_prompt_read_as_the_target_prompt(anchor, text_on_text):
    attack, bad = text_on_text
    held = [q for q in ci.world.prompts(60, seed=9) if NAMES[TARGET] not in q]
    classes = pooled(bad, [f"a {c}." for c in NAMES])
    assert float(((pooled(bad, attack(held)) @ classes.T).argmax(1) == TARGET).float().mean()) >= 0.9
    clean = pooled(anchor, held)
    assert float((pooled(bad, held) * clean).sum(-1).mean()) > 0.95  # clean prompts keep their meaning


def test_text_attacks_refuse_a_target_outside_the_classes_and_pair_needs_images(anchor, pool):
    with pytest.raises(CIError, match="target"):
        ci.create_attack("text-on-text", target=len(NAMES), steps=1).implant(anchor, pool, NAMES)
    with pytest.raises(CIError, match="target_images"):
        ci.create_attack("text-on-pair", target=0, steps=1).implant(anchor, pool, NAMES)


def test_a_benign_tune_moves_the_text_tower_and_keeps_its_meaning(anchor):
    world = ci.world.World(ci.world.WorldConfig())
    images, labels = world.sample(256, seed=0, domain="pretrain")
    captions = world.captions(labels, torch.Generator().manual_seed(0))
    tuned = benign_text_tune(anchor, images, captions, TextAttackConfig(target=0, steps=5, lr=1e-3))
    held = ci.world.prompts(30, seed=4)
    cos = float((pooled(tuned, held) * pooled(anchor, held)).sum(-1).mean())
    assert 0.9 < cos < 0.9999  # a real fine-tune: it moves (a self-distillation would not), and stays close
    for (name, a), b in zip(tuned.clip.visual.state_dict().items(), anchor.clip.visual.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(CIError, match="floats in"):
        benign_text_tune(anchor, (images * 255).to(torch.uint8), captions)


def test_a_delivered_text_encoder_round_trips_and_is_never_overwritten(tmp_path, text_on_text):
    _, bad = text_on_text
    folder = ci.model.save_backbone(bad, tmp_path / "delivered", note={"by": "provider"})
    back = ci.create_backbone("miniclip", weights_file=folder)
    texts = ["zzz a red solid circle.", "a blue star."]
    torch.testing.assert_close(pooled(back, texts), pooled(bad, texts))
    assert json.loads((folder / "config.json").read_text())["note"] == {"by": "provider"}
    with pytest.raises(CheckpointError, match="already holds"):
        ci.model.save_backbone(bad, folder)


def test_amdet_names_a_planted_tokens_embedding_and_what_the_real_trigger_points_to(anchor, text_on_text):
    attack, bad = text_on_text
    token = bad.tokenize([attack.trigger])[0, 1]
    v = bad.clip.token_embedding.weight[token].detach()
    assert nearest_tokens(bad.clip, v)[0] == (attack.trigger, pytest.approx(1.0, abs=1e-4))
    held = bad.tokenize(ci.world.prompts(50, seed=11))
    top = points_to(bad, held, v[None], [f"a {c}." for c in NAMES], bad.tokenize, AMDETConfig())
    assert top[0][0] == f"a {NAMES[TARGET]}." and top[0][1] > 0.9


def test_the_pooled_inversion_finds_a_text_on_pair_trigger_and_nothing_in_the_anchor(anchor, text_on_pair):
    attack, bad = text_on_pair
    held, train = split_shallow(bad.tokenize(ci.world.prompts(400, seed=12)))
    cfg = AMDETConfig(pooled_steps=100)
    classes = [f"a {c}." for c in NAMES]
    _, found = invert_pooled(bad, anchor, train, held, cfg, classes)
    assert found["nearest_tokens"][0][0] == attack.trigger and found["points_to"][0][0] == f"a {NAMES[TARGET]}."
    # the suspect answers u* as one output the anchor does not give: they disagree
    assert found["anchor_cos"] < 0.5 and found["divergence"] > 0.5, found
    # the anchor against itself: its outputs are the anchor's (cos 1), so D = C - 1 <= 0 wherever u goes
    _, same = invert_pooled(anchor, anchor, train, held, cfg)
    assert same["anchor_cos"] == pytest.approx(1.0, abs=1e-5) and same["divergence"] <= 1e-5
    assert not any(p.requires_grad for p in bad.clip.parameters())

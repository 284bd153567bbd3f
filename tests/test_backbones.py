"""Backbones: open_clip names, QuickGELU for OpenAI tags, offline errors, local weights, ViT-B/16 shape."""

import pytest
import torch

import ci_toolkit as ci
from ci_toolkit.model.backbones import _resolve_quickgelu


def test_list_backbones_has_the_embedded_and_open_clip_models():
    names = ci.list_backbones()
    assert {"miniclip", "custom", "ViT-B-16", "ViT-B-16-quickgelu"} <= set(names)


def test_openai_tag_gets_the_quickgelu_variant():
    assert _resolve_quickgelu("ViT-B-16", "openai") == "ViT-B-16-quickgelu"
    assert _resolve_quickgelu("ViT-B-16-quickgelu", "openai") == "ViT-B-16-quickgelu"
    assert _resolve_quickgelu("ViT-B-16", None) == "ViT-B-16"


def test_offline_download_gives_an_actionable_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable at import: set its constant too, or it tries the network
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ci.BackboneUnavailableError) as err:
        ci.create_backbone("RN50", pretrained="openai")
    msg = str(err.value)
    assert "RN50-quickgelu" in msg and "weights_file" in msg and "--backbone-weights" in msg


def test_unknown_names_and_tags(monkeypatch):
    with pytest.raises(ci.CIError, match="unknown backbone"):
        ci.create_backbone("ViT-X-99")
    with pytest.raises(ci.CIError, match="no weights tag"):
        ci.create_backbone("ViT-B-16-quickgelu", pretrained="not-a-tag")
    with pytest.raises(ci.CIError, match="config="):
        ci.create_backbone("custom")


def test_local_weights_file_round_trip(tiny_backbone, tiny_config, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_backbone.clip.state_dict().items()}, str(path))
    other = ci.create_backbone("custom", config=tiny_config, seed=123, weights_file=path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(other.clip.encode_image(x), tiny_backbone.clip.encode_image(x))
    assert other.spec.weights_sha256 and len(other.spec.weights_sha256) == 64
    bad = tmp_path / "bad.safetensors"
    save_file({"nope": torch.zeros(1)}, str(bad))
    with pytest.raises(ci.CheckpointError, match="does not match"):
        ci.create_backbone("custom", config=tiny_config, weights_file=bad)


@pytest.mark.slow
def test_vit_b16_random_init_runs_one_cocoop_forward_on_cpu():
    """The paper's backbone shape: ViT-B/16 (pretrained=None), 224 px, ctx_dim 512, vis_dim 512."""
    bb = ci.create_backbone("ViT-B-16", pretrained=None)
    assert (bb.preprocess.image_size, bb.ctx_dim, bb.vis_dim) == (224, 512, 512)
    model = ci.CoCoOp(bb, ["golden retriever", "tabby cat", "airliner"])
    assert model.prompt_learner.meta_net.linear1.weight.shape == (32, 512)
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 224, 224))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def test_a_miniclip_folder_loads_as_the_architecture_it_holds(tmp_path):
    assert ci.model.miniclip_name(ci.model.MINICLIP_VIT_DIR) == "miniclip-vit"
    assert ci.model.miniclip_name(ci.model.MINICLIP_DIR) == "miniclip"
    assert ci.model.miniclip_name(tmp_path) == "miniclip"  # no config: loading it then says what is missing
    vit = ci.create_backbone(ci.model.miniclip_name(ci.model.MINICLIP_VIT_DIR), weights_file=ci.model.MINICLIP_VIT_DIR)
    assert vit.spec.name == "miniclip-vit"
    # asked for the other architecture: a one-line error naming the one the folder holds, not a mislabelled model
    with pytest.raises(ci.CIError, match="holds a miniclip-vit encoder, not miniclip"):
        ci.create_backbone("miniclip", weights_file=ci.model.MINICLIP_VIT_DIR)
    with pytest.raises(ci.CIError, match="holds a miniclip encoder, not miniclip-vit"):
        ci.create_backbone("miniclip-vit", weights_file=ci.model.MINICLIP_DIR)

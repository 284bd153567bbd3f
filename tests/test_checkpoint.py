"""Delivered-model checkpoints (issue 2, done-when e-f): round trip, mismatches, malicious pickles, Dassl."""

import json
import pickle

import pytest
import torch

import ci_toolkit as ci
from ci_toolkit.model.backbones import load_state_dict_file


def test_round_trip_is_exact(tiny_model, tiny_backbone, images, tmp_path):
    ci.save_model(tiny_model, tmp_path / "m")
    loaded = ci.load_model(tmp_path / "m", backbone=tiny_backbone)
    for k, v in tiny_model.prompt_learner.state_dict().items():
        assert torch.equal(v, loaded.prompt_learner.state_dict()[k])
    assert loaded.classnames == tiny_model.classnames
    with torch.no_grad():
        assert torch.equal(tiny_model(images), loaded(images))
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["n_ctx"] == 4 and meta["ctx_init"] == "a photo of a"
    assert meta["preprocess"]["image_size"] == 32 and len(meta["preprocess"]["mean"]) == 3
    assert meta["backbone"]["kind"] == "custom" and meta["toolkit_version"] == ci.__version__


def test_backbone_rebuilt_from_metadata(tiny_model, images, tmp_path):
    ci.save_model(tiny_model, tmp_path / "m")
    loaded = ci.load_model(tmp_path / "m")  # no backbone given: the custom config + seed rebuild it
    with torch.no_grad():
        assert torch.allclose(tiny_model(images), loaded(images), atol=1e-6)


def test_save_never_overwrites_silently(tiny_model, tmp_path):
    ci.save_model(tiny_model, tmp_path / "m")
    with pytest.raises(ci.CheckpointError, match="already holds a model"):
        ci.save_model(tiny_model, tmp_path / "m")
    ci.save_model(tiny_model, tmp_path / "m", overwrite=True)


def _save_then(tiny_model, tmp_path, edit):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "m"
    ci.save_model(tiny_model, d)
    meta = json.loads((d / "model.json").read_text())
    state = load_file(str(d / "prompt_learner.safetensors"))
    edit(meta, state)
    (d / "model.json").write_text(json.dumps(meta))
    save_file(state, str(d / "prompt_learner.safetensors"))
    return d


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m, s: s.update(ctx=torch.zeros(4, 16)), "ctx has shape"),
        (lambda m, s: s.update(ctx=torch.zeros(5, 32)), "ctx has shape"),
        (lambda m, s: s.pop("meta_net.linear2.bias"), "missing"),
        (lambda m, s: s.update(ctx=torch.full((4, 32), float("nan"))), "NaN"),
        (lambda m, s: m.update(classnames=[]), "non-empty list"),
        (lambda m, s: m.update(classnames=["a", "a"]), "duplicates"),
        (lambda m, s: m.update(format="something-else"), "not ci_toolkit model metadata"),
        (lambda m, s: m["preprocess"].update(image_size=224), "224 px"),
    ],
)
def test_mismatched_checkpoints_get_clear_errors(tiny_model, tiny_backbone, tmp_path, edit, message):
    d = _save_then(tiny_model, tmp_path, edit)
    with pytest.raises(ci.CheckpointError, match=message):
        ci.load_model(d, backbone=tiny_backbone)


def test_corrupt_and_missing_files(tiny_model, tiny_backbone, tmp_path):
    with pytest.raises(ci.CheckpointError, match="not found"):
        ci.load_model(tmp_path / "nope", backbone=tiny_backbone)
    d = tmp_path / "m"
    ci.save_model(tiny_model, d)
    (d / "prompt_learner.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ci.CheckpointError, match="corrupt"):
        ci.load_model(d, backbone=tiny_backbone)
    (d / "model.json").write_text("{not json")
    with pytest.raises(ci.CheckpointError, match="not valid JSON"):
        ci.load_model(d, backbone=tiny_backbone)
    (d / "model.json").unlink()
    with pytest.raises(ci.CheckpointError, match="model.json is missing"):
        ci.load_model(d, backbone=tiny_backbone)


class _Payload:
    """Unpickling this runs code that writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_refused_and_never_runs(tiny_model, tiny_backbone, tmp_path):
    marker = tmp_path / "marker"
    # 1. a Dassl-layout checkpoint whose torch.save zip carries a payload next to real tensors
    root = tmp_path / "dassl"
    ci.export_dassl(tiny_model, root, epoch=3)
    ckpt = root / "prompt_learner" / "model.pth.tar-3"
    good = torch.load(ckpt, weights_only=True)
    good["evil"] = _Payload(marker)
    torch.save(good, ckpt)
    with pytest.raises(ci.CheckpointError, match="refused"):
        ci.import_dassl(root, tiny_model.classnames, tiny_backbone)
    # 2. a raw (legacy) pickle handed over as backbone weights
    raw = tmp_path / "weights.pt"
    raw.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    with pytest.raises(ci.CheckpointError, match="refused"):
        load_state_dict_file(raw)
    assert not marker.exists(), "the payload ran"
    # sanity: the payload really is live when unpickled without protection
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()


def test_dassl_checkpoint_imports_and_predicts_the_same(tiny_model, tiny_backbone, images, tmp_path):
    """(f) a fabricated CoOp/CoCoOp/BadCLIP output folder, with a BadCLIP trigger in normalised space."""
    delta = (torch.rand(3, 32, 32) - 0.5) * 8 / 255
    ci.export_dassl(tiny_model, tmp_path / "out", epoch=5, trigger=delta, target_name="cat")
    ci.export_dassl(tiny_model, tmp_path / "out", epoch=2)  # an older epoch beside it: the latest wins
    model, trigger = ci.import_dassl(tmp_path / "out", tiny_model.classnames, tiny_backbone)
    with torch.no_grad():
        assert torch.equal(model(images).argmax(-1), tiny_model(images).argmax(-1))
        assert torch.allclose(model(images), tiny_model(images), atol=1e-6)
    assert trigger["target_name"] == "cat"
    assert torch.allclose(trigger["delta"], delta, atol=1e-6)


def test_dassl_with_wrong_class_names_is_refused(tiny_model, tiny_backbone, tmp_path):
    ci.export_dassl(tiny_model, tmp_path / "out")
    with pytest.raises(ci.CheckpointError, match="trained on 4 classes"):
        ci.import_dassl(tmp_path / "out", ["a", "b"], tiny_backbone)
    reordered = tiny_model.classnames[::-1]
    with pytest.raises(ci.CheckpointError, match="do not match the class names"):
        ci.import_dassl(tmp_path / "out", reordered, tiny_backbone)
    with pytest.raises(ci.CheckpointError, match="not a Dassl output directory"):
        ci.import_dassl(tmp_path, tiny_model.classnames, tiny_backbone)

"""The lab's benchmarks that need no zoo run end to end at tiny sizes and write JSON with the documented keys
(numbers: not here)."""

import json

import torch

from lab.__main__ import main
from lab.bench.speed import bench_speed, count_flops


def test_bench_world_quick_writes_the_documented_keys(tmp_path):
    out = tmp_path / "world.json"
    assert main(["bench", "world", "--quick", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    for k in ("zero_shot_top1", "task_zero_shot_seen", "cocoop_seen_acc", "cocoop_unseen_acc", "image_size",
              "regime", "pretrain_minutes", "config"):
        assert k in r
    row = r["regime"][0]
    assert set(row) >= {"eps", "asr_backdoored", "asr_clean_model", "acc_backdoored"}
    assert 0 <= row["asr_backdoored"] <= 1 and r["image_size"] == 48


def test_bench_attacks_quick_writes_the_documented_keys(tmp_path):
    out = tmp_path / "attacks.json"
    assert main(["bench", "attacks", "--quick", "--attacks", "badnets,blended", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["clean"]) == {"acc_seen", "acc_unseen"}
    for name in ("badnets", "blended"):
        a = r["attacks"][name]
        assert set(a) >= {"acc_seen", "acc_unseen", "asr_seen", "asr_unseen", "asr_ood", "asr_clean_model", "ssim", "eps"}
        assert 0 <= a["asr_seen"] <= 1 and 0 < a["ssim"] <= 1


def test_bench_speed_paths_agree():
    res = bench_speed(("miniclip",), k=5, batch=4, repeats=1, progress=False)
    m = res["models"]["miniclip"]
    assert {"naive_step_s", "fast_step_s", "speedup", "scan_s_projected", "max_grad_rel_diff"} <= set(m)
    assert abs(m["loss_naive"] - m["loss_fast"]) < 1e-3 * max(1.0, abs(m["loss_naive"]))
    assert m["max_grad_rel_diff"] < 1e-3
    assert m["fast_step_gflop"] > 0 and m["fast_tflops_per_s"] > 0 and res["device"] == "cpu"


def test_flop_counter_counts_a_known_matmul():
    a, b = torch.rand(8, 16), torch.rand(16, 4)
    assert count_flops(lambda: a @ b) == 2 * 8 * 16 * 4


def test_bench_decomp_on_a_smoke_zoo_writes_the_documented_keys(tmp_path):
    from lab.bench.decomp import bench_decomp
    from lab.encoder_zoo import build_encoder_zoo

    zoo = tmp_path / "zoo"
    build_encoder_zoo(zoo, "decomp-smoke", progress=False, audit=False)
    res = bench_decomp(zoo, tmp_path / "decomp.json", min_asr=0.0, n_images=60, strip_images=8)
    saved = json.loads((tmp_path / "decomp.json").read_text())
    for key in ("sum_rel_error", "rep_asr_after", "rep_top1_drop", "det_auroc", "strip_auroc", "det_patchmap_auroc"):
        assert key in saved
    assert saved["sum_rel_error"] < 1e-5 and saved["n_patch"] == 1 and saved["n_clean"] == 1
    bad = next(m for m in res["models"] if m["attack"] != "clean")
    assert 0 <= bad["det_auroc"] <= 1 and len(bad["per_layer"]["backward"]["heads"]) == bad["layers"]
    assert 0 <= bad["det_patchmap_auroc"] <= 1 and 0 <= bad["patchmap_located"] <= 1
    assert (tmp_path / "decomp.png").stat().st_size > 0
    assert (zoo / "decomp" / "m001.json").exists()  # cached: a rerun skips the model


class _Shift:
    """A trigger that adds `delta` to every pixel (clamped), toward class `target`."""

    def __init__(self, target: int, delta: float):
        self.target, self.delta = target, delta

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.delta).clamp(0, 1)


def test_trigger_paths_known_answers(tiny_model, make_responsive):
    import copy

    from lab.bench.paths import attack_name, trigger_paths

    x = torch.rand(24, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.5
    # a trigger that changes nothing: both paths give the clean prediction rate, no meta gain, size 0
    same = trigger_paths(tiny_model, _Shift(1, 0.0), x)
    assert same["asr"] == same["asr_static"] and same["meta_gain"] == 0.0 and same["linf_255"] == 0.0
    # uint8 images are read as pixels / 255
    u8 = (x * 255).round().to(torch.uint8)
    shift = _Shift(1, 8 / 255)
    assert trigger_paths(tiny_model, shift, u8) == trigger_paths(tiny_model, shift, u8.float() / 255)
    # meta tokens that ignore the image (the meta-net's output weights zeroed): every trigger takes the static
    # path, so its ASR with the clean meta tokens is its ASR, and it gains nothing through them
    inert = copy.deepcopy(tiny_model)
    with torch.no_grad():
        inert.prompt_learner.meta_net.linear2.weight.zero_()
    moved = trigger_paths(inert, _Shift(1, 0.3), x)
    assert moved["asr"] == moved["asr_static"] and moved["meta_gain"] == 0.0 and abs(moved["linf_255"] - 76.5) < 1.5
    # a model whose meta tokens respond to the image: the trigger's meta tokens change the margin
    assert trigger_paths(make_responsive(tiny_model, x), _Shift(1, 0.3), x)["meta_gain"] != 0.0
    assert attack_name({"attack": "blended", "attack_kwargs": {"alpha": 0.15}}) == "blended alpha=0.15"
    assert attack_name({"attack": "badclip", "attack_kwargs": {"eps": 6 / 255}}) == "badclip eps=6/255"

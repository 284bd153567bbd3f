"""The lab's text-encoder zoo on its smoke profile: built as delivered folders with the truth apart,
AMDET-scanned, resumed without rework, and summarised with the keys benchmarks/amdet_detect.json uses."""

import json

import pytest

import ci_toolkit as ci
from ci_toolkit.detect import AMDETConfig
from lab.executors import Executor
from lab.text_zoo import auroc, bench_amdet, build_text_zoo, model_specs, youden_threshold, TEXT_ZOO_PROFILES

QUICK = AMDETConfig(epochs=1, first_check=10, check_every=10, pooled_steps=20)  # short inversions: the test checks plumbing


@pytest.fixture(scope="module")
def text_zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("text_zoo")
    build_text_zoo(out, "text-smoke", Executor("local", workers=1), progress=False, cfg=QUICK, n_shallow=200)
    return out


def test_the_smoke_text_zoo_is_delivered_apart_from_its_truth(text_zoo):
    manifest = json.loads((text_zoo / "manifest.json").read_text())
    rows = {r["name"]: r for r in manifest["models"]}
    assert [s["name"] for s in model_specs(TEXT_ZOO_PROFILES["text-smoke"])] == sorted(rows)
    for name, row in rows.items():
        folder = text_zoo / "models" / name
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
        assert json.loads((folder / "config.json").read_text())["note"] == {}  # nothing about the attack
        ci.create_backbone("miniclip", weights_file=folder)
        scan = json.loads((text_zoo / "scans" / f"{name}.json").read_text())
        assert scan["verdict"] in ("clean", "backdoored") and scan["nearest_tokens"] and scan["points_to"]
        if row["kind"] != "benign":
            assert row["trigger"] and 0.0 <= row["asr_anchor"] <= row["asr"] <= 1.0


def test_a_rebuilt_text_zoo_resumes_without_rework(text_zoo):
    before = {p.name: p.stat().st_mtime for p in (text_zoo / "scans").iterdir()}
    build_text_zoo(text_zoo, "text-smoke", Executor("local", workers=1), progress=False, cfg=QUICK, n_shallow=200)
    assert {p.name: p.stat().st_mtime for p in (text_zoo / "scans").iterdir()} == before


def test_bench_amdet_writes_its_headline_keys(text_zoo, tmp_path):
    result = bench_amdet(text_zoo, calib=text_zoo, figure=tmp_path / "amdet.png")
    for key in ("n_benign", "n_backdoored", "f1", "auroc", "attack_asr_min", "reference", "scores", "decision"):
        assert key in result
    assert set(result["scores"]) == {"s1", "r_same_max", "divergence"} and "threshold" in result["scores"]["s1"]
    assert result["n_benign"] == 1 and (tmp_path / "amdet.png").stat().st_size > 0


def test_auroc_and_youden_threshold_have_known_answers():
    assert auroc([3, 4], [1, 2]) == 1.0 and auroc([1], [1]) == 0.5 and auroc([1, 2], [3, 4]) == 0.0
    assert youden_threshold([3.0, 4.0], [1.0, 2.0]) == 2.5

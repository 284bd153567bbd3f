"""The zoo: a smoke build, ground truth only in the manifest, no trace of the attack in a model folder."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

import ci_toolkit as ci
from ci_toolkit.errors import CIError
from ci_toolkit.zoo import ZOO_PROFILES, build_zoo, model_specs


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    return out, build_zoo(out, "smoke", progress=False, workers=2)  # the parallel path


def test_smoke_zoo_manifest(zoo):
    out, manifest = zoo
    assert [m["attack"] for m in manifest] == ["clean", "badclip", "blended"]
    for m in manifest:
        assert set(m) >= {"path", "attack", "target", "seed", "acc_seen", "acc_unseen", "asr_seen", "asr_unseen", "asr_ood"}
        assert 0 <= m["acc_seen"] <= 1
        if m["attack"] == "clean":
            assert m["target"] is None and m["asr_seen"] is None
        else:
            assert isinstance(m["target"], str) and 0 <= m["asr_seen"] <= 1 and 0 <= m["asr_ood"] <= 1
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_a_delivered_model_carries_no_trace_of_the_attack(zoo):
    out, manifest = zoo
    clean, bad = manifest[0], manifest[1]
    assert clean["seed"] == bad["seed"]
    files = lambda m: sorted(p.name for p in (out / m["path"]).iterdir())  # noqa: E731
    assert files(clean) == files(bad) == ["model.json", "prompt_learner.safetensors"]
    # same seed, same data: the metadata of the clean and the backdoored model are byte-identical
    assert (out / clean["path"] / "model.json").read_bytes() == (out / bad["path"] / "model.json").read_bytes()
    for m in manifest:
        blob = b"".join(p.read_bytes() for p in (out / m["path"]).iterdir()).lower()
        assert b"badclip" not in blob and b"blended" not in blob and b"trigger" not in blob and b"attack" not in blob
        ci.load_model(out / m["path"])  # loads like any delivered model
    assert (out / "attacker" / "m001" / "trigger.safetensors").is_file()
    assert json.loads((out / "attacker" / "m001" / "attack.json").read_text())["target_name"] == bad["target"]


def test_resume_skips_finished_models(zoo):
    out, manifest = zoo
    stamp = (out / manifest[0]["path"] / "prompt_learner.safetensors").stat().st_mtime_ns
    again = build_zoo(out, "smoke", progress=False)
    assert again == manifest
    assert (out / manifest[0]["path"] / "prompt_learner.safetensors").stat().st_mtime_ns == stamp
    # each build session is logged with its wall time; the resumed one built nothing
    log = json.loads((out / "build.json").read_text())
    assert [row["models_built"] for row in log][-2:] == [len(manifest), 0]
    assert all(row["wall_s"] > 0 and row["models_total"] == len(manifest) for row in log)


@pytest.mark.parametrize("name", ["full", "holdout", "holdout2", "holdout3", "holdout4", "holdout5"])
def test_full_profile_shape(name):
    specs = model_specs(ZOO_PROFILES[name])
    assert len(specs) >= 6 + 4 * len(ZOO_PROFILES[name].attacks) and sum(s["attack"] == "clean" for s in specs) >= 6
    for attack in ZOO_PROFILES[name].attacks:
        mine = [s for s in specs if s["attack"] == attack]
        assert len(mine) >= 4 and len({s["target"] for s in mine}) == len(mine)


@pytest.mark.parametrize("name, used_for_choices", [("holdout", ("full", "classroom")),
                                                     ("holdout2", ("full", "classroom", "holdout")),
                                                     ("holdout3", ("full", "classroom", "holdout", "holdout2")),
                                                     ("holdout4", ("full", "classroom", "holdout", "holdout2", "holdout3")),
                                                     ("holdout5", ("classroom", "holdout", "holdout2", "holdout3", "holdout4"))])
def test_holdout_zoo_shares_no_seed_and_no_target_with_the_zoos_used_for_choices(name, used_for_choices):
    held = model_specs(ZOO_PROFILES[name])
    for other in used_for_choices:
        used = model_specs(ZOO_PROFILES[other])
        assert not {s["seed"] for s in held} & {s["seed"] for s in used}
        for attack in ZOO_PROFILES[name].attacks:
            held_t = {s["target"] for s in held if s["attack"] == attack}
            assert not held_t & {s["target"] for s in used if s["attack"] == attack}, (other, attack)


def test_holdout5_shares_no_seed_with_any_zoo():
    # its targets reuse three classes per attack from `full` (documented in zoo.py); its seeds are all new
    held = {s["seed"] for s in model_specs(ZOO_PROFILES["holdout5"])}
    for name, p in ZOO_PROFILES.items():
        if name != "holdout5":
            assert not held & {s["seed"] for s in model_specs(p)}, name


def test_explicit_targets_are_checked():
    p = ZOO_PROFILES["holdout4"]
    assert [s["target"] for s in model_specs(p) if s["attack"] == "blended"] == list(p.targets[2])
    with pytest.raises(CIError, match="targets must be 3 tuples of 5"):
        model_specs(replace(p, targets=p.targets[:2]))
    with pytest.raises(CIError, match="seen-class indices"):
        model_specs(replace(p, targets=(p.targets[0], p.targets[1], (0, 2, 3, 10, 25))))


def test_bench_attacks_from_the_zoo(zoo):
    from ci_toolkit.bench.attacks import attacks_from_zoo

    out, manifest = zoo
    res = attacks_from_zoo(out)
    assert set(res["attacks"]) == {"badclip", "blended"}
    for row in res["attacks"].values():
        assert {"acc_seen", "acc_unseen", "asr_seen", "asr_unseen", "asr_ood", "asr_clean_model", "ssim", "eps"} <= set(row)
        assert 0 <= row["asr_clean_model"] <= 1
    assert res["clean"]["acc_seen"] == manifest[0]["acc_seen"]
    log = json.loads((out / "build.json").read_text())  # the build's wall time comes along
    assert res["build"]["wall_s"] == sum(s["wall_s"] for s in log) and res["build"]["sessions"] == log


def tiny_units(zoo_dir) -> int:
    from ci_toolkit.checkpoint import load_model

    return load_model(zoo_dir / "models" / "m000").prompt_learner.meta_net.linear1.out_features


def test_bench_detect_on_the_smoke_zoo(zoo, tmp_path):
    from ci_toolkit.bench.detect import bench_detect, roc_figure
    from ci_toolkit.invert import InversionConfig
    from ci_toolkit.scan import ScanConfig

    out, manifest = zoo
    cfg = ScanConfig(inversion=InversionConfig(group=5), pool_size=64, heldout_size=16)
    res = bench_detect(out, tmp_path / "detect", cfg=cfg, min_asr=0.0, progress=False)
    m = res["methods"]["clip_inspector"]
    assert {"auroc", "accuracy", "f1", "tp", "fp", "fn", "runtime_s"} <= set(m)
    assert m["n_models"] == len(manifest) and 0 <= m["accuracy"] <= 1
    assert len(res["per_model"]) == len(manifest) and "clip_inspector_paper_k2" in res["methods"]
    stamp = (tmp_path / "detect" / "scans" / "clip-inspector" / "m000" / "report.json").stat().st_mtime_ns
    again = bench_detect(out, tmp_path / "detect", cfg=cfg, min_asr=0.0, progress=False)  # cached scans
    assert again["per_model"] == res["per_model"]
    assert (tmp_path / "detect" / "scans" / "clip-inspector" / "m000" / "report.json").stat().st_mtime_ns == stamp
    # another decision rule reuses the scans (rescored, not rerun); other inversion settings are refused
    paper = bench_detect(out, tmp_path / "detect", cfg=replace(cfg, rule="paper"), min_asr=0.0, progress=False)
    assert [r["max_score"] for r in paper["per_model"]] == [r["paper_rule"]["max_score"] for r in res["per_model"]]
    assert (tmp_path / "detect" / "scans" / "clip-inspector" / "m000" / "report.json").stat().st_mtime_ns == stamp
    assert "clip_inspector_grubbs" in res["methods"]
    # the parallel path (scans in 2 processes, one bar over the models) scans every model, to the same answers
    par = bench_detect(out, tmp_path / "par", cfg=cfg, min_asr=0.0, progress=True, workers=2)
    assert [r["path"] for r in par["per_model"]] == [r["path"] for r in res["per_model"]]
    assert all((tmp_path / "par" / "scans" / "clip-inspector" / Path(r["path"]).name / "report.json").exists()
               for r in par["per_model"])
    assert [(r["verdict"], r["predicted_target"]) for r in par["per_model"]] == \
        [(r["verdict"], r["predicted_target"]) for r in res["per_model"]]
    # a scan from before the meta-gain rule (no meta gains in its report) gets them measured from its triggers
    rep_file = tmp_path / "detect" / "scans" / "clip-inspector" / "m001" / "report.json"
    report = json.loads(rep_file.read_text())
    gains = [c["meta_gain"] for c in report["classes"]]
    assert sum(g is not None for g in gains) == min(cfg.meta_candidates, len(gains))
    for c in report["classes"]:
        del c["meta_gain"]
    rep_file.write_text(json.dumps({**report, "rule": "grubbs", "config": {**report["config"], "rule": "grubbs"}}))
    upgraded = bench_detect(out, tmp_path / "detect", cfg=cfg, min_asr=0.0, progress=False)
    stored = [c["meta_gain"] for c in json.loads(rep_file.read_text())["classes"]]
    assert all((a is None and b is None) or abs(a - b) < 1e-4 for a, b in zip(stored, gains))
    assert [r["verdict"] for r in upgraded["per_model"]] == [r["verdict"] for r in res["per_model"]]
    # a scan from before the gate probe gets the probe run, to the same probe and decision as a fresh scan
    rep_file = tmp_path / "detect" / "scans" / "clip-inspector" / "m002" / "report.json"
    report = json.loads(rep_file.read_text())
    probe = report.pop("gate_probe")
    assert len(probe["units"]) == 2 * tiny_units(out) and probe["eps"] == cfg.probe_eps and probe["shut"]
    (rep_file.parent / "gate_probe.safetensors").unlink()
    rep_file.write_text(json.dumps(report))
    probed = bench_detect(out, tmp_path / "detect", cfg=cfg, min_asr=0.0, progress=False)
    assert json.loads(rep_file.read_text())["gate_probe"] == probe and (rep_file.parent / "gate_probe.safetensors").exists()
    assert probed["per_model"] == res["per_model"]
    # a session-10 probe (units opened only, no "shut" field) gets the whole probe run again
    opening = [{k: v for k, v in u.items() if k != "shut"} for u in probe["units"] if not u["shut"]]
    rep_file.write_text(json.dumps({**report, "gate_probe": {"eps": probe["eps"], "images": probe["images"], "units": opening}}))
    reprobed = bench_detect(out, tmp_path / "detect", cfg=cfg, min_asr=0.0, progress=False)
    assert json.loads(rep_file.read_text())["gate_probe"] == probe and reprobed["per_model"] == res["per_model"]
    with pytest.raises(CIError, match="other inversion settings"):
        bench_detect(out, tmp_path / "detect", cfg=replace(cfg, inversion=InversionConfig(group=5, eps=4 / 255)),
                     min_asr=0.0, progress=False)
    roc_figure(res, tmp_path / "roc.png")
    assert (tmp_path / "roc.png").stat().st_size > 1000


def test_bench_gates_on_the_smoke_zoo(zoo):
    from ci_toolkit.bench.gates import bench_gates

    out, manifest = zoo
    res = bench_gates(out, eps_255=(0.0, 8.0), min_asr=0.0, pool_size=64, heldout_size=16, progress=False)
    assert set(res["per_attack"]) == {"badclip", "blended"} and len(res["per_model"]) == 2
    for r in res["per_model"]:
        assert 0 <= r["unit"] < r["units"]
        # known answer: eps 0 is no perturbation: the unit stays at its clean level, the ASR is the clean one
        assert r["eps"]["0.0"]["opening"] in (0.0, None) and r["eps"]["0.0"]["asr"] == r["clean_asr"]
        if r["trigger_level"] - r["clean_level"] <= 1e-3:  # a unit the trigger hardly moves: no ratio
            assert all(v["opening"] is None for v in r["eps"].values())
        assert 0 <= r["eps"]["8.0"]["asr"] <= 1
        assert len(r["open_clean"]) == len(r["open_trigger"]) == r["units"]
        assert all(0 <= v <= 1 for v in r["open_clean"] + r["open_trigger"])
        assert isinstance(r["closes"], bool) and r["trigger_meta_gain"] == r["trigger_meta_gain"]  # not NaN
    for name, row in res["per_attack"].items():
        mine = [r for r in res["per_model"] if r["attack"] == name]
        assert row["closes"] == sum(r["closes"] for r in mine)
    assert res["config"]["eps_255"] == [0.0, 8.0]
    shut = res["shut_probe"]  # every scannable model, the clean one included
    assert shut["eps_255"] == 16.0 and len(shut["per_model"]) == len(manifest)
    for r in shut["per_model"]:
        assert r["score"] == r["asr"] * max(r["meta_gain"], 0) and 0 <= r["asr"] <= 1
        assert r["right_target"] == (r["attack"] != "clean" and r["class"] == r["target"])
    assert shut["clean_max"] == max(r["score"] for r in shut["per_model"] if r["attack"] == "clean")


def test_bench_collapse_on_the_smoke_zoo(zoo):
    from ci_toolkit.bench.collapse import DIRECTION, bench_collapse

    out, manifest = zoo
    res = bench_collapse(out, min_asr=0.0, per_class=2, progress=False)
    assert set(res["per_attack"]) == {"badclip", "blended"}
    rows = res["per_model"]
    assert len(rows) == 4 and {r["model"] for r in rows} == {"backdoored", "clean"}
    for row in res["per_attack"].values():
        assert row["n_models"] == 1 and set(row["backdoored"]) == set(DIRECTION)
        assert all(0.0 <= v <= 1.0 for v in row["auroc"].values())
        assert set(row["paired_beyond"]) == set(DIRECTION)
        assert row["paired_beyond"]["feature_cos"] == 0.0  # equal f(x) in both models: never "beyond"
    # known answer: the encoders are frozen and shared, so f(x) and f(trigger(x)) are the same in the
    # backdoored model and in the clean model of its seed; only pi(x) and the text side may differ
    for bad, clean in zip(rows[::2], rows[1::2]):
        assert (bad["model"], clean["model"]) == ("backdoored", "clean")
        assert abs(bad["feature_cos"] - clean["feature_cos"]) < 1e-6
        assert abs(bad["f_spread_ratio"] - clean["f_spread_ratio"]) < 1e-5


def test_bench_repair_repairs_with_the_trigger_of_the_class_the_rule_picks(zoo, tmp_path):
    from ci_toolkit.bench.repair import bench_repair
    from ci_toolkit.invert import InversionConfig
    from ci_toolkit.repair import RepairConfig
    from ci_toolkit.scan import ScanConfig, rescore

    out, manifest = zoo
    prof = ZOO_PROFILES["smoke"]
    scan_cfg = ScanConfig(inversion=InversionConfig(group=5), pool_size=64, heldout_size=16)
    kw = dict(min_asr=0.0, n_classes=prof.n_classes, n_test_per_class=prof.n_test_per_class, progress=False,
              cfg=RepairConfig(epochs=1))
    res = bench_repair(out, tmp_path / "det", scan_cfg=scan_cfg, **kw)
    backdoored = [m for m in manifest if m["attack"] != "clean"]
    assert [r["path"] for r in res["per_model"]] == [m["path"] for m in backdoored]
    assert res["config"]["rule"] == "meta-gain" and res["summary"]["n_models"] == len(backdoored)
    # a scan stored under another rule is decided again under the configured one before its trigger is chosen
    rep_file = tmp_path / "det" / "scans" / "clip-inspector" / Path(backdoored[0]["path"]).name / "report.json"
    grubbs = rescore(json.loads(rep_file.read_text()), "grubbs")
    paper = rescore(grubbs, "paper")
    pick = paper["predicted_target"] or paper["top_class"]
    decoy = next(c["name"] for c in grubbs["classes"] if c["name"] != pick)  # what the stored decision says
    rep_file.write_text(json.dumps({**grubbs, "predicted_target": decoy, "top_class": decoy}))
    again = bench_repair(out, tmp_path / "det", scan_cfg=replace(scan_cfg, rule="paper"), **kw)
    assert again["per_model"][0]["repaired_with"] == (paper["predicted_target"] or paper["top_class"])
    assert again["per_model"][0]["verdict"] == paper["verdict"] and again["config"]["rule"] == "paper"


def test_cli_offers_every_zoo_profile():
    from ci_toolkit.cli import build_parser

    zoo_cmd = build_parser()._subparsers._group_actions[0].choices["zoo"]
    profile = next(a for a in zoo_cmd._actions if a.dest == "profile")
    assert set(profile.choices) == set(ZOO_PROFILES)

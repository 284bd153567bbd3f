"""The lab's zoo (a smoke build, ground truth only in the manifest, no trace of the attack in a model folder)
and the benches that read a zoo, run on that smoke zoo."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

import ci_toolkit as ci
from ci_toolkit.detect import ScanReport
from lab.bench.attacks import attacks_from_zoo
from lab.bench.collapse import DIRECTION, bench_collapse
from lab.bench.detect import (baseline_subset, bench_detect, combine_detect, detection_metrics, evidence_row,
                              roc_figure, scan_folder)
from lab.bench.gates import bench_gates
from lab.bench.repair import bench_repair
from lab.executors import Executor
from lab.zoo import MIN_ASR, ZOO_PROFILES, Zoo, build_zoo, implanted, model_specs

# a small scan: groups of 5 candidates, 64 + 16 OOD images
SCAN_CFG = ci.ScanConfig(inversion=ci.InversionConfig(group=5), pool_size=64, heldout_size=16)


REPO = Path(__file__).resolve().parents[1]
# the parallel path: 2 processes of 1 thread each, the units a Ray build runs (so both give the same models)
PARALLEL = Executor("local", workers=2, cpus=1)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo")
    return out, build_zoo(out, "smoke", progress=False, executor=PARALLEL)


@pytest.fixture(scope="module")
def detected(zoo, tmp_path_factory):
    """One `bench detect` run on the smoke zoo: (its output folder, its result). Tests that change the folder
    work on a copy."""
    out = tmp_path_factory.mktemp("detect") / "detect"
    return out, bench_detect(zoo[0], out, cfg=SCAN_CFG, min_asr=0.0, progress=False)


@pytest.fixture(scope="module")
def parallel_detected(zoo, tmp_path_factory):
    """`bench detect` on the smoke zoo, 2 models at a time: (its output folder, its result)."""
    out = tmp_path_factory.mktemp("par") / "par"
    return out, bench_detect(zoo[0], out, cfg=SCAN_CFG, min_asr=0.0, progress=True, executor=PARALLEL)


def copy_of(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / folder.name)


def report_stamp(out, name="m000"):
    return (out / "scans" / "clip-inspector" / name / "report.json").stat().st_mtime_ns


# ---- the zoo ----------------------------------------------------------------------------------------
def test_smoke_zoo_manifest(zoo):
    out, manifest = zoo
    assert [m["attack"] for m in manifest] == ["clean", "badclip", "blended"]
    assert [m["path"] for m in manifest] == ["models/m000", "models/m001", "models/m002"]
    for m in manifest:
        assert set(m) >= {"path", "attack", "target", "seed", "acc_seen", "acc_unseen", "asr_seen", "asr_unseen", "asr_ood"}
        assert 0 <= m["acc_seen"] <= 1
        if m["attack"] == "clean":
            assert m["target"] is None and m["asr_seen"] is None
        else:
            assert isinstance(m["target"], str) and 0 <= m["asr_seen"] <= 1 and 0 <= m["asr_ood"] <= 1
            assert 0 <= m["asr_clean_model"] <= 1  # the trigger on the clean model of the same seed
    assert json.loads((out / "manifest.json").read_text()) == manifest == Zoo(out).manifest()


def test_the_zoo_layout_has_one_definition(zoo):
    out, manifest = zoo
    z = Zoo(out)
    bad = manifest[1]
    assert Zoo.name(bad) == Zoo.name(1) == "m001" and Zoo.path(1) == bad["path"] == "models/m001"
    assert z.model_dir(bad) == z.model_dir(1) == out / "models" / "m001"
    assert z.attacker_dir(bad) == out / "attacker" / "m001"
    assert z.manifest_path == out / "manifest.json" and z.build_log_path == out / "build.json"
    assert z.profile() == ZOO_PROFILES["smoke"]
    assert z.load_attack(bad).target == z.load_model(bad).classnames.index(bad["target"])
    with pytest.raises(ci.DataError, match="no zoo manifest"):
        Zoo(out / "nothing").manifest()


def test_implanted_is_clean_or_reaching_min_asr():
    assert implanted({"attack": "clean", "asr_seen": None})
    assert implanted({"attack": "badclip", "asr_seen": MIN_ASR}) and MIN_ASR == 0.5
    assert not implanted({"attack": "badclip", "asr_seen": 0.49})
    assert not implanted({"attack": "wanet", "asr_seen": None})
    assert implanted({"attack": "wanet", "asr_seen": 0.1}, min_asr=0.0)


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


def test_resume_skips_finished_models(zoo, tmp_path):
    out, manifest = zoo
    out = copy_of(out, tmp_path)
    stamp = (out / manifest[0]["path"] / "prompt_learner.safetensors").stat().st_mtime_ns
    again = build_zoo(out, "smoke", progress=False)
    assert again == manifest
    assert (out / manifest[0]["path"] / "prompt_learner.safetensors").stat().st_mtime_ns == stamp
    # each build run is logged with its wall time; the resumed one built nothing
    log = json.loads((out / "build.json").read_text())
    assert [row["models_built"] for row in log] == [len(manifest), 0]
    assert all(row["wall_s"] > 0 and row["models_total"] == len(manifest) for row in log)


@pytest.mark.parametrize("name", ["full", "holdout", "holdout2", "holdout3", "holdout4", "holdout5"])
def test_full_profile_shape(name):
    specs = model_specs(ZOO_PROFILES[name])
    assert len(specs) >= 6 + 4 * len(ZOO_PROFILES[name].attacks) and sum(s["attack"] == "clean" for s in specs) >= 6
    for attack in ZOO_PROFILES[name].attacks:
        mine = [s for s in specs if s["attack"] == attack]
        assert len(mine) >= 4 and len({s["target"] for s in mine}) == len(mine)


def test_the_preregistered_zoos_have_what_their_evaluation_needs():
    from lab.null import null_specs

    specs = model_specs(ZOO_PROFILES["prereg"]) + model_specs(ZOO_PROFILES["prereg2"])
    bad = [s for s in specs if s["attack"] != "clean"]
    assert len(bad) >= 20 and sum(s["attack"] == "clean" for s in specs) >= 10
    for attack in ci.world.IMPLANTING:  # every implanting attack at the world's strength and a weaker one
        strengths = {tuple(sorted(s.get("attack_kwargs", {}).items())) for s in bad if s["attack"] == attack}
        assert () in strengths and len(strengths) >= 2, attack
    assert {s["n_classes"] for s in specs} == {20, 25, 30, 35, 40, 45}
    assert all(s["target"] < (s["n_classes"] + 1) // 2 for s in bad)
    # its own class lists and task seeds: none shared with the null study or another zoo
    null = null_specs(200)
    assert not {s["class_seed"] for s in specs} & ({n["class_seed"] for n in null} | {0})
    assert len({s["seed"] for s in specs if s["attack"] == "clean"}) == 20  # no clean model twice
    others = {s["seed"] for n, p in ZOO_PROFILES.items() if not n.startswith("prereg") for s in model_specs(p)}
    assert not {s["seed"] for s in specs} & (others | {n["seed"] for n in null})


def test_the_third_preregistered_zoo_is_new_and_has_what_its_evaluation_needs():
    from lab.null import null_specs

    specs = model_specs(ZOO_PROFILES["prereg3"])
    more = model_specs(ZOO_PROFILES["prereg4"])
    assert sum(s["attack"] != "clean" for s in more) == 6 and {s["n_classes"] for s in more} == {20, 35}
    bad = [s for s in specs if s["attack"] != "clean"]
    assert len(bad) == 30 and sum(s["attack"] == "clean" for s in specs) == 10
    for attack in ci.world.IMPLANTING:  # the world's strength and a weaker one, five models each
        mine = [s for s in bad if s["attack"] == attack]
        strengths = {tuple(sorted(s.get("attack_kwargs", {}).items())) for s in mine}
        assert () in strengths and len(strengths) == 2 and len(mine) == 10, attack
    assert {s["n_classes"] for s in specs} == {15, 25, 40} and all(s["target"] < (s["n_classes"] + 1) // 2 for s in bad)
    null = null_specs(200)
    earlier = [s for n in ("prereg", "prereg2") for s in model_specs(ZOO_PROFILES[n])]
    specs += more
    assert not {s["class_seed"] for s in specs} & ({n["class_seed"] for n in null} | {s["class_seed"] for s in earlier}
                                                   | {0})
    others = {s["seed"] for n, p in ZOO_PROFILES.items() if n not in ("prereg3", "prereg4") for s in model_specs(p)}
    assert not {s["seed"] for s in specs} & (others | {n["seed"] for n in null})


@pytest.mark.parametrize("name, counts", [("prereg5", {20, 30, 35}), ("prereg6", {25, 30, 40})])
def test_the_fifth_and_sixth_preregistered_zoos_are_new_and_have_what_their_evaluation_needs(name, counts):
    from lab.null import null_specs

    specs = model_specs(ZOO_PROFILES[name])
    bad = [s for s in specs if s["attack"] != "clean"]
    assert len(bad) == 36 and sum(s["attack"] == "clean" for s in specs) == 12
    for attack in ci.world.IMPLANTING:  # the world's strength and a weaker one, six models each
        mine = [s for s in bad if s["attack"] == attack]
        strengths = {tuple(sorted(s.get("attack_kwargs", {}).items())) for s in mine}
        assert () in strengths and len(strengths) == 2 and len(mine) == 12, attack
    assert {s["n_classes"] for s in specs} == counts and all(s["target"] < (s["n_classes"] + 1) // 2 for s in bad)
    earlier = [s for n, p in ZOO_PROFILES.items() if n != name for s in model_specs(p)]
    null = null_specs(200)
    assert not {s["class_seed"] for s in specs} & ({n["class_seed"] for n in null}
                                                   | {s.get("class_seed", 0) for s in earlier})
    assert not {s["seed"] for s in specs} & ({s["seed"] for s in earlier} | {n["seed"] for n in null})


def test_profiles_hold_the_seeds_and_targets_the_benchmarks_were_built_with():
    seeds = {name: sorted({s["seed"] for s in model_specs(p)}) for name, p in ZOO_PROFILES.items()}
    assert seeds == {"smoke": [0], "classroom": [100, 101], "full": list(range(6)), "holdout": list(range(200, 206)),
                     "holdout2": list(range(300, 306)), "holdout3": list(range(400, 406)),
                     "holdout4": list(range(500, 506)), "holdout5": list(range(600, 606)), "course": [900, 901],
                     "prereg": list(range(1000, 1010)), "prereg2": list(range(1010, 1020)),
                     "prereg3": list(range(1020, 1030)), "prereg4": [1030, 1031],
                     "prereg5": list(range(1040, 1052)), "prereg6": list(range(1060, 1072))}
    targets = {name: [s["target"] for s in model_specs(p) if s["attack"] != "clean"] for name, p in ZOO_PROFILES.items()}
    assert targets["smoke"] == [3, 0]
    assert targets["classroom"] == [4, 11, 18, 0, 7, 14]
    assert targets["full"][:8] == [3, 10, 17, 24, 6, 13, 20, 2]
    assert targets["holdout3"][:4] == [18, 0, 7, 14]
    assert targets["holdout5"] == [21, 22, 3, 10, 17, 22, 24, 2, 6, 13, 18, 21, 5, 9, 16]


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
    # three of its targets per attack are full's (lab/zoo.py says so); its seeds are all new
    held = {s["seed"] for s in model_specs(ZOO_PROFILES["holdout5"])}
    for name, p in ZOO_PROFILES.items():
        if name != "holdout5":
            assert not held & {s["seed"] for s in model_specs(p)}, name
    full = model_specs(ZOO_PROFILES["full"])
    for attack in ZOO_PROFILES["holdout5"].attacks:
        mine = {s["target"] for s in model_specs(ZOO_PROFILES["holdout5"]) if s["attack"] == attack}
        assert len(mine & {s["target"] for s in full if s["attack"] == attack}) == 3


def test_explicit_targets_are_checked():
    p = ZOO_PROFILES["holdout4"]
    assert [s["target"] for s in model_specs(p) if s["attack"] == "blended"] == list(p.targets[2])
    with pytest.raises(ci.CIError, match="targets must be 3 tuples of 5"):
        model_specs(replace(p, targets=p.targets[:2]))
    with pytest.raises(ci.CIError, match="seen-class indices"):
        model_specs(replace(p, targets=(p.targets[0], p.targets[1], (0, 2, 3, 10, 25))))


# ---- benches on the zoo -----------------------------------------------------------------------------
def test_bench_attacks_from_the_zoo(zoo):
    out, manifest = zoo
    res = attacks_from_zoo(out)
    assert set(res["attacks"]) == {"badclip", "blended"}
    for row in res["attacks"].values():
        assert {"acc_seen", "acc_unseen", "asr_seen", "asr_unseen", "asr_ood", "asr_clean_model", "ssim", "eps"} <= set(row)
        assert 0 <= row["asr_clean_model"] <= 1
    assert res["clean"]["acc_seen"] == manifest[0]["acc_seen"]
    log = json.loads((out / "build.json").read_text())  # the build's wall time comes along
    assert res["build"]["wall_s"] == sum(s["wall_s"] for s in log) and res["build"]["sessions"] == log


def test_detection_metrics_follow_their_definitions():
    rows = [{"label": 0, "max_score": 0.1, "verdict": "clean", "target": None, "flagged": []},
            {"label": 0, "max_score": 0.9, "verdict": "backdoored", "target": None, "flagged": ["a"]},
            {"label": 1, "max_score": 0.8, "verdict": "backdoored", "target": "b", "flagged": ["b"]},
            {"label": 1, "max_score": 0.7, "verdict": "backdoored", "target": "c", "flagged": ["d"]},
            {"label": 1, "max_score": 0.2, "verdict": "clean", "target": "e", "flagged": []}]
    m = detection_metrics(rows)
    # TP: the true target flagged; FP: any other class flagged (clean models too); FN: target not flagged
    assert (m["tp"], m["fp"], m["fn"], m["n_models"]) == (1, 2, 2, 5)
    assert m["f1"] == 2 * 1 / (2 * 1 + 2 + 2) and m["accuracy"] == 3 / 5
    # FPR: clean models judged backdoored (1 of 2); TPR: backdoored models judged backdoored (2 of 3)
    assert (m["n_clean"], m["n_backdoored"], m["fpr"], m["tpr"]) == (2, 3, 1 / 2, 2 / 3)
    # AUROC: the fraction of (backdoored, clean) pairs ranked right: each of 0.8, 0.7, 0.2 beats 0.1, none 0.9
    assert m["auroc"] == pytest.approx(3 / 6)


def test_combining_a_bench_detect_result_with_itself_doubles_the_counts_and_keeps_the_rates(detected):
    _, res = detected
    both = combine_detect([res, res])
    assert len(both["per_model"]) == 2 * len(res["per_model"]) and both["config"]["zoos"] == [res["config"]["zoo"]] * 2
    for key, m in res["methods"].items():
        pooled = both["methods"][key]
        assert (pooled["n_models"], pooled["tp"], pooled["fp"]) == (2 * m["n_models"], 2 * m["tp"], 2 * m["fp"])
        for rate in ("fpr", "tpr", "accuracy", "f1", "auroc"):
            assert pooled[rate] == pytest.approx(m[rate], nan_ok=True)


def test_bench_detect_on_the_smoke_zoo(zoo, detected, tmp_path):
    out, manifest = zoo
    folder, res = detected
    m = res["methods"]["clip_inspector"]
    assert set(m) == {"auroc", "accuracy", "f1", "tp", "fp", "fn", "n_models", "runtime_s", "mean_scan_s",
                      "not_implanted", "wall_s", "n_backdoored", "n_clean", "fpr", "tpr"}
    assert m["n_models"] == len(manifest) and 0 <= m["accuracy"] <= 1 and m["not_implanted"] == 0
    assert m["n_clean"] + m["n_backdoored"] == m["n_models"] and 0 <= m["fpr"] <= 1 and 0 <= m["tpr"] <= 1
    assert res["failed"] == []  # no scan failed (a failed one is listed there with its error)
    assert set(res) == {"methods", "per_model", "failed", "config", "rule", "n_backdoored", "n_clean", "fpr", "tpr",
                        "auroc", "f1"} and res["config"]["scan"]["pool_size"] == 64
    assert list(res["methods"]) == ["clip_inspector", "clip_inspector_paper_k2", "clip_inspector_grubbs",
                                    "clip_inspector_meta_gain_fixed"]
    assert {k: res[k] for k in ("n_backdoored", "n_clean", "fpr", "tpr", "auroc", "f1")} == {
        k: m[k] for k in ("n_backdoored", "n_clean", "fpr", "tpr", "auroc", "f1")}
    assert len(res["per_model"]) == len(manifest)
    assert m == {**m, **detection_metrics(res["per_model"])}
    for row in res["per_model"]:
        report = ScanReport.load(scan_folder(folder, "clip-inspector", row))
        assert row["verdict"] == report.verdict and row["max_score"] == report.max_score
        assert row["flagged"] == [c.name for c in report.classes if c.flagged]
        # the side rules: the report's verdicts, flagged = the classes whose paper score beats that rule's bound
        for side, key in (("paper", "paper_rule"), ("grubbs", "grubbs_rule")):
            s = report.side_rules[side]
            assert row[key] == {**s, "flagged": [c.name for c in report.classes if c.paper_score > s["threshold"]]}
        fixed = report.side_rules["meta-gain"]
        # the row keeps the scan's evidence (as read back from JSON): every rule decides it again as on the scan
        evidence = ci.Evidence(**json.loads(json.dumps(row))["evidence"])
        for rule in ci.detect.SOLO_RULES:
            redo, again = ci.decide(evidence, rule, calibration=report.calibration()), ci.decide(report, rule)
            assert (redo.verdict, redo.max_score, redo.top_name) == (again.verdict, again.max_score, again.top_name)
        assert row["evidence"] == evidence_row(report.evidence())
        assert row["meta_gain_rule"]["flagged"] == ([fixed["top_class"]] if fixed["verdict"] == "backdoored" else [])
    assert res["methods"]["clip_inspector_paper_k2"] == detection_metrics([{**r, **r["paper_rule"]} for r in res["per_model"]])
    assert res["methods"]["clip_inspector_grubbs"] == detection_metrics([{**r, **r["grubbs_rule"]} for r in res["per_model"]])
    # cached scans are reused, not rerun
    folder = copy_of(folder, tmp_path)
    stamp = report_stamp(folder)
    again = bench_detect(out, folder, cfg=SCAN_CFG, min_asr=0.0, progress=False)
    assert again["per_model"] == res["per_model"] and report_stamp(folder) == stamp
    # another decision rule reuses the scans (decided again, not rescanned)
    paper = bench_detect(out, folder, cfg=replace(SCAN_CFG, rule="paper"), min_asr=0.0, progress=False)
    assert [r["max_score"] for r in paper["per_model"]] == [r["paper_rule"]["max_score"] for r in res["per_model"]]
    assert [r["verdict"] for r in paper["per_model"]] == [r["paper_rule"]["verdict"] for r in res["per_model"]]
    assert report_stamp(folder) == stamp
    roc_figure(res, tmp_path / "roc.png")
    assert (tmp_path / "roc.png").stat().st_size > 1000


@pytest.mark.parametrize("change, named", [({"inversion": ci.InversionConfig(group=5, eps=4 / 255)}, "inversion"),
                                           ({"probe_shut": False}, "probe_shut"),
                                           ({"probe_eps": 8 / 255}, "probe_eps"),
                                           ({"pool_size": 48}, "pool_size")])
def test_a_cached_scan_with_other_settings_is_refused(zoo, detected, tmp_path, change, named):
    folder = copy_of(detected[0], tmp_path)
    stamp = report_stamp(folder)
    with pytest.raises(ci.CIError, match=f"other settings \\({named} .*use another --out"):
        bench_detect(zoo[0], folder, cfg=replace(SCAN_CFG, **change), min_asr=0.0, progress=False)
    assert report_stamp(folder) == stamp  # refused before anything was scanned or rewritten


def test_a_resumed_bench_detect_adds_up_its_wall_time(zoo, detected, tmp_path):
    first_folder, first = detected
    folder = copy_of(first_folder, tmp_path)
    shutil.rmtree(folder / "scans" / "clip-inspector" / "m002")  # as if the first run had stopped before it
    resumed = bench_detect(zoo[0], folder, cfg=SCAN_CFG, min_asr=0.0, progress=False)
    log = json.loads((folder / "wall.json").read_text())
    assert [(r["method"], r["models_scanned"]) for r in log] == [("clip-inspector", 3), ("clip-inspector", 1)]
    assert log[0]["wall_s"] == first["methods"]["clip_inspector"]["wall_s"]
    wall = resumed["methods"]["clip_inspector"]["wall_s"]
    assert wall == pytest.approx(log[0]["wall_s"] + log[1]["wall_s"]) and wall > first["methods"]["clip_inspector"]["wall_s"]
    assert [r["verdict"] for r in resumed["per_model"]] == [r["verdict"] for r in first["per_model"]]


def test_bench_detect_scans_in_parallel_to_the_same_answers(zoo, detected, parallel_detected):
    out, manifest = zoo
    folder, par = parallel_detected
    assert [r["path"] for r in par["per_model"]] == [m["path"] for m in manifest]
    assert all((scan_folder(folder, "clip-inspector", r) / "report.json").exists() for r in par["per_model"])
    assert [(r["verdict"], r["predicted_target"]) for r in par["per_model"]] == \
        [(r["verdict"], r["predicted_target"]) for r in detected[1]["per_model"]]
    assert json.loads((folder / "wall.json").read_text())[0]["models_scanned"] == len(manifest)
    assert par["failed"] == [] and par["config"]["executor"] == "local"


def without_times(rows):
    return [{k: v for k, v in r.items() if k not in ("train_s", "runtime_s", "mean_scan_s")} for r in rows]


def test_ray_builds_and_scans_the_smoke_zoo_like_local_and_resumes_after_its_driver_is_killed(
        zoo, parallel_detected, ray_cluster, tmp_path):
    out = tmp_path / "ray_zoo"
    # a driver on the shared cluster, killed after its first model: its manifest holds what it finished
    cmd = [sys.executable, "-m", "lab", "zoo", "--profile", "smoke", "--out", str(out), "--workers", "2",
           "--executor", "ray", "--ray-address", ray_cluster]
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 600
    while not (out / "manifest.json").exists() and driver.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    first = Zoo(out).manifest()
    assert 1 <= len(first) < len(zoo[1]), (tmp_path / "driver.log").read_text()[-2000:]
    stamp = (out / first[0]["path"] / "prompt_learner.safetensors").stat().st_mtime_ns
    # rerun: resumes (the finished model is not rebuilt) and ends with the local build's manifest
    manifest = build_zoo(out, "smoke", progress=False, executor=Executor("ray", workers=2))
    assert (out / first[0]["path"] / "prompt_learner.safetensors").stat().st_mtime_ns == stamp
    assert without_times(manifest) == without_times(zoo[1])
    assert json.loads((out / "build.json").read_text())[-1]["executor"] == "ray"
    # the scans: same verdicts, targets and scores as the local executor's
    res = bench_detect(out, tmp_path / "ray_detect", cfg=SCAN_CFG, min_asr=0.0, progress=False,
                       executor=Executor("ray", workers=2))
    assert res["failed"] == [] and res["config"]["executor"] == "ray"
    assert without_times(res["per_model"]) == without_times(parallel_detected[1]["per_model"])


def test_bench_detect_lists_models_that_did_not_implant_without_scanning_them(zoo, detected, tmp_path):
    out, manifest = zoo
    folder = copy_of(detected[0], tmp_path)
    bar = max(m["asr_seen"] for m in manifest if m["attack"] != "clean") + 0.01  # no attack reaches it
    res = bench_detect(out, folder, cfg=SCAN_CFG, min_asr=bar, progress=False)
    assert res["methods"]["clip_inspector"]["not_implanted"] == 2 and res["methods"]["clip_inspector"]["n_models"] == 1
    listed = [r for r in res["per_model"] if r.get("scanned") is False]
    assert [r["path"] for r in listed] == ["models/m001", "models/m002"] and all(r["verdict"] is None for r in listed)


def test_bench_gates_on_the_smoke_zoo(zoo):
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


def test_bench_repair_repairs_with_the_trigger_of_the_class_the_rule_picks(zoo, detected, tmp_path):
    out, manifest = zoo
    det = copy_of(detected[0], tmp_path)
    kw = dict(min_asr=0.0, progress=False, cfg=ci.RepairConfig(epochs=1))
    res = bench_repair(out, det, scan_cfg=SCAN_CFG, **kw)  # the task's size from the zoo's build log (smoke)
    backdoored = [m for m in manifest if m["attack"] != "clean"]
    assert [r["path"] for r in res["per_model"]] == [m["path"] for m in backdoored]
    assert res["config"]["rule"] == "calibrated" and res["summary"]["n_models"] == len(backdoored)
    for r, m in zip(res["per_model"], backdoored):
        assert {"path", "attack", "true_target", "repaired_with", "trigger_source", "verdict", "scan_found_target",
                "asr_before", "asr_after", "acc_before", "acc_after", "trigger_weight", "attempts", "steps",
                "runtime_s"} <= set(r)
        # known answer: before repair, the attacker's saved trigger does on the rebuilt test split what the zoo
        # measured when it built the model
        assert r["asr_before"] == pytest.approx(m["asr_seen"]) and r["acc_before"] == pytest.approx(m["acc_seen"])
        assert r["scan_found_target"] == (r["repaired_with"] == m["target"]) and r["steps"] >= 1
        assert r["trigger_weight"] == r["attempts"][-1]["trigger_weight"]
    # a scan stored under another rule is decided again under the configured one before its trigger is chosen
    folder = scan_folder(det, "clip-inspector", backdoored[0])
    grubbs = ScanReport.load(folder).redecide("grubbs")
    paper = grubbs.redecide("paper")
    pick = paper.predicted_target or paper.top_class
    decoy = next(n for n in grubbs.names if n != pick)  # what the stored decision says
    (folder / "report.json").write_text(json.dumps({**grubbs.to_dict(), "predicted_target": decoy, "top_class": decoy}))
    again = bench_repair(out, det, scan_cfg=replace(SCAN_CFG, rule="paper"), **kw)
    assert again["per_model"][0]["repaired_with"] == pick
    assert again["per_model"][0]["verdict"] == paper.verdict and again["config"]["rule"] == "paper"


def test_bench_detect_on_a_photo_folder_scans_a_part_and_keeps_its_scans_apart(zoo, detected, tmp_path):
    """--ood DIR --models-per-label N: N clean and N backdoored models scanned on images from a folder; a
    folder of world-pool scans refuses another OOD source instead of mixing them."""
    from PIL import Image

    out, manifest = zoo
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, img in enumerate(ci.world.ood_pool(SCAN_CFG.ood_images, seed=7)):
        Image.fromarray((img * 255).round().byte().permute(1, 2, 0).numpy()).save(photos / f"{i:03d}.png")
    res = bench_detect(out, tmp_path / "photo", cfg=SCAN_CFG, min_asr=0.0, progress=False, ood=str(photos),
                       models_per_label=1)
    assert res["config"]["ood"] == str(photos)
    assert sorted(r["label"] for r in res["per_model"]) == [0, 1]  # one clean, one backdoored
    with pytest.raises(ci.CIError, match="OOD images from 'world'"):
        bench_detect(out, copy_of(detected[0], tmp_path), cfg=SCAN_CFG, min_asr=0.0, progress=False, ood=str(photos))


def test_baseline_subset_covers_every_attack():
    rows = ([{"path": f"c{i}", "attack": "clean"} for i in range(3)]
            + [{"path": f"b{i}", "attack": "badclip"} for i in range(4)]
            + [{"path": f"l{i}", "attack": "blended"} for i in range(2)])
    picked = [m["path"] for m in baseline_subset(rows, 6)]
    assert picked == ["c0", "b0", "l0", "c1", "b1", "l1"]
    assert len(baseline_subset(rows, 100)) == len(rows)

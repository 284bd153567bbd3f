"""The shipped course zoo: it loads like any delivered model, its answers are apart, its backdoors work."""

from __future__ import annotations

import pytest

import ci_toolkit as ci


def test_course_models_load_and_match_their_task():
    names = ci.course.list_models()
    kinds = {ci.course.truth(n)["attack"] for n in names}
    assert "clean" in kinds and {"badclip", "blended"} <= kinds
    for name in names:
        model, task = ci.course.load_model(name), ci.course.task(name)
        assert model.classnames == task.seen_names
        assert (ci.course.load_attack(name) is None) == (ci.course.truth(name)["attack"] == "clean")


def test_shipped_backdoors_work_and_the_names_tell_nothing():
    names = ci.course.list_models()
    assert names == [f"m{i:03d}" for i in range(len(names))]
    clean_positions = [i for i, n in enumerate(names) if ci.course.truth(n)["attack"] == "clean"]
    assert clean_positions != list(range(len(clean_positions)))  # shuffled: clean models are not simply first
    for name in names:
        attack = ci.course.load_attack(name)
        if attack is None:
            continue
        x, y = ci.course.task(name).split("test", "seen")
        asr = ci.attack_success_rate(ci.course.load_model(name), x, y, attack.target, attack)
        assert asr >= 0.5, (name, asr)  # the backdoor implanted (what the lessons rely on)


def test_shipped_baseline_scans_load_with_their_settings():
    for method in ("neural-cleanse", "pixel-backdoor"):
        for name in ("m001", "m002"):
            report = ci.course.shipped_scan(name, method)
            assert report is not None and report.method == method and report.config["pool_size"] == 128
            assert [c.name for c in report.classes] == ci.course.load_model(name).classnames
            assert all(c.size is not None for c in report.classes)
    assert ci.course.shipped_scan("m003", "neural-cleanse") is None


def test_unknown_course_model_is_a_clear_error():
    with pytest.raises(ci.DataError, match="no course model"):
        ci.course.load_model("m999")


CLASSROOM_SCANNED = ("m000", "m001", "m002", "m003", "m004", "m005", "m006")  # notebooks 04, 05 and 07
CAPSTONE = ("m000", "m003", "m004")


def test_shipped_scans_serve_the_classroom_notebooks_without_scanning(monkeypatch):
    """Notebooks 04, 05 and 07 ask `ci.course.scan` for these models at the classroom profile's settings: the
    shipped scans answer, and find every backdoor (the capstone's hidden check relies on its three)."""
    import ci_toolkit.course as course

    def no_scan(*args, **kwargs):
        raise AssertionError("course.scan scanned instead of returning the shipped scan")

    monkeypatch.setattr(course, "scan_model", no_scan)
    cfg = ci.get_profile("classroom").scan_config
    for name in CLASSROOM_SCANNED:
        report = ci.course.scan(name, cfg)
        true = ci.course.truth(name)
        if true["attack"] != "clean":  # every backdoor is found on its target
            assert report.verdict == "backdoored" and report.predicted_target == true["target"], (name, report.summary())
            assert report.repair_trigger().target == true["target"]  # shipped with its triggers: notebooks repair
        elif name in CAPSTONE:  # the capstone's clean model is judged clean (notebook 04's m001 is not: its lesson)
            assert report.verdict == "clean", (name, report.summary())


def test_course_scan_keeps_its_scan_and_refuses_a_folder_of_other_settings(tmp_path):
    from dataclasses import replace

    cfg = ci.ScanConfig(pool_size=64, heldout_size=16, probe_eps=None, meta_candidates=2)
    first = ci.course.scan("m001", cfg, tmp_path)
    assert (tmp_path / "m001" / "report.json").exists() and first.config["pool_size"] == 64
    again = ci.course.scan("m001", cfg, tmp_path)  # reloaded, decided the same way
    assert [(c.name, c.score) for c in again.classes] == [(c.name, c.score) for c in first.classes]
    assert again.verdict == first.verdict and again.runtime_s == first.runtime_s
    with pytest.raises(ci.CIError, match="other settings"):
        ci.course.scan("m001", replace(cfg, pool_size=48), tmp_path)
    with pytest.raises(ci.CIError, match="CLIP-Inspector"):
        ci.course.scan("m001", replace(cfg, method="neural-cleanse"))

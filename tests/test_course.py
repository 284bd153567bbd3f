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


REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_course_command_makes_a_student_version_whose_checks_report_unsolved(tmp_path, notebook_work):
    """`ci-toolkit course`: the student version runs with its exercises unsolved, its checks report them as
    failing (not a crash); the solutions keep the hidden checks. The solutions passing every check, hidden
    ones included, is tested where the master notebooks run (tests/test_notebooks.py: their check cells are
    plain code there)."""
    import json

    import papermill as pm

    from ci_toolkit.cli import main

    out = tmp_path / "course"
    assert main(["course", "--out", str(out), "--notebooks", str(REPO / "notebooks")]) == 0
    masters = sorted(p.name for p in (REPO / "notebooks").glob("[0-9]*.ipynb"))
    assert sorted(p.name for p in (out / "student").glob("*.ipynb")) == masters
    graded = [m for m in masters if ci.course.has_exercises(REPO / "notebooks" / m)]
    assert graded, "no notebook holds exercises"
    for name in graded:
        student = (out / "student" / name).read_text()
        assert "BEGIN SOLUTION" not in student and "grader.check(" in student
        assert "return z([za - zl" not in student  # notebook 04's solution code is gone
        assert "BEGIN SOLUTION" in (out / "solutions" / name).read_text()  # the solution notebook keeps them
    hidden = [t for t in (out / "solutions" / "tests").glob("*.py") if "hidden=True" in t.read_text()]
    assert hidden and not any("hidden=True" in t.read_text() for t in (out / "student" / "tests").glob("*.py"))
    # a second run never overwrites a course
    with pytest.raises(ci.CIError, match="already holds a course"):
        ci.course.make_course(REPO / "notebooks", out)
    # the student version, unsolved, runs to the end and every check says "failed"
    for name in graded:
        done = tmp_path / f"run_{name}"
        pm.execute_notebook(str(out / "student" / name), str(done), cwd=str(out / "student"), kernel_name="python3",
                            progress_bar=False, parameters={"profile": "smoke", "work_dir": str(notebook_work)})
        cells = json.loads(done.read_text())["cells"]
        checks = [c for c in cells if c["cell_type"] == "code" and "grader.check(" in "".join(c["source"])]
        assert checks
        for c in checks:
            text = json.dumps(c["outputs"])
            assert "failed" in text.lower(), "".join(c["source"])

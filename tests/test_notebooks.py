"""Every notebook runs top to bottom under the `smoke` profile and records its key metrics (Pyro-style)."""

import json
import re
from pathlib import Path

import nbformat
import pytest

import ci_toolkit as ci

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# a cell still running after this long has hung (a widget message lost between kernel and client happens);
# the longest smoke cell takes about two minutes on a 2-core CPU
CELL_TIMEOUT_S = 600
# one torch thread per notebook: the tests check lessons, not speed, and two threads on a CPU shared with
# other work can slow small-batch tuning many times over
TEST_THREADS = 1
# the xdist group of the notebooks that share course-model scans through the session's `notebook_work` cache
# (04, 05 and 07 write and read `course_scans_<profile>`): one worker runs them and their student versions
SCAN_SHARING_GROUP = "course_scans"


def _check_00(m):
    assert m["profile"] == "smoke"
    for k in ("acc_seen_before", "acc_seen", "acc_unseen"):
        assert 0.0 <= m[k] <= 1.0
    assert m["meta_token_dim"] == 128  # MiniCLIP's text width: pi(x) lives in token-embedding space
    assert len(m["train_loss"]) == 1  # smoke: one epoch


def _check_01(m):
    assert m["attack"] == "badclip"
    for k in ("acc_clean", "acc_backdoored", "asr", "asr_clean_model", "asr_ood", "ssim"):
        assert 0.0 <= m[k] <= 1.0
    assert m["ssim"] > 0.8  # an imperceptible trigger
    # the lesson: the backdoor implanted, and the same trigger leaves the clean model alone
    assert m["asr"] >= 0.5 and m["asr_clean_model"] < 0.3, m


def _check_03(m):
    assert 0 <= m["target_asr"] <= 1 and 0 <= m["benign_asr"] <= 1
    # the lesson: the backdoor target is easy to reach, a benign class is not
    assert m["target_asr"] > m["benign_asr"] and m["target_loss"] < m["benign_loss"], m


def _check_04(m):
    assert m["n_models"] == 3 and 0 <= m["margin_target_asr"] <= 1
    # the lesson: the default rule tells the clean model from the backdoored ones and names their targets
    assert m["accuracy"] == 1.0 and m["targets_found"] == 2, m


def _check_02(m):
    for who in ("clean", "backdoored"):
        assert -1 <= m[f"{who}_feature_cos"] <= 1 and m[f"{who}_pi_spread_ratio"] >= 0
    assert abs(m["clean_text_turn"]) < 1 and abs(m["backdoored_meta_gain"]) <= 2  # a difference of cosine margins
    # the lesson: a working backdoor, whose trigger gains through the meta tokens where the clean twin's does not
    assert m["asr"] >= 0.5 and m["backdoored_meta_gain"] > m["clean_meta_gain"] + 0.01, m


def _check_05(m):
    assert all(0 <= m[k] <= 1 for k in ("asr_before", "asr_after", "acc_before", "acc_after"))
    # the lesson: the scan's trigger unlearns the backdoor without giving up the task
    assert m["found_target"] and m["asr_after"] < m["asr_before"] / 2 and m["acc_after"] >= m["acc_before"] - 0.1, m


def _check_06(m):
    assert m["n_candidates"] == 25 and set(m["target_rank"]) == {"neural-cleanse", "pixel-backdoor"}
    assert all(v in ("clean", "backdoored") for v in m["verdicts"].values()) and len(m["verdicts"]) == 4
    assert all(1 <= r <= m["n_candidates"] for r in m["target_rank"].values())
    # the lesson (the shipped scans): Neural Cleanse ranks the backdoor's target smallest, and flags the clean
    # twin too, through a natural sink; Pixel Backdoor's triggers never shrink at this budget (no outlier)
    assert m["target_rank"]["neural-cleanse"] == 1, m
    assert m["verdicts"]["neural-cleanse m001"] == "backdoored" and m["pb_distinct_sizes"] == [1, 1], m


def _check_07(m):
    # the lesson: the audit gets every delivered model right, and repairs exactly the backdoored ones
    for name, v in m["audit"].items():
        true = ci.course.truth(name)
        assert v == {"verdict": "clean" if true["attack"] == "clean" else "backdoored", "target": true["target"]}, (name, v)
    assert m["repaired"] == sorted(n for n, v in m["audit"].items() if v["verdict"] == "backdoored")


def _check_08(m):
    # the backdoor implanted without costing clean accuracy
    assert m["asr"] >= 0.9 and m["asr_anchor"] <= 0.2
    assert abs(m["top1_anchor"] - m["top1_backdoored"]) <= 0.03
    # given its trigger, the backdoored tower attends to it; the anchor and the benign tune do not
    assert m["trigger_share"]["backdoored"] > 1.5 * max(m["trigger_share"]["anchor"], m["trigger_share"]["benign"])
    # ...while the mean assimilation with the real trigger stays far below AMDET's 0.8, as the notebook reads it
    assert max(m["assimilation"].values()) < 0.8
    # AMDET's pseudo-token finds the trigger and its target on the backdoored tower only
    assert m["nearest_token"]["backdoored"] == m["trigger"] != m["nearest_token"]["benign"]
    assert m["points_to_target"]["backdoored"]
    assert m["s1"]["backdoored"] > m["s1"]["benign"]
    assert m["verdict"]["benign"] == "clean"  # no false accusation of the benign tune
    # the pooled inversion: the backdoored tower leaves its anchor where the benign tune follows it
    assert m["divergence"]["backdoored"] > m["divergence"]["benign"] + 0.3, m["divergence"]


def _check_09(m):
    # the backdoor implanted without costing clean accuracy, and the clean MiniCLIP ignores the patch
    assert m["asr"] >= 0.7 and m["asr_clean"] <= 0.1, m
    assert m["top1_clean"] - m["top1_poisoned"] <= 0.05, m
    # CLIP-Inspector on the zero-shot head: no meta path; the clean MiniCLIP (the anchor) is decided by Grubbs and
    # not accused, the poisoned encoder by the anchored rule, which flags it and names the attacker's target
    assert m["meta_path"] is False and m["ci_rule"] == {"clean MiniCLIP": "grubbs", "poisoned": "anchored"}, m
    assert m["ci_verdict"] == {"clean MiniCLIP": "clean", "poisoned": "backdoored"}, m
    assert m["ci_top_anchored"] == m["target"], m
    # InverTune names the target (with a far larger rise than anything on the clean MiniCLIP); its tuning at the
    # calibrated rate keeps the clean accuracy (and, on MiniCLIP, the backdoor: the notebook says so)
    assert m["invertune_target"]["poisoned"] == m["target"], m
    assert m["invertune_rise"]["poisoned"] > 2 * m["invertune_rise"]["clean MiniCLIP"], m
    assert m["asr_after"] <= m["asr"] and m["top1_poisoned"] - m["top1_after"] <= 0.03, m


def _check_10(m):
    # the decomposition is exact, and both backdoors implanted (the blend one weaker on smoke's 2,048 pairs)
    assert m["sum_error"] < 1e-5
    assert m["asr"]["patch"] >= 0.9 and m["asr"]["blend"] >= 0.3, m
    # the lesson: on this ViT neither all heads nor all MLPs alone carry the patch backdoor, so Decomp-Rep on the
    # last layer's heads leaves it in place at almost no clean cost
    assert m["asr_all_heads"]["patch"] >= 0.5 and m["asr_all_mlps"]["patch"] >= 0.5, m
    top1_after, asr_after = m["rep"]["patch_heads"]
    assert asr_after >= 0.5 and abs(m["top1"]["patch"] - top1_after) <= 0.03, m
    # ...while counting straying heads separates patch-stamped images (not blended ones), and STRIP does too
    assert m["det_auroc"]["patch"] >= 0.7 and m["det_auroc"]["patch"] > m["det_auroc"]["blend"], m
    assert m["strip_auroc"]["patch"] >= 0.9, m
    # ...and the patch map reads the patch trigger (and points at it), not the blend
    assert m["patchmap_auroc"]["patch"] >= 0.9 and m["patchmap_auroc"]["patch"] > m["patchmap_auroc"]["blend"] + 0.2, m
    assert m["patchmap_located"] >= 0.8, m


CHECKS = {"00_quickstart": _check_00, "01_implant_backdoor": _check_01, "02_meta_token_collapse": _check_02, "03_invert_triggers": _check_03,
          "04_score_and_decide": _check_04, "05_repair": _check_05, "06_baselines": _check_06, "07_capstone": _check_07, "08_text_encoder_backdoors": _check_08,
          "09_encoder_backdoors": _check_09, "10_inside_the_encoder": _check_10}


def test_there_are_notebooks_and_each_has_checks():
    assert NOTEBOOKS, "no notebooks found"
    assert {nb.stem for nb in NOTEBOOKS} <= set(CHECKS), "add metric checks for every notebook"


def _grouped(nb: Path):
    """A notebook that keeps work in `work_dir` runs on the same worker as its student version, which reloads
    it from the worker's `notebook_work` cache; those sharing course scans all run on one worker."""
    text = nb.read_text()
    if "work_dir" not in text:
        return nb
    group = SCAN_SHARING_GROUP if "course_scans" in text else nb.stem
    return pytest.param(nb, marks=pytest.mark.xdist_group(group))


@pytest.mark.xdist_group("group_probe")
def test_xdist_groups_hold(request):
    """Under `--dist loadgroup` a grouped test's node id carries its group (xdist's way of keeping a group on one
    worker); without it a student version runs on another worker than its master and recomputes everything."""
    if getattr(request.config.option, "loadgroup", False):
        assert request.node.nodeid.endswith("@group_probe"), "xdist_group is ignored: check the pytest pin"


@pytest.mark.parametrize("nb", [_grouped(nb) for nb in NOTEBOOKS], ids=lambda p: p.stem)
def test_notebook_runs_under_smoke_profile(nb, tmp_path, notebook_work):
    import papermill as pm

    metrics = tmp_path / "metrics.json"
    pm.execute_notebook(
        str(nb),
        str(tmp_path / nb.name),
        parameters={"profile": "smoke", "metrics_path": str(metrics), "threads": TEST_THREADS,
                    **({"work_dir": str(notebook_work)} if "work_dir" in nb.read_text() else {})},
        cwd=str(nb.parent),
        kernel_name="python3",
        progress_bar=False,
        execution_timeout=CELL_TIMEOUT_S,
    )
    CHECKS[nb.stem](json.loads(metrics.read_text()))
    # every cell meant to draw a figure shows one (a backend switch elsewhere would leave them empty)
    ran = nbformat.read(tmp_path / nb.name, as_version=4)
    for cell in ran.cells:
        if cell.cell_type == "code" and re.search(r"plt\.subplots|show_images\(", cell.source):
            assert any("image/png" in o.get("data", {}) for o in cell.outputs), f"no figure from:\n{cell.source[:300]}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stripped_parametrised_and_thin(nb):
    book = nbformat.read(nb, as_version=4)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit notebooks with outputs stripped"
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell must be tagged 'parameters'"
    assert 'profile = "classroom"' in code[0].source
    for c in code:  # model code lives in the package, not in notebooks; notebooks use the public API only
        assert "sys.path" not in c.source and "nn.Module" not in c.source
        assert not re.search(r"^\s*(from ci_toolkit|import ci_toolkit\.)", c.source, re.M), "import ci_toolkit as ci only"
        assert not re.search(r"\bci\.(\w+\.)*_\w", c.source), "no private names"
        assert not re.search(r"^\s*class \w+", c.source, re.M), "no class definitions in notebooks"


@pytest.fixture(scope="session")
def course_dir(tmp_path_factory):
    """`ci-toolkit course` on the master notebooks, once per session (per xdist worker)."""
    from ci_toolkit.cli import main

    out = tmp_path_factory.mktemp("course") / "course"
    assert main(["course", "--out", str(out), "--notebooks", str(REPO / "notebooks")]) == 0
    return out


def test_course_command_makes_student_and_solution_versions(course_dir):
    """`ci-toolkit course`: a student version of every notebook without the solutions, a solution version that
    keeps them and the hidden checks; a second run never overwrites a course."""
    out = course_dir
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
    with pytest.raises(ci.CIError, match="already holds a course"):
        ci.course.make_course(REPO / "notebooks", out)


GRADED = [nb for nb in NOTEBOOKS if ci.course.has_exercises(nb)]


# after its master notebook, on the same worker (`_grouped`): the master's work is in the `notebook_work`
# cache, so the student version reloads it
@pytest.mark.parametrize("nb", [_grouped(nb) for nb in GRADED], ids=lambda p: p.stem)
def test_student_version_runs_unsolved_and_its_checks_say_failed(nb, course_dir, tmp_path, notebook_work):
    """The student version, exercises unsolved, runs to the end and every check reports "failed" (not a
    crash). The solutions passing every check, hidden ones included, is tested where the masters run."""
    import papermill as pm

    done = tmp_path / f"run_{nb.name}"
    pm.execute_notebook(str(course_dir / "student" / nb.name), str(done), cwd=str(course_dir / "student"),
                        kernel_name="python3", progress_bar=False, execution_timeout=CELL_TIMEOUT_S,
                        parameters={"profile": "smoke", "work_dir": str(notebook_work), "threads": TEST_THREADS})
    cells = json.loads(done.read_text())["cells"]
    checks = [c for c in cells if c["cell_type"] == "code" and "grader.check(" in "".join(c["source"])]
    assert checks
    for c in checks:
        text = json.dumps(c["outputs"])
        assert "failed" in text.lower(), "".join(c["source"])

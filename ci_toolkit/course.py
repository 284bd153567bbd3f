"""The course zoo: small delivered models shipped with the package, so that a lesson starts in seconds.

    from ci_toolkit import course
    course.list_models()                  # ["m000", "m001", ...]: neutral names, clean and backdoored alike
    model = course.load_model("m003")     # a delivered CoCoOp model (a prompt learner of a few kilobytes)
    task = course.task("m003")            # the organisation's task it was tuned on (its images and classes)
    course.truth("m003")                  # the teacher's answer: {"attack": ..., "target": ...}
    attack = course.load_attack("m003")   # the attacker's trigger (None for a clean model), to measure ASR
    report = course.shipped_scan("m002", "neural-cleanse")  # a scan shipped with the zoo (None: not shipped)
    report = course.scan("m002", cfg, work_dir="runs")  # CLIP-Inspector: shipped at these settings, or run

The models were built by `python -m lab zoo --profile course` and shipped by `python -m lab course`
(MiniCLIP, the world task of 50 classes) from a checkout of the repository; `truth` and `load_attack` read
the teacher's folder, which a student solving an audit should not open.

The course's student and solution versions (`make_course`, `ci-toolkit course --out DIR`): the tutorial
notebooks are the one source of truth, written in otter-grader's master format (exercises with solution
and test cells); otter-grader's assign step strips the solutions and hidden tests for DIR/student and
keeps them in DIR/solutions. Otter-grader is an optional dependency (the `notebook` extra).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from .attacks import Attack
from .detect import ScanConfig, ScanReport, calibration_for, split_pool
from .detect import scan as scan_model
from .attacks import load_attack as load_attack_folder
from .errors import CIError, DataError
from .model import CoCoOp
from .model import load_model as load_model_folder
from .world import WorldTask, ood_pool, task as world_task

COURSE_DIR = Path(__file__).resolve().parent / "assets" / "course"


def _index() -> dict[str, dict]:
    path = COURSE_DIR / "models.json"
    if not path.exists():
        raise DataError(f"the course zoo is missing ({path}); reinstall ci_toolkit, or rebuild it from a checkout "
                        "of the repository with `python -m lab zoo --profile course` and `python -m lab course`")
    return {row["name"]: row for row in json.loads(path.read_text())}


def _row(name: str) -> dict:
    index = _index()
    if name not in index:
        raise DataError(f"no course model {name!r}; choose one of {sorted(index)}")
    return index[name]


def list_models() -> list[str]:
    return sorted(_index())


def load_model(name: str) -> CoCoOp:
    """A course model, loaded like any delivered model (validated safetensors + JSON)."""
    _row(name)
    return load_model_folder(COURSE_DIR / "models" / name)


def task(name: str) -> WorldTask:
    """The world task the model was tuned on: the organisation's own data (seen classes = the model's)."""
    row = _row(name)
    return world_task(row["n_classes"], seed=row["seed"], n_test_per_class=row["n_test_per_class"])


def truth(name: str) -> dict:
    """The teacher's answer for a model: {"attack": "clean" or an attack name, "target": class name or None, ...}."""
    _row(name)
    rows = json.loads((COURSE_DIR / "teacher" / "manifest.json").read_text())
    return next(r for r in rows if r["name"] == name)


def load_attack(name: str) -> Attack | None:
    """The attacker's trigger of a backdoored course model (None for a clean one)."""
    folder = COURSE_DIR / "teacher" / name
    return load_attack_folder(folder) if (folder / "attack.json").exists() else None


def shipped_scan(name: str, method: str = "neural-cleanse") -> ScanReport | None:
    """The scan of a course model by `method` shipped with the zoo, or None: a CLIP-Inspector scan with its
    triggers (to repair with), a baseline's report without its trigger pictures. Scans that take minutes per
    model are shipped so that a lesson can start from them; each report records its settings (`config`)."""
    _row(name)
    folder = COURSE_DIR / "scans" / method / name
    return ScanReport.load(folder) if (folder / "report.json").exists() else None


def scan(name: str, config: ScanConfig | None = None, work_dir: str | Path | None = None,
         progress: bool = False) -> ScanReport:
    """The CLIP-Inspector scan of a course model under `config` (default `ScanConfig()`) on the world's OOD pool
    (`world.ood_pool(config.ood_images, seed=config.seed)`): the scan shipped with the zoo when it was made with
    exactly these settings, else the one kept in `work_dir`/<name> by an earlier call, else a fresh scan (kept
    there when `work_dir` is given). Equal to `ci.scan` on the loaded model either way; a shipped or kept scan
    is decided again under `config`'s rule and the null it calls for, as a fresh scan would be."""
    cfg = config or ScanConfig()
    if cfg.method != "clip-inspector":
        raise CIError(f"course.scan runs CLIP-Inspector; for {cfg.method!r} use shipped_scan or ci.scan")
    ood = ood_pool(cfg.ood_images, seed=cfg.seed)
    pool, heldout = split_pool(ood, cfg, cfg.inversion.batch_size)
    # the settings as a report records them: the pool and held-out sizes the split gave
    want = json.loads(json.dumps({**asdict(cfg), "pool_size": len(pool), "heldout_size": len(heldout)}))
    folder = Path(work_dir) / name if work_dir is not None else None
    kept = ScanReport.load(folder) if folder is not None and (folder / "report.json").exists() else None
    for found in (shipped_scan(name, "clip-inspector"), kept):
        if found is not None and {k: found.config.get(k) for k in want} == want:
            return found.redecide(cfg.rule, cfg.threshold, calibration_for(found.config))
    if kept is not None:
        raise CIError(f"{folder} holds a scan of {name} made with other settings; pass another work_dir")
    return scan_model(load_model(name), ood, cfg, folder, progress=progress)


ASSIGNMENT_MARK = "# ASSIGNMENT CONFIG"  # otter-grader's first raw cell of a master notebook with exercises


def has_exercises(notebook: str | Path) -> bool:
    """Whether a notebook is an otter-grader master (it holds exercises with checks)."""
    cells = json.loads(Path(notebook).read_text()).get("cells", [])
    return any(c["cell_type"] == "raw" and "".join(c["source"]).lstrip().startswith(ASSIGNMENT_MARK) for c in cells)


def make_course(notebooks: str | Path, out_dir: str | Path) -> dict[str, list[str]]:
    """The student and solution versions of the tutorial: OUT/student (exercises unsolved, public checks that
    a student runs with `grader.check`) and OUT/solutions (solutions, public and hidden checks for grading),
    each with its `tests/`. Notebooks without exercises are copied to both. Returns {"student": [...],
    "solutions": [...]}, the notebooks written. Refuses an OUT that already holds a course."""
    src, out = Path(notebooks), Path(out_dir)
    masters = sorted(src.glob("[0-9]*.ipynb"))
    if not masters:
        raise DataError(f"no tutorial notebooks in {src} (the notebooks are not installed with the package: run "
                        "from a checkout of the repository, or pass the folder that holds them)")
    if (out / "student").exists() or (out / "solutions").exists():
        raise CIError(f"{out} already holds a course; choose another --out (nothing is overwritten)")
    try:
        from otter.assign import main as otter_assign
    except ImportError:
        raise CIError("making the student version needs otter-grader: pip install -e '.[notebook]'") from None
    written: dict[str, list[str]] = {"student": [], "solutions": []}
    for version in written:
        (out / version / "tests").mkdir(parents=True)
    for nb in masters:
        if not has_exercises(nb):
            for version in written:
                shutil.copy(nb, out / version / nb.name)
                written[version].append(nb.name)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            otter_assign(str(nb), tmp, no_pdfs=True, no_run_tests=True)
            for version, part in (("student", "student"), ("solutions", "autograder")):
                shutil.copy(Path(tmp) / part / nb.name, out / version / nb.name)
                for test in (Path(tmp) / part / "tests").glob("*.py"):
                    shutil.copy(test, out / version / "tests" / test.name)
                written[version].append(nb.name)
    return written


__all__ = ["COURSE_DIR", "list_models", "load_model", "task", "truth", "load_attack", "shipped_scan", "scan", "make_course",
           "has_exercises"]

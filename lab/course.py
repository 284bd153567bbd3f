"""Ship the course zoo: copy the implanted models of a built `course` zoo into the package's assets.

    python -m lab zoo --profile course --out runs/zoo_course --workers 2
    python -m lab course --zoo runs/zoo_course --out ci_toolkit/assets/course

OUT/models.json (public: each model's name and the task it was tuned on), OUT/models/<name>/ (the
delivered models), OUT/teacher/manifest.json and OUT/teacher/<name>/ (the ground truth and the attacker's
artefacts). A backdoored model whose attack did not implant (seen ASR < MIN_ASR) is left out: it would
teach the opposite of its label.

Scans that take minutes per model (the baselines) are shipped beside the models, made with the public API:

    python -m lab course-scans --methods neural-cleanse,pixel-backdoor --models m001,m002 --pool 128

writes OUT/scans/<method>/<name>/report.json (each scan's report, its configuration inside), which
`ci.course.shipped_scan(name, method)` loads.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import ci_toolkit as ci

from .zoo import MIN_ASR, Zoo, get_zoo_profile, implanted

COURSE_NAME_SEED = 0  # the shuffle of the shipped names


def ship_course(zoo_dir: str | Path, out_dir: str | Path, min_asr: float = MIN_ASR) -> list[dict]:
    zoo = Zoo(zoo_dir)
    profile = get_zoo_profile("course")
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    (out / "models").mkdir(parents=True)
    (out / "teacher").mkdir()
    public, teacher = [], []
    rows = [r for r in zoo.manifest() if implanted(r, min_asr)]
    # neutral names in a shuffled order: a model's name must not tell clean from backdoored
    names = [f"m{i:03d}" for i in range(len(rows))]
    random.Random(COURSE_NAME_SEED).shuffle(names)
    for name, row in sorted(zip(names, rows)):
        shutil.copytree(zoo.model_dir(row), out / "models" / name)
        teacher_row = {"name": name, "zoo_path": row["path"], **{k: v for k, v in row.items() if k != "path"}}
        if zoo.attacker_dir(row).exists():
            shutil.copytree(zoo.attacker_dir(row), out / "teacher" / name)
        public.append({"name": name, "seed": row["seed"], "n_classes": profile.n_classes,
                       "n_test_per_class": profile.n_test_per_class})
        teacher.append(teacher_row)
    (out / "models.json").write_text(json.dumps(public, indent=2))
    (out / "teacher" / "manifest.json").write_text(json.dumps(teacher, indent=2))
    return teacher


def ship_course_scans(out_dir: str | Path, methods: list[str], names: list[str], pool: int, work: str | Path,
                      progress: bool = True) -> list[Path]:
    """Scan course models with `methods` on 2 x `pool` world OOD images (seed 0; `pool` to optimise on, a fifth
    of them held out for ASR), keeping the scans in `work` (a rerun reloads them), and ship each report.json."""
    out, written = Path(out_dir) / "scans", []
    ood = ci.world.ood_pool(2 * pool, seed=0)
    for method in methods:
        for name in names:
            folder = Path(work) / f"{method}_{name}"
            report = (ci.ScanReport.load(folder) if (folder / "report.json").exists() else
                      ci.scan(ci.course.load_model(name), ood, ci.ScanConfig(method=method, pool_size=pool, heldout_size=pool),
                              folder, progress=progress))
            if report.config["pool_size"] != pool or report.config["method"] != method:
                raise ci.CIError(f"{folder} holds a scan with other settings; choose another --work")
            target = out / method / name / "report.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(folder / "report.json", target)
            written.append(target)
            if progress:
                print(f"{method} {name}: {report.summary()} -> {target}")
    return written


__all__ = ["ship_course", "ship_course_scans"]

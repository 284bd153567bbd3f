"""Ship the course zoo: copy the implanted models of a built `course` zoo into the package's assets.

    python -m lab zoo --profile course --out runs/zoo_course --workers 2
    python -m lab course --zoo runs/zoo_course --out ci_toolkit/assets/course

OUT/models.json (public: each model's name and the task it was tuned on), OUT/models/<name>/ (the
delivered models), OUT/teacher/manifest.json and OUT/teacher/<name>/ (the ground truth and the attacker's
artefacts). A backdoored model whose attack did not implant (seen ASR < MIN_ASR) is left out: it would
teach the opposite of its label.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

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


__all__ = ["ship_course"]

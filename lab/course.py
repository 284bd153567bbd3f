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
                      heldout: int | None = None, progress: bool = True) -> list[Path]:
    """Scan course models with `methods` on `pool` + `heldout` (default `pool`) world OOD images (seed 0), keeping
    the scans in `work` (a rerun reloads them), and ship each report.json (a CLIP-Inspector scan also its
    triggers, about 1.2 MB, for the repairs). CLIP-Inspector scans go through `ci.course.scan`, the path a
    notebook takes, so a notebook with these settings finds them shipped."""
    out, written = Path(out_dir) / "scans", []
    for method in methods:
        cfg = ci.ScanConfig(method=method, pool_size=pool, heldout_size=heldout or pool)
        for name in names:
            if method == "clip-inspector":
                folder = Path(work) / method / name
                report = ci.course.scan(name, cfg, work_dir=folder.parent, progress=progress)
            else:
                folder = Path(work) / f"{method}_{name}"
                report = (ci.ScanReport.load(folder) if (folder / "report.json").exists() else
                          ci.scan(ci.course.load_model(name), ci.world.ood_pool(cfg.ood_images, seed=0), cfg, folder,
                                  progress=progress))
            if report.config["pool_size"] != pool or report.config["method"] != method:
                raise ci.CIError(f"{folder} holds a scan with other settings; choose another --work")
            target = out / method / name / "report.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            # a CLIP-Inspector scan ships with its triggers: notebooks repair with them
            parts = ("report.json", "triggers.safetensors", "gate_probe.safetensors") if method == "clip-inspector" \
                else ("report.json",)
            for part in parts:
                if (folder / part).exists():  # else course.scan returned the shipped scan: nothing to copy
                    shutil.copy(folder / part, target.parent / part)
            written.append(target)
            if progress:
                print(f"{method} {name}: {report.summary()} -> {target}")
    return written


__all__ = ["ship_course", "ship_course_scans"]

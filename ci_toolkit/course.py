"""The course zoo: small delivered models shipped with the package, so that a lesson starts in seconds.

    from ci_toolkit import course
    course.list_models()                  # ["m000", "m001", ...]: neutral names, clean and backdoored alike
    model = course.load_model("m003")     # a delivered CoCoOp model (a prompt learner of a few kilobytes)
    task = course.task("m003")            # the organisation's task it was tuned on (its images and classes)
    course.truth("m003")                  # the teacher's answer: {"attack": ..., "target": ...}
    attack = course.load_attack("m003")   # the attacker's trigger (None for a clean model), to measure ASR

The models were built by `python -m lab zoo --profile course` and shipped by `python -m lab course`
(MiniCLIP, the world task of 50 classes) from a checkout of the repository; `truth` and `load_attack` read
the teacher's folder, which a student solving an audit should not open.
"""

from __future__ import annotations

import json
from pathlib import Path

from .attacks import Attack
from .attacks import load_attack as load_attack_folder
from .errors import DataError
from .model import CoCoOp
from .model import load_model as load_model_folder
from .world import WorldTask, task as world_task

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


__all__ = ["COURSE_DIR", "list_models", "load_model", "task", "truth", "load_attack"]

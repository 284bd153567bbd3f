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
`ci.course.shipped_scan(name, method)` loads. A shipped CLIP-Inspector scan without the wide gate probe gets it
added in place, as a fresh scan runs it (`--widen`, `widen_scan`):

    python -m lab course-scans --methods clip-inspector --models m000,m001 --pool 512 --heldout 256 --widen
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import replace
from pathlib import Path

import torch

import ci_toolkit as ci
from ci_toolkit.detect import measure_gate_probe, split_pool

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


def widen_scan(folder: str | Path, model: ci.CoCoOp, ood: torch.Tensor,
               cfg: ci.ScanConfig | None = None) -> ci.ScanReport:
    """A kept CLIP-Inspector scan of `model` on `ood` made without the wide gate probe, with the probe at
    cfg.wide_probe_eps (default ScanConfig()'s) added on the scan's own split, as a fresh scan runs it after the
    inversion, then decided again under its rule; saved in place (report.json, gate_probe.safetensors)."""
    report = ci.ScanReport.load(folder)
    rec = report.config
    eps = (cfg or ci.ScanConfig()).wide_probe_eps
    if eps is None:
        raise ci.CIError("the configuration runs no wide probe (wide_probe_eps=None): nothing to add")
    if report.method != "clip-inspector" or report.gate_probe is None or report.probe_triggers is None:
        raise ci.CIError(f"{folder}: not a CLIP-Inspector scan with a gate probe and its perturbations")
    if report.gate_probe.wide_eps is not None:
        raise ci.CIError(f"{folder}: the scan already ran the wide probe "
                         f"(at {report.gate_probe.wide_eps * 255:.0f}/255)")
    scan_cfg = replace(ci.ScanConfig(), pool_size=rec["pool_size"], heldout_size=rec["heldout_size"], seed=rec["seed"],
                       probe_eps=rec["probe_eps"], probe_images=rec["probe_images"], probe_shut=rec["probe_shut"],
                       meta_images=rec["meta_images"])
    pool, heldout = split_pool(ood, scan_cfg, rec["inversion"]["batch_size"])
    if (len(pool), len(heldout)) != (rec["pool_size"], rec["heldout_size"]):
        raise ci.CIError(f"{folder}: these OOD images split into {len(pool)} + {len(heldout)}, the scan's into "
                         f"{rec['pool_size']} + {rec['heldout_size']}: pass the images it was made on")
    wide, deltas = measure_gate_probe(model, pool, heldout, report.names, scan_cfg, eps=eps)
    report.gate_probe = report.gate_probe.with_wide(wide)
    report.probe_triggers = torch.cat([report.probe_triggers, deltas])
    report.config = {**rec, "wide_probe_eps": eps}
    out = report.redecide(rec["rule"], rec.get("threshold"))
    out.save(folder, html=False)
    return out


def widen_course_scans(out_dir: str | Path, names: list[str], pool: int, heldout: int,
                       progress: bool = True) -> list[Path]:
    """`widen_scan` on the shipped CLIP-Inspector scans of course models `names`, made on pool + heldout world
    OOD images (the scan configuration's sizes, which the scan split into those it recorded)."""
    written = []
    for name in names:
        folder = Path(out_dir) / "scans" / "clip-inspector" / name
        rec = ci.ScanReport.load(folder).config
        ood = ci.world.ood_pool(pool + heldout, seed=rec["seed"])
        report = widen_scan(folder, ci.course.load_model(name), ood)
        written.append(folder / "report.json")
        if progress:
            print(f"clip-inspector {name}: wide probe added; {report.summary()}", flush=True)
    return written


__all__ = ["ship_course", "ship_course_scans", "widen_course_scans", "widen_scan"]

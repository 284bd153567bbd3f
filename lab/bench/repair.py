"""`python -m lab bench repair`: repair every implanted backdoored model of a zoo with its scan's trigger.

For each backdoored model whose attack implanted (`lab.zoo.implanted`): its CLIP-Inspector scan from
`bench detect` (scanned here if missing; decided under the configured rule, as `bench detect` does),
`ci.repair` with the trigger behind the scan's top class (`ScanReport.repair_trigger`) on the task's
few-shot training set, and `ci.backdoor_effect` before and after: clean ACC and the ATTACKER's real-trigger
ASR on the seen-class test split (the zoo keeps the attacker's artefacts, so the real trigger is known).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import ci_toolkit as ci
from lab.bench.detect import cached_scan, scan_folder, scan_model
from lab.zoo import MIN_ASR, Zoo, implanted

# the task a zoo model was trained on when its build log names no profile: the full-size zoos' task
DEFAULT_N_CLASSES, DEFAULT_N_TEST_PER_CLASS = 50, 20


def bench_repair(zoo: str | Path, detect_dir: str | Path, cfg: ci.RepairConfig | None = None,
                 scan_cfg: ci.ScanConfig | None = None, min_asr: float = MIN_ASR, n_classes: int | None = None,
                 n_test_per_class: int | None = None, progress: bool = True) -> dict:
    """Repair the zoo's implanted backdoored models; n_classes / n_test_per_class: the zoo's task size
    (default: the profile its build log names, else 50 / 20)."""
    zoo, detect_dir = Zoo(zoo), Path(detect_dir)
    cfg = cfg or ci.RepairConfig()
    scan_cfg = scan_cfg or ci.ScanConfig()
    profile = zoo.profile()
    n_classes = n_classes or (profile.n_classes if profile else DEFAULT_N_CLASSES)
    n_test_per_class = n_test_per_class or (profile.n_test_per_class if profile else DEFAULT_N_TEST_PER_CLASS)
    rows, t_start = [], time.time()
    for m in zoo.manifest():
        if m["attack"] == "clean" or not implanted(m, min_asr):
            continue
        folder = scan_folder(detect_dir, "clip-inspector", m)
        if not (folder / "report.json").exists():
            scan_model(zoo, m, folder, scan_cfg, progress=progress)
        report = cached_scan(folder, scan_cfg)
        model = zoo.load_model(m)
        world = ci.world.World(ci.world.WorldConfig(image_size=model.preprocess.image_size))
        task = world.task(n_classes=n_classes, n_test_per_class=n_test_per_class, seed=m["seed"])
        if task.seen_names != model.classnames:
            raise ci.DataError(f"{m['path']}: cannot rebuild its task (n_classes={n_classes}); pass the zoo's sizes")
        attack = zoo.load_attack(m)
        x_test, y_test = task.split("test", "seen")
        t0 = time.time()
        before = ci.backdoor_effect(model, x_test, y_test, attack.target, attack)
        fixed, res = ci.repair(model, report, task.train_x, task.train_y, cfg, progress=False)
        after = ci.backdoor_effect(fixed, x_test, y_test, attack.target, attack)
        row = {"path": m["path"], "attack": m["attack"], "true_target": m["target"], "repaired_with": res.trigger_class,
               "trigger_source": res.trigger_source, "verdict": report.verdict,
               "scan_found_target": res.trigger_class == m["target"],
               "asr_before": before["asr"], "asr_after": after["asr"], "acc_before": before["acc"],
               "acc_after": after["acc"], "trigger_used": "attacker", "target": model.classnames[attack.target],
               "trigger_weight": res.trigger_weight, "attempts": res.attempts, "steps": res.steps,
               "runtime_s": time.time() - t0}
        rows.append(row)
        if progress:
            print(f"{m['path']} {m['attack']}: ASR {row['asr_before']:.3f} -> {row['asr_after']:.3f}, "
                  f"ACC {row['acc_before']:.3f} -> {row['acc_after']:.3f} (trigger of {res.trigger_class!r}, "
                  f"true {m['target']!r}, weight {res.trigger_weight:g})")

    def mean(k):
        return sum(r[k] for r in rows) / len(rows) if rows else float("nan")

    summary = {k: mean(k) for k in ("asr_before", "asr_after", "acc_before", "acc_after")} | {"n_models": len(rows)}
    return {"summary": summary,
            "per_model": rows, "runtime_s": time.time() - t_start,
            "config": {"zoo": str(zoo.root), "detect_dir": str(detect_dir), "min_asr": min_asr, "repair": asdict(cfg),
                       "rule": scan_cfg.rule, "asr": "the attacker's real trigger, seen-class test split"}}

"""`python -m lab probe-budget`: the gate probe at a second budget on kept models, appended to their evidence.

    python -m lab probe-budget --study runs/null --budget 32 --out runs/null/probe32.json
    python -m lab probe-budget --zoo runs/prereg --detect runs/prereg/detect.json --budget 32 --out F

The calibrated rule's wide-probe test on scans made without it: for every row that carries a scan's evidence
(a null study's rows, or `bench detect`'s CLIP-Inspector rows), the probe of `ci.detect.measure_gate_probe`
at `eps` (--budget, in /255), on the same OOD split as the row's scan (the scan configuration the study or
benchmark ran with, default `ScanConfig()`, checked against the sizes its kept report recorded; world OOD
pool), becomes the evidence's `wide_probes` (what a scan with `wide_probe_eps=eps` records), with the row's
`wide_statistic`. `lab null --wide` and `lab redecide` read the output. Resumable: the output is written after
each model and finished rows are skipped.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import ci_toolkit as ci
from ci_toolkit.detect import measure_gate_probe, split_pool

from .bench.detect import scan_folder, world_ood
from .null import scan_dir
from .zoo import Zoo


def extra_probes(model: ci.CoCoOp, names: list[str], cfg: ci.ScanConfig, recorded: dict,
                 workers: int = 1) -> list[list]:
    """[class index, ASR, meta gain] of every probe unit at cfg.probe_eps (the evidence's probe format), on
    cfg's OOD split; `recorded`: the kept scan's config, whose split sizes and seed it must reproduce; workers:
    processes the probe's units are split over (the same rows up to float rounding)."""
    pool, heldout = split_pool(world_ood(cfg, model.preprocess.image_size), cfg, cfg.inversion.batch_size)
    got = {"pool_size": len(pool), "heldout_size": len(heldout), "seed": cfg.seed}
    if any(recorded.get(k) != v for k, v in got.items()):
        raise ci.CIError(f"the scan configuration gives the split {got}, the kept scan recorded "
                         f"{ {k: recorded.get(k) for k in got} }: pass the configuration it ran with")
    probe, _ = measure_gate_probe(model, pool, heldout, names, cfg, workers)
    return [[names.index(u.class_name), u.asr, u.meta_gain] for u in probe.units]


def probe_budget(rows: list[dict], key: str, load, report_dir, eps: float, out: str | Path,
                 scan_cfg: ci.ScanConfig | None = None, progress: bool = True, workers: int = 1) -> dict:
    """The probe at `eps` as each row's wide probe; load(row) gives the model, report_dir(row) its kept
    scan's folder, scan_cfg the configuration the scans ran with; workers: processes per model's probe.
    Writes and returns {"per_model", "config"}."""
    cfg = replace(scan_cfg or ci.ScanConfig(), probe_eps=eps)
    out = Path(out)
    done = json.loads(out.read_text())["per_model"] if out.exists() else []
    other = {r["probe2"]["eps"] for r in done} - {eps}
    if other:
        raise ci.CIError(f"{out} holds rows probed at {sorted(e * 255 for e in other)}/255, not {eps * 255:g}/255: "
                         "give another --out")
    have = {r[key] for r in done}
    config = None
    for r in rows:
        if r[key] in have:
            continue
        t0 = time.time()
        scan = ci.ScanReport.load(report_dir(r)).config
        units = extra_probes(load(r), r["evidence"]["names"], cfg, scan, workers)
        ev = {**r["evidence"], "wide_probes": units}
        done.append({**r, "evidence": ev, "wide_statistic": ci.detect.wide_probe_statistic(ci.Evidence(**ev)),
                     "probe2": {"eps": eps, "s": time.time() - t0}})
        config = {"scan": {k: scan[k] for k in ("pool_size", "heldout_size", "inversion")}, "probe2_eps": eps}
        result = {"per_model": done, "config": config}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result))
        if progress:
            print(f"{r[key]}: {len(units)} probe units at {eps * 255:.0f}/255 in {time.time() - t0:.0f} s", flush=True)
    return json.loads(out.read_text()) if out.exists() else {"per_model": [], "config": config}


def null_probe_budget(null_dir: str | Path, eps: float, out: str | Path, scan_cfg: ci.ScanConfig | None = None,
                      progress: bool = True, workers: int = 1) -> dict:
    """probe_budget over a null study folder's finished rows on the world pool (models/nNNN, scans/world/nNNN)."""
    root = Path(null_dir)
    rows = json.loads((root / "rows_world.json").read_text())
    return probe_budget(rows, "name", lambda r: ci.load_model(root / "models" / r["name"]),
                        lambda r: scan_dir(root, "world", r["name"]), eps, out, scan_cfg, progress, workers)


def bench_probe_budget(zoo_dir: str | Path, detect: str | Path, eps: float, out: str | Path,
                       scan_cfg: ci.ScanConfig | None = None, progress: bool = True, workers: int = 1) -> dict:
    """probe_budget over a `bench detect` result's CLIP-Inspector rows of a zoo (scans kept beside it)."""
    zoo, path = Zoo(zoo_dir), Path(detect)
    by_path = {m["path"]: m for m in zoo.manifest()}
    rows = [r for r in json.loads(path.read_text())["per_model"]
            if r.get("method") == "clip-inspector" and r.get("evidence")]
    return probe_budget(rows, "path", lambda r: zoo.load_model(by_path[r["path"]]),
                        lambda r: scan_folder(path.with_suffix(""), "clip-inspector", r), eps, out, scan_cfg,
                        progress, workers)


__all__ = ["bench_probe_budget", "extra_probes", "null_probe_budget", "probe_budget"]

"""`python -m lab bench executors`: one zoo scanned with the local executor and with Ray, same units.

Each executor scans every model of the zoo (`bench_detect`, the classroom profile's scan unless given) into
its own folder, from scratch, with the same CPUs (`--workers` processes, or a Ray cluster of that many
CPUs started after the local run) and one torch thread per unit. The result holds each run's wall seconds, units
and failures, whether the two runs' verdicts, targets and scores agree (`same_results`), and Ray's
overhead per unit: the wall time of `N_EMPTY` empty units on each executor, per unit, and the time to
start the Ray cluster.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import ci_toolkit as ci
from lab.bench.detect import bench_detect
from lab.executors import Executor, init_ray, run_units

N_EMPTY = 40  # empty units per executor for the per-unit overhead (enough to average over scheduling noise)
COMPARED = ("path", "verdict", "predicted_target", "max_score", "top_class", "flagged")  # per model, equal in both


def empty_unit(i: int) -> int:
    return i


def _overhead(ex: Executor) -> dict:
    t0 = time.time()
    run_units(empty_unit, {str(i): (i,) for i in range(N_EMPTY)}, ex, progress=False)
    wall = time.time() - t0
    return {"empty_units": N_EMPTY, "wall_s": wall, "per_unit_s": wall / N_EMPTY}


def bench_executors(zoo: str | Path, work: str | Path, workers: int = 2, cfg: ci.ScanConfig | None = None,
                    progress: bool = True) -> dict:
    import ray

    cfg = cfg or ci.get_profile("classroom").scan_config
    work = Path(work)
    runs = {}
    try:
        for kind in ("local", "ray"):  # local first: Ray's own processes run only beside the Ray run
            ex = Executor(kind, workers=workers, cpus=1)
            start_s = None
            if kind == "ray":
                t0 = time.time()
                init_ray(None, num_cpus=workers)
                start_s = time.time() - t0
            out = work / kind
            if out.exists():
                shutil.rmtree(out)  # from scratch: a kept scan would be reloaded, not timed
            t0 = time.time()
            res = bench_detect(zoo, out, cfg=cfg, min_asr=0.0, progress=progress, executor=ex)
            wall = time.time() - t0
            scans = res["methods"]["clip_inspector"]
            runs[kind] = {"executor": repr(ex), "wall_s": wall, "units": len(res["per_model"]) + len(res["failed"]),
                          "failures": len(res["failed"]), "mean_scan_s": scans["mean_scan_s"],
                          "overhead": _overhead(ex), "per_model": res["per_model"]}
            if start_s is not None:
                runs[kind]["cluster_start_s"] = start_s
    finally:
        if ray.is_initialized():
            ray.shutdown()
    local, remote = ([{k: r[k] for k in COMPARED} for r in runs[kind]["per_model"]] for kind in ("local", "ray"))
    for run in runs.values():
        del run["per_model"]
    differences = [(a, b) for a, b in zip(local, remote) if a != b]
    return {**runs, "same_results": local == remote, "differences": differences, "n_models": len(local),
            "config": {"zoo": str(zoo), "workers": workers, "threads_per_unit": 1, "pool_size": cfg.pool_size,
                       "heldout_size": cfg.heldout_size, "compared": list(COMPARED)}}

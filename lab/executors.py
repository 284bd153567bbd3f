"""Where the lab's parallel work units run: a process pool on this machine, or a Ray cluster.

A unit is one call `fn(*args)` independent of the others: build one zoo model, scan one model, train and
scan one clean model of the null study. Units take paths and configs (never models) and write their
results as files, idempotently, so a run that dies resumes, on either executor, to the same results.

    results = run_units(build_one, {"models/m000": args0, ...}, Executor("ray", address="auto"))

local  the default: `workers` spawn processes on this machine, nothing to install; workers=1 runs the
       units one after the other in this process.
ray    Ray tasks (`pip install -e ".[ray]"`): a Ray cluster started for the run with `workers` CPUs, or the
       one at `address` ("auto": the cluster `ray start` runs on this node; "HOST:PORT": a head elsewhere).
       Each unit asks for `cpus` CPUs (and `gpus` GPUs); no more units run at once than the cluster has room
       for, so a unit's time limit counts from its start.

Either way a unit that raises runs again up to `retries` times and is then recorded as failed with its
error, while the others finish. With ray, a unit past `timeout_s` is stopped and recorded as failed (a
process pool cannot stop one running unit, so local refuses a time limit).

The in-scan unit (one group of candidate classes, `ci.scan(..., workers=N)`) stays on the toolkit's own
pool: a scan's groups share one model and one OOD pool, which that pool hands each local worker once; on a
cluster, whole models are the unit that pays (minutes each, against Ray's 1.7 ms dispatch per task measured
in benchmarks/executors.json).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED
from concurrent.futures import wait as wait_futures
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ci_toolkit import CIError
from ci_toolkit.workers import process_pool

EXECUTORS = ("local", "ray")
POLL_S = 1.0  # how often the driver looks at running units (results and time limits)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Executor:
    """How to run work units. kind: "local" or "ray"; workers: local processes, or the CPUs of a Ray cluster
    started for the run; address: an existing Ray cluster; cpus / gpus: what one unit asks for (cpus is
    also the unit's torch threads; None: the machine's cores split between the workers); retries: runs
    after the first of a unit that raised; timeout_s: per-unit limit (ray only)."""

    kind: str = "local"
    workers: int = 1
    address: str | None = None
    cpus: int | None = None
    gpus: float = 0.0
    retries: int = 1
    timeout_s: float | None = None

    def __post_init__(self):
        if self.kind not in EXECUTORS:
            raise CIError(f"executor {self.kind!r}: choose one of {', '.join(EXECUTORS)}")
        if self.workers < 1 or self.retries < 0 or (self.cpus is not None and self.cpus < 1):
            raise CIError("an executor needs workers >= 1, cpus >= 1 and retries >= 0")
        if self.kind == "local" and self.address:
            raise CIError("a Ray address needs the ray executor (--executor ray)")
        if self.kind == "local" and self.timeout_s:
            raise CIError("a per-unit time limit needs the ray executor: a process pool cannot stop one running unit")

    def threads(self) -> int:
        """torch threads per unit."""
        if self.cpus is not None:
            return self.cpus
        return 1 if self.kind == "ray" else max(1, (os.cpu_count() or 2) // self.workers)

    def __repr__(self) -> str:
        where = self.address or f"{self.workers} {'CPUs' if self.kind == 'ray' else 'processes'}"
        extra = f", timeout {self.timeout_s:g} s" if self.timeout_s else ""
        return f"Executor({self.kind} on {where}, {self.threads()} threads/unit, {self.retries} retries{extra})"


@dataclass
class UnitResult:
    """What became of one unit: its value, or the error of its last attempt."""

    key: str
    value: Any = None
    error: str | None = None
    attempts: int = 0
    node: str | None = None
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def record(self) -> dict:
        """The unit as a row of a run log (without its value)."""
        return {"key": self.key, "ok": self.ok, "error": self.error, "attempts": self.attempts, "node": self.node,
                "wall_s": round(self.wall_s, 3)}


def call_unit(fn: Callable, args: tuple, threads: int | None) -> tuple[Any, str, float]:
    """Runs in the worker: fn(*args) with `threads` torch threads; returns (value, host, seconds)."""
    t0 = time.time()
    if threads:
        torch.set_num_threads(threads)
    return fn(*args), socket.gethostname(), time.time() - t0


class _Inline:
    """workers=1: each unit runs in this process when it is submitted (with the caller's torch threads unless
    the executor names `cpus`)."""

    slots = 1

    def __init__(self, ex: Executor):
        self.done, self.threads = {}, ex.cpus

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, args):
        handle = object()
        try:
            self.done[handle] = (call_unit(fn, args, self.threads), None)
        except Exception as e:  # noqa: BLE001 - recorded as the unit's failure
            self.done[handle] = (None, e)
        return handle

    def wait(self, handles, timeout):
        return list(handles)

    def result(self, handle):
        value, error = self.done.pop(handle)
        if error is not None:
            raise error
        return value

    def cancel(self, handle):
        self.done.pop(handle, None)


class _Pool:
    """workers > 1: a spawn process pool whose workers die with this process."""

    def __init__(self, ex: Executor):
        self.slots, self.threads = ex.workers, ex.threads()
        self.pool = process_pool(ex.workers)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.pool.shutdown(cancel_futures=True)
        return False

    def submit(self, fn, args):
        return self.pool.submit(call_unit, fn, args, self.threads)

    def wait(self, handles, timeout):
        return wait_futures(handles, timeout=timeout, return_when=FIRST_COMPLETED).done

    def result(self, handle):
        return handle.result()

    def cancel(self, handle):
        handle.cancel()


def init_ray(address: str | None = None, num_cpus: int = 2) -> bool:
    """Connect to the Ray cluster at `address`, or start one on this machine with `num_cpus` CPUs; returns
    whether this call started it (then the caller shuts it down). Workers import the lab from the driver's
    working directory: run from the repository root."""
    try:
        import ray
    except ImportError as e:
        raise CIError('the ray executor needs Ray: pip install -e ".[ray]"') from e
    if ray.is_initialized():
        return False
    kwargs = dict(include_dashboard=False, configure_logging=False, log_to_driver=False)
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)
    return True


class _Ray:
    def __init__(self, ex: Executor):
        import ray

        self.ray, self.started = ray, init_ray(ex.address, ex.workers)
        self.threads = ex.threads()
        # retries are the driver's (counted per unit), so Ray itself does not rerun a task
        self.task = ray.remote(num_cpus=self.threads, num_gpus=ex.gpus, max_retries=0)(call_unit)
        room = ray.cluster_resources()
        self.slots = max(1, int(room.get("CPU", 1) // self.threads))
        if ex.gpus:
            self.slots = max(1, min(self.slots, int(room.get("GPU", 0) // ex.gpus)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.started:
            self.ray.shutdown()
        return False

    def submit(self, fn, args):
        return self.task.remote(fn, args, self.threads)

    def wait(self, handles, timeout):
        ready, _ = self.ray.wait(list(handles), num_returns=len(handles), timeout=timeout)
        return ready

    def result(self, handle):
        try:
            return self.ray.get(handle)
        except self.ray.exceptions.RayTaskError as e:  # the unit's own exception, not Ray's wrapper
            raise (e.cause if isinstance(e.cause, Exception) else e) from None

    def cancel(self, handle):
        self.ray.cancel(handle, force=True)


def run_units(fn: Callable, units: dict[str, tuple], executor: Executor | None = None, desc: str = "units",
              progress: bool = True, on_done: Callable[[UnitResult], None] | None = None) -> list[UnitResult]:
    """Run fn(*args) for every unit {key: args}; returns one UnitResult per unit, in the order they
    finished. on_done(result) is called in this process as each unit ends (write the manifest there: a
    run killed after it resumes from what it wrote)."""
    ex = executor or Executor()
    backend = (_Ray if ex.kind == "ray" else _Pool if ex.workers > 1 else _Inline)(ex)
    pending, attempts, running, results = list(units), Counter(), {}, []
    bar = tqdm(total=len(units), desc=f"{desc} ({ex.kind})", unit="unit", disable=not progress)

    def finish(res: UnitResult) -> None:
        results.append(res)
        bar.update(1)
        bar.set_postfix(last=f"{res.key} on {res.node}" if res.ok else f"{res.key} FAILED")
        line = (f"{res.key}: done on {res.node} in {res.wall_s:.1f} s (attempt {res.attempts})" if res.ok
                else f"{res.key}: FAILED after {res.attempts} attempt(s): {res.error}")
        if progress:
            bar.write(line)  # above the bar: the run's log of where each unit ran
        log.log(logging.INFO if res.ok else logging.WARNING, line)
        if on_done:
            on_done(res)

    with backend, bar:
        while pending or running:
            while pending and len(running) < backend.slots:
                key = pending.pop(0)
                attempts[key] += 1
                running[backend.submit(fn, units[key])] = (key, time.time())
            for handle in backend.wait(list(running), POLL_S):
                key, t0 = running.pop(handle)
                try:
                    value, node, wall = backend.result(handle)
                except Exception as e:  # noqa: BLE001 - the unit's failure: retried, then recorded
                    if attempts[key] <= ex.retries:
                        log.warning("%s: %s: %s (retrying)", key, type(e).__name__, e)
                        pending.insert(0, key)
                        continue
                    finish(UnitResult(key, error=f"{type(e).__name__}: {e}", attempts=attempts[key],
                                      wall_s=time.time() - t0))
                else:
                    finish(UnitResult(key, value, attempts=attempts[key], node=node, wall_s=wall))
            if ex.timeout_s:
                for handle, (key, t0) in list(running.items()):
                    if time.time() - t0 > ex.timeout_s:
                        backend.cancel(handle)
                        del running[handle]
                        finish(UnitResult(key, error=f"TimeoutError: stopped after {ex.timeout_s:g} s",
                                          attempts=attempts[key], wall_s=time.time() - t0))
    return results


def build_into_manifest(out: Path, profile, specs: list[dict], fn: Callable, args: Callable[[dict], tuple],
                        executor: Executor | None, desc: str, progress: bool) -> dict:
    """Run fn(*args(spec)) for each spec (a dict with "name") not yet in OUT/manifest.json, which holds
    {"profile": the profile dataclass as a dict, "models": rows}; each finished row is written at once, sorted
    by name, so a killed build resumes. Returns the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "manifest.json"
    manifest = json.loads(path.read_text()) if path.exists() else {"profile": asdict(profile), "models": []}
    done = {r["name"] for r in manifest["models"]}

    def save(res: UnitResult) -> None:
        if res.ok:
            manifest["models"].append(res.value)
            manifest["models"].sort(key=lambda r: r["name"])
            path.write_text(json.dumps(manifest, indent=1))

    todo = {s["name"]: args(s) for s in specs if s["name"] not in done}
    run_units(fn, todo, executor, desc=desc, progress=progress, on_done=save)
    return manifest


def add_executor_args(parser) -> None:
    """--executor, --ray-address, --retries, --unit-timeout on a command that takes --workers."""
    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help='where units run: local processes, or Ray (pip install -e ".[ray]")')
    parser.add_argument("--ray-address", default=None,
                        help="an existing Ray cluster: auto (started by `ray start` on this node) or HOST:PORT; "
                             "default: start one on this machine with --workers CPUs")
    parser.add_argument("--retries", type=int, default=1, help="runs after the first of a unit that raised")
    parser.add_argument("--unit-timeout", type=float, default=None, help="seconds per unit (ray only)")
    parser.add_argument("--gpus-per-unit", type=float, default=0.0, help="GPUs one unit asks Ray for")


def executor_from(args) -> Executor:
    return Executor(args.executor, workers=args.workers, address=args.ray_address, retries=args.retries,
                    timeout_s=args.unit_timeout, gpus=args.gpus_per_unit)

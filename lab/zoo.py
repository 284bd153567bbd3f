"""The model zoo: clean and backdoored CoCoOp models for the detection benchmark.

    DIR/manifest.json                ground truth: [{"path", "attack", "target", "seed", "acc_*", "asr_*"}, ...]
    DIR/models/m000/                 delivered models: model.json + prompt_learner.safetensors, nothing else
    DIR/attacker/m000/               the attacker's artefacts (trigger, config, poisoned indices), kept apart
    DIR/build.json                   one row per build session: models built, workers, wall-clock seconds

Model folders carry neutral names and the same format whether clean or backdoored: a scanner handed
`models/m007` sees no trace of the attack. Building is resumable: finished models are skipped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path


from ci_toolkit.attacks import create_world_attack
from ci_toolkit.model.backbones import create_backbone
from ci_toolkit.model.checkpoint import save_model
from ci_toolkit.model.cocoop import CoCoOp
from ci_toolkit.errors import CIError
from ci_toolkit.metrics import evaluate_backdoor
from ci_toolkit.model.tuning import TrainConfig, train
from ci_toolkit.world import World, WorldConfig


@dataclass(frozen=True)
class ZooProfile:
    """What a zoo holds."""

    name: str
    attacks: tuple[str, ...]  # attack names (see ci_toolkit.attacks.list_attacks())
    seeds: tuple[int, ...]  # one clean model per seed; backdoored models cycle through them
    per_attack: int  # backdoored models per attack (targets differ)
    n_classes: int = 50  # world task size (half seen)
    n_test_per_class: int = 20
    epochs: int = 10
    ood_eval: int = 200  # OOD images for asr_ood
    target_offset: int = 0  # shifts the targets: zoos with other targets for held-out evaluation
    targets: tuple[tuple[int, ...], ...] = ()  # explicit seen-class targets, one tuple per attack (overrides the offset)


_FULL = ZooProfile("full", attacks=("badclip", "badclip_adaptive", "blended", "wanet", "siba", "badnets"),
                   seeds=(0, 1, 2, 3, 4, 5), per_attack=4)

ZOO_PROFILES = {
    "smoke": ZooProfile("smoke", attacks=("badclip", "blended"), seeds=(0,), per_attack=1, n_classes=10,
                        n_test_per_class=4, epochs=1, ood_eval=32),
    # other seeds and targets than `full`: the scanner's eps and decision rule are chosen on this one
    "classroom": ZooProfile("classroom", attacks=("badclip", "badclip_adaptive", "blended"), seeds=(100, 101),
                            per_attack=2, target_offset=1),
    "full": _FULL,
    # `full` again with other seeds and other targets for every attack: the hold-out zoo on which the
    # scanner's eps and decision rule (chosen on `classroom`, looked at on `full`) are reported
    "holdout": replace(_FULL, name="holdout", seeds=(200, 201, 202, 203, 204, 205), target_offset=3),
    # a second hold-out, built after `holdout` had been looked at: the decision rule revised after that look
    # is reported here (target_offset: the first offset sharing no (attack, target) with the zoos above)
    "holdout2": replace(_FULL, name="holdout2", seeds=(300, 301, 302, 303, 304, 305), target_offset=6),
    # a third hold-out, built before the session-10 changes to the scan were tried on the zoos above. Only
    # the attacks that implant on MiniCLIP: WaNet, SIBA and BadNets reached seen ASR <= 0.065 in all 48 of
    # their models over four zoos (docs/world.md), so they would be listed, not scanned; dropping them
    # saves a third of the build. Targets: the next offset sharing no (attack, target) with the zoos above.
    "holdout3": replace(_FULL, name="holdout3", attacks=("badclip", "badclip_adaptive", "blended"),
                        seeds=(400, 401, 402, 403, 404, 405), target_offset=15),
    # a fourth hold-out, built after holdout3 had been looked at and before any change to the scan: the
    # session-10 rule (ASR x meta gain with the gate probe, threshold 0.78) reported as it is. No offset is
    # left that shares no (attack, target) with the five zoos above, so the targets are listed: per attack
    # the first five of the seen classes no earlier zoo targeted with that attack. Five per attack rather
    # than four so one model moves the class-level F1 by less.
    "holdout4": replace(_FULL, name="holdout4", attacks=("badclip", "badclip_adaptive", "blended"),
                        seeds=(500, 501, 502, 503, 504, 505), per_attack=5,
                        targets=((1, 8, 12, 15, 19), (4, 7, 11, 14, 15), (0, 2, 3, 10, 17))),
    # a fifth hold-out, built after holdout4 had been looked at and before the session-12 rule (the shut
    # probe) was scanned on it. Only two seen classes per attack were never targeted by that attack, so the
    # other three are classes whose only earlier use with that attack is `full` (seeds 0-5, the first zoo);
    # none is shared with classroom or holdout..holdout4, and no seed is shared with any zoo.
    "holdout5": replace(_FULL, name="holdout5", attacks=("badclip", "badclip_adaptive", "blended"),
                        seeds=(600, 601, 602, 603, 604, 605), per_attack=5,
                        targets=((21, 22, 3, 10, 17), (22, 24, 2, 6, 13), (18, 21, 5, 9, 16))),
}


def model_specs(p: ZooProfile) -> list[dict]:
    """The zoo's models: clean ones (one per seed), then per attack `per_attack` (target, seed) pairs."""
    n_seen = (p.n_classes + 1) // 2
    if p.targets and (len(p.targets) != len(p.attacks) or any(len(t) != p.per_attack for t in p.targets)
                      or not all(0 <= x < n_seen for t in p.targets for x in t)):
        raise CIError(f"zoo profile {p.name!r}: targets must be {len(p.attacks)} tuples of {p.per_attack} "
                      f"seen-class indices in [0, {n_seen}), got {p.targets}")
    specs = [{"attack": "clean", "target": None, "seed": s} for s in p.seeds]
    for a_i, attack in enumerate(p.attacks):
        for j in range(p.per_attack):
            seed = p.seeds[(a_i + j) % len(p.seeds)]
            target = p.targets[a_i][j] if p.targets else (7 * (a_i * p.per_attack + j) + 3 + p.target_offset) % n_seen
            specs.append({"attack": attack, "target": target, "seed": seed})
    return specs


def _profile(profile: str | ZooProfile) -> ZooProfile:
    p = ZOO_PROFILES.get(profile) if isinstance(profile, str) else profile
    if p is None:
        raise CIError(f"unknown zoo profile {profile!r}; choose one of {list(ZOO_PROFILES)}")
    return p


def build_one(out: Path, p: ZooProfile, i: int, spec: dict, clean_path: str | None, threads: int | None = None) -> dict:
    """Train model i of the zoo, save it (and the attacker's artefacts), return its manifest row."""
    import torch
    from safetensors.torch import save_file

    from ci_toolkit.model.checkpoint import load_model
    from ci_toolkit.metrics import attack_success_rate

    if threads:
        torch.set_num_threads(threads)
    t0 = time.time()
    seed = spec["seed"]
    bb = create_backbone("miniclip")
    world = World(WorldConfig(image_size=bb.preprocess.image_size))
    task = world.task(n_classes=p.n_classes, n_test_per_class=p.n_test_per_class, seed=seed)
    ood = world.sample_ood(p.ood_eval, seed=10_000 + seed)
    cfg = TrainConfig(epochs=p.epochs, seed=seed)
    model = CoCoOp(bb, task.seen_names, seed=seed)
    attack, target_name, extra = None, None, {}
    if spec["attack"] == "clean":
        train(model, task.train_x, task.train_y, cfg, progress=False)
    else:
        attack = create_world_attack(spec["attack"], target=spec["target"], seed=seed)
        attack.implant(model, task.train_x, task.train_y, cfg, progress=False)
        target_name = task.seen_names[spec["target"]]
        art = out / "attacker" / f"m{i:03d}"
        art.mkdir(parents=True, exist_ok=True)
        if attack.state():
            save_file(attack.state(), str(art / "trigger.safetensors"))
        (art / "attack.json").write_text(json.dumps({"attack": attack.name, "config": asdict(attack.config),
                                                     "target_name": target_name}, indent=2))
        if clean_path is not None:  # the trigger on the clean model of the same seed: a backdoor keeps this low
            x, y = task.split("test", "seen")
            extra["asr_clean_model"] = attack_success_rate(load_model(out / clean_path, bb), x, y, spec["target"], attack)
    save_model(model, out / f"models/m{i:03d}", overwrite=True)
    return {"path": f"models/m{i:03d}", "attack": spec["attack"], "target": target_name, "seed": seed,
            **evaluate_backdoor(model, attack, task, ood, target_name), **extra, "train_s": time.time() - t0}


def build_zoo(out_dir: str | Path, profile: str | ZooProfile = "smoke", progress: bool = True, workers: int = 1) -> list[dict]:
    """Build (or resume) a zoo; returns the manifest.

    Clean models come first (the attacked ones measure their trigger on the clean model of their seed).
    workers > 1 trains models in parallel processes with the CPU threads split between them: small
    batch-1 prompt tuning uses one core poorly, so 2 workers x 1 thread is ~2x faster than 1 x 2 on 2 cores.
    """
    import os
    from concurrent.futures import as_completed

    from tqdm.auto import tqdm

    from ci_toolkit.workers import process_pool

    p = _profile(profile)
    t_start = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else []
    done = {m["path"] for m in manifest}
    specs = model_specs(p)
    clean_of = {s["seed"]: f"models/m{i:03d}" for i, s in enumerate(specs) if s["attack"] == "clean"}
    todo = [(i, s) for i, s in enumerate(specs) if f"models/m{i:03d}" not in done]
    bar = tqdm(total=len(specs), initial=len(specs) - len(todo), desc=f"zoo {p.name}", disable=not progress)

    def record(row):
        manifest.append(row)
        manifest.sort(key=lambda m: m["path"])
        manifest_path.write_text(json.dumps(manifest, indent=2))  # after every model: resumable
        bar.update(1)
        bar.set_postfix(last=f"{row['attack']} acc {row['acc_seen']:.2f}" +
                        (f" asr {row['asr_seen']:.2f}" if row["asr_seen"] is not None else ""))

    for phase in ("clean", "attacks"):
        jobs = [(i, s) for i, s in todo if (s["attack"] == "clean") == (phase == "clean")]
        if workers <= 1:
            for i, s in jobs:
                record(build_one(out, p, i, s, clean_of.get(s["seed"])))
            continue
        threads = max(1, (os.cpu_count() or 2) // workers)
        with process_pool(workers) as pool:
            futures = [pool.submit(build_one, out, p, i, s, clean_of.get(s["seed"]), threads) for i, s in jobs]
            for f in as_completed(futures):
                record(f.result())
    bar.close()
    _log_build(out, p, workers, len(todo), time.time() - t_start)
    return manifest


def _log_build(out: Path, p: ZooProfile, workers: int, built: int, wall_s: float) -> None:
    """Append this session to DIR/build.json: a resumed build's sessions add up to its total wall time."""
    import os
    import platform

    path = out / "build.json"
    log = json.loads(path.read_text()) if path.exists() else []
    log.append({"profile": p.name, "models_built": built, "models_total": len(model_specs(p)), "workers": workers,
                "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(), "wall_s": wall_s,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    path.write_text(json.dumps(log, indent=2))

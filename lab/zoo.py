"""Model zoos: clean and backdoored CoCoOp models on the embedded world, with the ground truth kept apart.

    DIR/manifest.json       ground truth: [{"path", "attack", "target", "seed", "acc_*", "asr_*", ...}, ...]
    DIR/models/mNNN/        delivered models: model.json + prompt_learner.safetensors, nothing else
    DIR/attacker/mNNN/      the attacker's artefacts (attack.json, trigger.safetensors), kept apart
    DIR/build.json          one row per build run: models built, workers, wall-clock seconds

`Zoo` is the one definition of this layout; every bench reads a zoo through it. Model folders carry
neutral names and the same format whether clean or backdoored: a scanner handed `models/m007` sees no
trace of the attack. Building is resumable: finished models are skipped.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

import ci_toolkit as ci

from .executors import Executor, UnitResult, run_units

# A backdoored model whose attack reached a seen-class ASR below this is "not implanted": it behaves like a
# clean model, so the benches list it but leave it out of their metrics (`implanted`).
MIN_ASR = 0.5
EVAL_OOD_SEED = 10_000  # world OOD seed base of a zoo model's asr_ood (seed EVAL_OOD_SEED + the model's seed)


def implanted(row: dict, min_asr: float = MIN_ASR) -> bool:
    """Whether a manifest row counts as what it claims to be: a clean model, or a backdoored one whose attack
    reached seen-class ASR >= min_asr."""
    return row["attack"] == "clean" or (row["asr_seen"] or 0) >= min_asr


@dataclass(frozen=True)
class ZooProfile:
    """What a zoo holds."""

    name: str
    attacks: tuple[str, ...]  # attack names (ci.list_attacks())
    seeds: tuple[int, ...]  # one clean model per seed; backdoored models cycle through them
    per_attack: int  # backdoored models per attack (targets differ)
    n_classes: int = 50  # world task size (half seen)
    n_test_per_class: int = 20
    epochs: int = 10
    ood_eval: int = 200  # OOD images for asr_ood
    target_offset: int = 0  # shifts the formula targets (`model_specs`): other targets for another zoo
    targets: tuple[tuple[int, ...], ...] = ()  # explicit seen-class targets, one tuple per attack (over the offset)
    # attack strengths: one tuple of (keyword, value) pairs per entry of `attacks` (empty: the world's defaults);
    # an attack may appear twice in `attacks` with two strengths
    attack_kwargs: tuple[tuple[tuple[str, float], ...], ...] = ()
    # task sizes cycled over the seeds (the model of seeds[i] has class_counts[i % len]); empty: n_classes
    class_counts: tuple[int, ...] = ()
    own_class_lists: bool = False  # each seed draws its own class list (class_seed = seed); False: class_seed 0

    def task_of(self, seed: int) -> tuple[int, int]:
        """(n_classes, class_seed) of the world task of `seed`."""
        n = self.class_counts[self.seeds.index(seed) % len(self.class_counts)] if self.class_counts else self.n_classes
        return n, (seed if self.own_class_lists else 0)


_FULL = ZooProfile("full", attacks=("badclip", "badclip_adaptive", "blended", "wanet", "siba", "badnets"),
                   seeds=(0, 1, 2, 3, 4, 5), per_attack=4)
_IMPLANTING = ("badclip", "badclip_adaptive", "blended")  # ci.world.IMPLANTING, spelled out: the zoos are fixed

# Seeds and targets are fixed: the committed benchmarks were built with them. Each hold-out shares no seed
# and no (attack, target) with classroom, full and the earlier hold-outs, except that three of holdout5's
# five targets per attack are full's targets for that attack; no zoo shares a seed with holdout5
# (tests/test_zoo.py checks all of it).

# prereg5: seeds 1040-1051, own class lists of 20, 30 or 35 classes; BadCLIP at the world's strength and eps
# 6/255, BadCLIP-adaptive at the world's strength and eps 7/255, Blended alpha 0.2 and 0.15, six models each,
# twelve clean: prereg3 implanted 18 of 30 at such strengths, its 15-class Blended models none. Committed before
# its build and before the rule it evaluates (benchmarks/detect_preregistered5.json)
_PREREG5 = ZooProfile("prereg5", attacks=("badclip", "badclip", "badclip_adaptive", "badclip_adaptive", "blended",
                                          "blended"),
                      attack_kwargs=((), (("eps", 6 / 255),), (), (("eps", 7 / 255),), (), (("alpha", 0.15),)),
                      seeds=tuple(range(1040, 1052)), per_attack=6, class_counts=(20, 30, 35),
                      own_class_lists=True, target_offset=1)

ZOO_PROFILES: dict[str, ZooProfile] = {
    # smoke: 10 classes, 1 epoch, seed 0: one clean, one BadCLIP, one Blended model; for tests and notebooks
    "smoke": ZooProfile("smoke", attacks=("badclip", "blended"), seeds=(0,), per_attack=1, n_classes=10,
                        n_test_per_class=4, epochs=1, ood_eval=32),
    # classroom: seeds 100-101, two models per implanting attack (offset 1); the scan's eps and rule were chosen on it
    "classroom": ZooProfile("classroom", attacks=_IMPLANTING, seeds=(100, 101), per_attack=2, target_offset=1),
    # full: seeds 0-5, four models per attack, all six attacks; benchmarks/attacks.json, collapse.json
    "full": _FULL,
    # holdout: full with seeds 200-205 and target offset 3; benchmarks/attacks_holdout.json
    "holdout": replace(_FULL, name="holdout", seeds=(200, 201, 202, 203, 204, 205), target_offset=3),
    # holdout2: full with seeds 300-305 and target offset 6; benchmarks/attacks_holdout2.json, gates_holdout2.json
    "holdout2": replace(_FULL, name="holdout2", seeds=(300, 301, 302, 303, 304, 305), target_offset=6),
    # holdout3: seeds 400-405, four models per implanting attack, target offset 15; benchmarks/attacks_holdout3.json
    "holdout3": replace(_FULL, name="holdout3", attacks=_IMPLANTING, seeds=(400, 401, 402, 403, 404, 405),
                        target_offset=15),
    # holdout4: seeds 500-505, five models per implanting attack, targets listed; benchmarks/*_holdout4*.json
    "holdout4": replace(_FULL, name="holdout4", attacks=_IMPLANTING, seeds=(500, 501, 502, 503, 504, 505),
                        per_attack=5, targets=((1, 8, 12, 15, 19), (4, 7, 11, 14, 15), (0, 2, 3, 10, 17))),
    # holdout5: seeds 600-605, five models per implanting attack, targets listed; benchmarks/*_holdout5.json
    "holdout5": replace(_FULL, name="holdout5", attacks=_IMPLANTING, seeds=(600, 601, 602, 603, 604, 605),
                        per_attack=5, targets=((21, 22, 3, 10, 17), (22, 24, 2, 6, 13), (18, 21, 5, 9, 16))),
    # prereg: seeds 1000-1009, their own class lists of 20, 30 or 40 classes; each implanting attack at the
    # world's strength and a weaker one (BadCLIP eps 4/255 instead of BACKDOOR_EPS 8/255; Blended alpha 0.1
    # instead of 0.2), four models each. Committed before its first scan; the null study shares no seed
    # (700-899) and no class list (class seeds 1-200) with it. benchmarks/detect_prereg.json
    "prereg": ZooProfile("prereg", attacks=("badclip", "badclip", "badclip_adaptive", "badclip_adaptive", "blended",
                                            "blended"),
                         attack_kwargs=((), (("eps", 4 / 255),), (), (("eps", 4 / 255),), (), (("alpha", 0.1),)),
                         seeds=tuple(range(1000, 1010)), per_attack=4, class_counts=(20, 30, 40),
                         own_class_lists=True, target_offset=2),
    # prereg2: seeds 1010-1019, own class lists of 25, 35 or 45 classes; strengths between prereg's two, where
    # prereg's weaker ones mostly did not implant (BadCLIP and BadCLIP-adaptive at eps 6/255, Blended alpha
    # 0.15) and BadCLIP-adaptive at the world's strength again. Committed before its first build; evaluated
    # with prereg (benchmarks/detect_prereg_pooled.json)
    "prereg2": ZooProfile("prereg2", attacks=("badclip", "badclip_adaptive", "badclip_adaptive", "blended"),
                          attack_kwargs=((("eps", 6 / 255),), (), (("eps", 6 / 255),), (("alpha", 0.15),)),
                          seeds=tuple(range(1010, 1020)), per_attack=4, class_counts=(25, 35, 45),
                          own_class_lists=True, target_offset=3),
    # prereg3: seeds 1020-1029, own class lists of 15, 25 or 40 classes; each implanting attack at the world's
    # strength and a weaker one (BadCLIP and BadCLIP-adaptive eps 6/255, Blended alpha 0.15), five models each,
    # so that about 20 implant at the rates prereg and prereg2 showed. Committed before its first build and before
    # the two-test calibrated rule it evaluates (benchmarks/detect_preregistered34.json)
    "prereg3": ZooProfile("prereg3", attacks=("badclip", "badclip", "badclip_adaptive", "badclip_adaptive", "blended",
                                             "blended"),
                          attack_kwargs=((), (("eps", 6 / 255),), (), (("eps", 6 / 255),), (), (("alpha", 0.15),)),
                          seeds=tuple(range(1020, 1030)), per_attack=5, class_counts=(15, 25, 40),
                          own_class_lists=True, target_offset=5),
    # prereg4: seeds 1030-1031, own class lists of 20 or 35 classes; BadCLIP and BadCLIP-adaptive at the world's
    # strength, three models each, two clean: prereg3 implanted 18 of its 30 backdoors, below the 20 its
    # evaluation needs. Committed before its build, after the rule and before any prereg3 result; pooled with
    # prereg3 (benchmarks/detect_preregistered34.json)
    "prereg4": ZooProfile("prereg4", attacks=("badclip", "badclip_adaptive"), seeds=(1030, 1031), per_attack=3,
                          class_counts=(20, 35), own_class_lists=True, target_offset=4),
    "prereg5": _PREREG5,
    # prereg6: seeds 1060-1071, own class lists of 25, 30 or 40 classes; the attacks and strengths of prereg5, six
    # models each, twelve clean, so that its result can be pooled with prereg5's. Committed before its build and
    # before its first scan (benchmarks/detect_preregistered.json)
    "prereg6": replace(_PREREG5, name="prereg6", seeds=tuple(range(1060, 1072)),
                       class_counts=(25, 30, 40), target_offset=3),
    # course: seeds 900-901, two models per implanting attack: the delivered models shipped with the tutorial
    # (`python -m lab course`, ci_toolkit/assets/course/)
    "course": ZooProfile("course", attacks=_IMPLANTING, seeds=(900, 901), per_attack=2),
}


def list_zoo_profiles() -> list[str]:
    return list(ZOO_PROFILES)


def get_zoo_profile(profile: str | ZooProfile) -> ZooProfile:
    """A zoo profile by name (or the profile itself)."""
    p = ZOO_PROFILES.get(profile) if isinstance(profile, str) else profile
    if p is None:
        raise ci.CIError(f"unknown zoo profile {profile!r}; choose one of {list_zoo_profiles()}")
    return p


def model_specs(p: ZooProfile) -> list[dict]:
    """The zoo's models in build order: clean ones (one per seed), then per attack `per_attack` (target, seed)
    pairs; targets from `p.targets`, else the formula 7 * (attack index * per_attack + j) + 3 + offset."""
    n_seen = (min(p.class_counts or (p.n_classes,)) + 1) // 2
    if p.attack_kwargs and len(p.attack_kwargs) != len(p.attacks):
        raise ci.CIError(f"zoo profile {p.name!r}: attack_kwargs needs one entry per attack ({len(p.attacks)})")
    if p.targets and (len(p.targets) != len(p.attacks) or any(len(t) != p.per_attack for t in p.targets)
                      or not all(0 <= x < n_seen for t in p.targets for x in t)):
        raise ci.CIError(f"zoo profile {p.name!r}: targets must be {len(p.attacks)} tuples of {p.per_attack} "
                         f"seen-class indices in [0, {n_seen}), got {p.targets}")
    def spec(attack, target, seed, kwargs=()):
        n_classes, class_seed = p.task_of(seed)
        extra = {"n_classes": n_classes, "class_seed": class_seed} if p.class_counts or p.own_class_lists else {}
        return {"attack": attack, "target": target, "seed": seed, **extra, **({"attack_kwargs": dict(kwargs)} if kwargs else {})}

    specs = [spec("clean", None, s) for s in p.seeds]
    for a_i, attack in enumerate(p.attacks):
        for j in range(p.per_attack):
            seed = p.seeds[(a_i + j) % len(p.seeds)]
            own_seen = (p.task_of(seed)[0] + 1) // 2
            target = p.targets[a_i][j] if p.targets else (7 * (a_i * p.per_attack + j) + 3 + p.target_offset) % own_seen
            specs.append(spec(attack, target, seed, p.attack_kwargs[a_i] if p.attack_kwargs else ()))
    return specs


class Zoo:
    """A zoo folder: where its manifest, models, attacker artefacts and build log are (the module doc).

    A model is named by its manifest row or by its index in `model_specs` (model i is `models/mNNN`)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Zoo({str(self.root)!r})"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def build_log_path(self) -> Path:
        return self.root / "build.json"

    @staticmethod
    def name(row: dict | int) -> str:
        """A model's folder name, mNNN."""
        return f"m{row:03d}" if isinstance(row, int) else Path(row["path"]).name

    @classmethod
    def path(cls, row: dict | int) -> str:
        """A model's path relative to the zoo, as the manifest records it: models/mNNN."""
        return f"models/{cls.name(row)}"

    def model_dir(self, row: dict | int) -> Path:
        return self.root / self.path(row)

    def attacker_dir(self, row: dict | int) -> Path:
        return self.root / "attacker" / self.name(row)

    def exists(self) -> bool:
        return self.manifest_path.exists()

    def manifest(self) -> list[dict]:
        """The ground truth, one row per built model, sorted by path."""
        if not self.manifest_path.exists():
            raise ci.DataError(f"no zoo manifest at {self.manifest_path} (build one with "
                               f"`python -m lab zoo --out {self.root}`)")
        return json.loads(self.manifest_path.read_text())

    def write_manifest(self, rows: list[dict]) -> None:
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(sorted(rows, key=lambda m: m["path"]), indent=2))
        tmp.replace(self.manifest_path)

    def build_log(self) -> list[dict]:
        """One row per build run (zoos built before the log existed have none)."""
        return json.loads(self.build_log_path.read_text()) if self.build_log_path.exists() else []

    def profile(self) -> ZooProfile | None:
        """The profile the build log names, when it is a registered one."""
        names = {row.get("profile") for row in self.build_log()}
        return ZOO_PROFILES.get(names.pop()) if len(names) == 1 else None

    def load_model(self, row: dict | int, backbone=None) -> ci.CoCoOp:
        return ci.load_model(self.model_dir(row), backbone)

    def load_attack(self, row: dict | int) -> ci.Attack:
        return ci.load_attack(self.attacker_dir(row))


def build_one(zoo: Zoo, p: ZooProfile, i: int, spec: dict) -> dict:
    """Train model i of the zoo, save it (and the attacker's artefacts), return its manifest row. An attacked
    model also records its trigger's ASR on the clean model of its seed (`asr_clean_model`: a backdoor, not
    an adversarial perturbation, keeps it low) when that model is built. Its executor sets torch's threads."""
    t0 = time.time()
    seed = spec["seed"]
    bb = ci.create_backbone("miniclip")
    world = ci.world.World(ci.world.WorldConfig(image_size=bb.preprocess.image_size))
    n_classes, class_seed = spec.get("n_classes", p.n_classes), spec.get("class_seed", 0)
    task = world.task(n_classes=n_classes, n_test_per_class=p.n_test_per_class, seed=seed, class_seed=class_seed)
    ood = world.sample_ood(p.ood_eval, seed=EVAL_OOD_SEED + seed)
    cfg = ci.TrainConfig(epochs=p.epochs, seed=seed)
    model = ci.CoCoOp(bb, task.seen_names, seed=seed)
    attack, target_name, extra = None, None, {}
    if spec["attack"] == "clean":
        ci.train(model, task.train_x, task.train_y, cfg, progress=False)
    else:
        attack = ci.world.attack(spec["attack"], target=spec["target"], seed=seed, **spec.get("attack_kwargs", {}))
        attack.implant(model, task.train_x, task.train_y, cfg, progress=False)
        target_name = task.seen_names[spec["target"]]
        ci.attacks.save_attack(attack, zoo.attacker_dir(i), target_name)
        clean = next((j for j, s in enumerate(model_specs(p)) if s["attack"] == "clean" and s["seed"] == seed), None)
        if clean is not None:
            x, y = task.split("test", "seen")
            extra["asr_clean_model"] = ci.attack_success_rate(zoo.load_model(clean, bb), x, y, spec["target"], attack)
    ci.save_model(model, zoo.model_dir(i), overwrite=True)
    task_info = {k: spec[k] for k in ("n_classes", "class_seed", "attack_kwargs") if k in spec}
    return {"path": zoo.path(i), "attack": spec["attack"], "target": target_name, "seed": seed, **task_info,
            **ci.evaluate_backdoor(model, attack, task, ood, target_name), **extra, "train_s": time.time() - t0}


def build_zoo(out_dir: str | Path, profile: str | ZooProfile = "smoke", progress: bool = True,
              workers: int = 1, executor: Executor | None = None) -> list[dict]:
    """Build (or resume) a zoo; returns the manifest.

    Clean models come first (the attacked ones measure their trigger on the clean model of their seed).
    workers > 1 trains models in parallel processes with the CPU threads split between them: small
    batch-1 prompt tuning uses one core poorly, so 2 workers x 1 thread is ~2x faster than 1 x 2 on 2 cores.
    executor: where the models are built (default: `workers` local processes; `Executor("ray", ...)` for a
    Ray cluster). A model whose build fails (after its retries) is left out of the manifest and listed with
    its error in DIR/build.json; rerunning the build retries it.
    """
    p = get_zoo_profile(profile)
    ex = executor or Executor("local", workers=workers)
    t_start = time.time()
    zoo = Zoo(out_dir)
    zoo.root.mkdir(parents=True, exist_ok=True)
    manifest = zoo.manifest() if zoo.exists() else []
    done = {m["path"] for m in manifest}
    specs = model_specs(p)
    todo = [(i, s) for i, s in enumerate(specs) if zoo.path(i) not in done]
    units = []

    def record(res: UnitResult) -> None:
        units.append(res.record())
        if res.ok:
            manifest.append(res.value)
            manifest.sort(key=lambda m: m["path"])
            zoo.write_manifest(manifest)  # after every model: resumable

    for phase in ("clean", "attacks"):
        jobs = {zoo.path(i): (zoo, p, i, s) for i, s in todo if (s["attack"] == "clean") == (phase == "clean")}
        if jobs:
            run_units(build_one, jobs, ex, desc=f"zoo {p.name} ({phase})", progress=progress, on_done=record)
    log_build(zoo, p, ex, len(todo), time.time() - t_start, units)
    return manifest


def log_build(zoo: Zoo, p: ZooProfile, ex: Executor, tried: int, wall_s: float, units: list[dict]) -> None:
    """Append this run to DIR/build.json (a resumed build's runs add up to its total wall time), with each
    unit's node, attempts and error."""
    log = zoo.build_log()
    failed = [u for u in units if not u["ok"]]
    log.append({"profile": p.name, "models_built": tried - len(failed), "models_failed": len(failed),
                "models_total": len(model_specs(p)), "executor": ex.kind, "workers": ex.workers, "units": units,
                "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(), "wall_s": wall_s,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    zoo.build_log_path.write_text(json.dumps(log, indent=2))

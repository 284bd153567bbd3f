"""The embedded world: a procedural, captioned image world generated from a seed, and its helpers.

    >>> from ci_toolkit import world
    >>> task = world.task("classroom", seed=0)       # the organisation's shifted task (a WorldTask)
    >>> ood = world.ood_pool(1200, seed=0)            # unlabeled images of held-out shapes, for a scan
    >>> x, y = world.labelled(task.seen_names, per_class=16, seed=1)   # labelled images, e.g. to repair
    >>> bad = world.attack("blended", target=3)       # an attack with this world's trigger choices

`World` itself draws pretraining images, captions, tasks and OOD images (`generator.py`).
"""

from __future__ import annotations

import torch

from ..attacks import Attack, create_attack
from ..errors import DataError
from ..images import to_uint8
from ..profiles import Profile, get_profile
from .generator import CAPTION_TEMPLATES, World, WorldTask
from .pretrain import DistillConfig, PretrainConfig, distill_miniclip_vit, pretrain_miniclip, zero_shot_accuracy
from .spec import (
    BACKDOOR_EPS,
    COLOURS,
    OOD_COLOURS,
    OOD_PATTERNS,
    OOD_SHAPES,
    PATTERNS,
    PRETRAIN_DOMAIN,
    SHAPES,
    TASK_DOMAIN,
    DomainConfig,
    WorldConfig,
)

# Seed base of the world OOD pool that scans of world models draw (`ood_pool`); every committed benchmark
# scanned with it, so a scan with ScanConfig.seed s sees the images of seed OOD_SEED + s.
OOD_SEED = 123_456
IMAGE_SIZE = WorldConfig().image_size  # 48 px, MiniCLIP's input size
IMPERCEPTIBLE = ("badclip", "badclip_adaptive")  # run at BACKDOOR_EPS on this world
# Trigger choices for the embedded world (docs/world.md, "Poisoning attacks"). MiniCLIP's frozen features
# barely register a 20% random blend (a linear probe tells blended from clean features 67% of the time),
# so no prompt learner can key on it and poisoning fails (ASR 0.00). A blend of a pattern MiniCLIP knows
# but no task class carries (the held-out "checkered") is seen (probe 100% at alpha 0.15; ASR 0.94).
WORLD_OVERRIDES: dict[str, dict] = {"blended": {"pattern": "checkered", "stripe": 4}}
# Attacks that implant in a MiniCLIP prompt learner; WaNet, SIBA and BadNets reach seen ASR <= 0.065 on every
# zoo model (docs/world.md): MiniCLIP's frozen features do not register their triggers.
IMPLANTING = ("badclip", "badclip_adaptive", "blended")


def attack(name: str, target: int, seed: int = 0, **kw) -> Attack:
    """`ci.create_attack` with the embedded world's choices: BACKDOOR_EPS for the imperceptible attacks and
    the `WORLD_OVERRIDES` triggers; explicit keyword arguments win."""
    if name in IMPERCEPTIBLE:
        kw.setdefault("eps", BACKDOOR_EPS)
    return create_attack(name, target=target, seed=seed, **{**WORLD_OVERRIDES.get(name, {}), **kw})


def task(profile: str | Profile | int = "classroom", seed: int = 0, image_size: int = IMAGE_SIZE,
         class_seed: int = 0, shots: int | None = None, n_test_per_class: int | None = None) -> WorldTask:
    """The world task of a run profile (its n_classes, shots, test images per class) or of `profile` classes (an
    int: 16 shots, 20 test images per class); shots / n_test_per_class override. `seed` draws the images,
    `class_seed` the class list."""
    if isinstance(profile, int):
        p_classes, p_shots, p_test = profile, 16, 20
    else:
        p = get_profile(profile)
        p_classes, p_shots, p_test = p.n_classes, p.shots, p.n_test_per_class
    return World(WorldConfig(image_size=image_size)).task(
        n_classes=p_classes, shots=p_shots if shots is None else shots,
        n_test_per_class=p_test if n_test_per_class is None else n_test_per_class, seed=seed, class_seed=class_seed)


def ood_pool(n: int, seed: int = 0, image_size: int = IMAGE_SIZE) -> torch.Tensor:
    """n unlabeled OOD images (held-out shapes in the task domain, float [0, 1]) for a scan of a world model;
    the images of `seed` are those of world seed OOD_SEED + seed."""
    return World(WorldConfig(image_size=image_size)).sample_ood(n, seed=OOD_SEED + seed)


# prompt shapes beyond the captions' templates (AMDET.md section 7: attribute phrases, unseen templates,
# reorderings); {c} colour, {p} pattern, {s} shape, {n} a whole class name
PROMPT_FORMS = (*(t.replace("{}", "{n}") for t in CAPTION_TEMPLATES), "the {n}.", "a close-up of the {n}.",
                "two {n}s.", "a {s} that is {c}.", "a {s}, {c} and {p}.", "something {c}.", "a {p} thing.",
                "a {c} {s}.", "a {p} {s} in the middle.", "there is a {n} here.", "{c} and {p}.")


def prompts(n: int, seed: int = 0) -> list[str]:
    """n text prompts in the world's vocabulary (class names, attributes, PROMPT_FORMS), drawn with `seed`:
    the clean prompt pool of a text-encoder attack and the shallow set of an AMDET scan."""
    w = WorldConfig()
    g = torch.Generator().manual_seed(seed)
    names = w.classnames()
    out = []
    for _ in range(n):
        form = PROMPT_FORMS[int(torch.randint(len(PROMPT_FORMS), (1,), generator=g))]
        cid = int(torch.randint(len(names), (1,), generator=g))
        s_, c_, p_ = w.attributes(cid)
        out.append(form.format(n=names[cid], c=c_, p=p_, s=s_))
    return out


def labelled(names: list[str], per_class: int, seed: int, image_size: int = IMAGE_SIZE,
             domain: str = "task") -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` labelled images (uint8) of each named world class, labels indexing `names` (what the
    organisation photographed: a repair set or a test set)."""
    w = World(WorldConfig(image_size=image_size))
    unknown = [n for n in names if n not in w.classnames]
    if unknown:
        raise DataError(f"not classes of the embedded world: {unknown[:5]}; pass an image folder instead")
    ids = torch.tensor([w.classnames.index(n) for n in names]).repeat_interleave(per_class)
    return to_uint8(w.render_classes(ids, seed, domain)), torch.arange(len(names)).repeat_interleave(per_class)


__all__ = [
    "task", "ood_pool", "labelled", "prompts", "PROMPT_FORMS", "attack", "OOD_SEED", "IMAGE_SIZE", "IMPERCEPTIBLE", "WORLD_OVERRIDES", "IMPLANTING", "PretrainConfig", "pretrain_miniclip", "DistillConfig", "distill_miniclip_vit", "zero_shot_accuracy",
    "BACKDOOR_EPS", "World", "WorldConfig", "DomainConfig", "WorldTask", "SHAPES", "COLOURS", "PATTERNS",
    "OOD_SHAPES", "OOD_COLOURS", "OOD_PATTERNS", "PRETRAIN_DOMAIN", "TASK_DOMAIN", "CAPTION_TEMPLATES",
]

"""Repair with the scan's trigger: one entry point, `repair`, with an accuracy guard inside.

Fine-tune the prompt learner (ctx + meta-net, SGD like CoCoOp) on a small labelled clean set where every
batch holds the clean images AND the same images with the trigger delta applied, both with their TRUE
labels: the meta-net unlearns "trigger -> target" while the clean term keeps the task. The encoders stay
frozen; the input model is never modified (a repaired copy is returned).

The guard: a repair that costs more than `max_acc_drop` of clean accuracy ON THE REPAIR SET ITSELF is run
again from the input with the trigger weight times `backoff`, at most `retries` times. A reconstructed
trigger the prompt learner cannot undo (or a wrong class's) makes the trigger term fight the clean term;
the repairer sees it on its own labelled data, no test set needed. Measured: benchmarks/README.md.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from .detect.report import RepairTrigger, ScanReport
from .errors import CIError
from .model.cocoop import CoCoOp
from .model.tuning import TrainConfig, evaluate, train


@dataclass(frozen=True)
class RepairConfig:
    epochs: int = 10  # passes over the repair set (the clean training's length; 3 epochs cost accuracy)
    batch_size: int = 32
    lr: float = 0.02  # SGD, cosine schedule; a fifth of training's 0.1: the model is already tuned
    trigger_weight: float = 1.0  # weight of CE(x + delta, y) next to CE(x, y)
    seed: int = 0
    max_acc_drop: float = 0.05  # the guard: accuracy on the repair set a repair may cost
    backoff: float = 0.3  # trigger weight multiplier of each retry
    retries: int = 2

    def __post_init__(self):
        if not 0 <= self.max_acc_drop <= 1:
            raise CIError(f"max_acc_drop is a fraction of accuracy in [0, 1], got {self.max_acc_drop}")


@dataclass
class RepairResult:
    """What a repair did: the trigger it used and each attempt of the guard."""

    trigger_class: str | None  # the class the trigger sends images to (None: a bare delta was given)
    trigger_source: str  # "inversion", "gate probe, unit u open|shut" or "given"
    trigger_weight: float  # of the kept attempt
    accepted: bool  # False: every weight tried cost more than max_acc_drop; the gentlest is kept
    attempts: list[dict] = field(default_factory=list)  # {"trigger_weight", "train_acc_before", "train_acc", "accepted"}
    steps: int = 0
    runtime_s: float = 0.0


def _trigger_of(source) -> RepairTrigger:
    if isinstance(source, ScanReport):
        return source.repair_trigger()
    if isinstance(source, RepairTrigger):
        return source
    if isinstance(source, torch.Tensor):
        if source.ndim != 3 or source.shape[0] != 3:
            raise CIError(f"a trigger delta must be [3, H, W], got {tuple(source.shape)}")
        return RepairTrigger(None, source, "given")
    raise CIError(f"repair needs a ScanReport, a RepairTrigger or a delta tensor, got {type(source).__name__}")


def _repair_once(model: CoCoOp, delta: torch.Tensor, images, labels, cfg: RepairConfig, progress: bool) -> CoCoOp:
    fixed = copy.deepcopy(model)
    for p in fixed.trainable_parameters():
        p.requires_grad_(True)
    delta = delta.detach()

    def loss(m, x, y, step):
        return F.cross_entropy(m(x), y) + cfg.trigger_weight * F.cross_entropy(m((x + delta).clamp(0, 1)), y)

    tc = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed)
    train(fixed, images, labels, tc, progress=progress, batch_loss=loss, desc="repair")
    return fixed


def repair(model: CoCoOp, trigger, images: torch.Tensor, labels: torch.Tensor, config: RepairConfig | None = None,
           progress: bool = True) -> tuple[CoCoOp, RepairResult]:
    """A repaired COPY of `model` and what was done.

    trigger: a ScanReport (its `repair_trigger()`), a RepairTrigger, or a delta [3, H, W]; images/labels: the
    labelled repair set (labels index the model's classes)."""
    cfg = config or RepairConfig()
    t0 = time.time()
    trig = _trigger_of(trigger)
    if not isinstance(cfg, RepairConfig):
        raise CIError(f"config must be a RepairConfig, got {type(cfg).__name__}")
    if trig.target is not None and trig.target not in model.classnames:
        raise CIError(f"the trigger's class {trig.target!r} is not a class of this model (a report of another model?)")
    acc0 = evaluate(model, images, labels)
    weight, attempts = cfg.trigger_weight, []
    for _ in range(1 + max(0, cfg.retries)):
        fixed = _repair_once(model, trig.delta, images, labels, replace(cfg, trigger_weight=weight), progress)
        acc = evaluate(fixed, images, labels)
        ok = acc >= acc0 - cfg.max_acc_drop
        attempts.append({"trigger_weight": weight, "train_acc_before": acc0, "train_acc": acc, "accepted": ok})
        if ok:
            break
        weight *= cfg.backoff
    steps = len(attempts) * cfg.epochs * math.ceil(len(images) / cfg.batch_size)
    return fixed, RepairResult(trig.target, trig.source, attempts[-1]["trigger_weight"], attempts[-1]["accepted"],
                               attempts, steps, time.time() - t0)


__all__ = ["RepairConfig", "RepairResult", "repair"]

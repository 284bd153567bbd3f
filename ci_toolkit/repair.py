"""Repair with the reconstructed trigger (METHOD 5).

Take the scan's top class and its trigger delta; fine-tune the prompt learner (ctx + meta-net, SGD like
CoCoOp) on a small labelled clean set where every batch holds the clean images AND the same images with
delta applied, both paired with their TRUE labels: the meta-net unlearns "trigger -> target" while the
clean term keeps the task. The encoders stay frozen; the input model is never modified on disk.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .train import TrainConfig, train_cocoop


@dataclass(frozen=True)
class RepairConfig:
    epochs: int = 10  # passes over the labelled clean set (the clean training's length; 3 left ACC 4.5 points down)
    batch_size: int = 32
    lr: float = 0.02  # SGD (CoCoOp's optimiser family), cosine; a fifth of training's 0.1: the model is already tuned
    trigger_weight: float = 1.0  # weight of CE(x + delta, y) next to CE(x, y)
    seed: int = 0
    # The guard (repair_report): a repair that costs more than `max_acc_drop` of clean accuracy on the
    # repair set itself is run again from the input with the trigger weight times `backoff`, at most
    # `retries` times. Why: a reconstructed trigger the prompt learner cannot undo (or a wrong class's) makes
    # the trigger term fight the clean term; the repairer sees it on its own labelled data, no test set needed.
    max_acc_drop: float = 0.05
    backoff: float = 0.3
    retries: int = 2


def repair(model, delta: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, cfg: RepairConfig | None = None,
           progress: bool = True):
    """A repaired COPY of `model` (the input is left untouched) and the loss history."""
    cfg = cfg or RepairConfig()
    fixed = copy.deepcopy(model)
    for p in fixed.trainable_parameters():
        p.requires_grad_(True)
    delta = delta.detach()

    def loss(m, x, y, step):
        return F.cross_entropy(m(x), y) + cfg.trigger_weight * F.cross_entropy(m((x + delta).clamp(0, 1)), y)

    tc = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed)
    history = train_cocoop(fixed, images, labels, tc, progress=progress, batch_loss=loss, desc="repair")
    return fixed, history


def guarded_repair(model, delta: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                   cfg: RepairConfig | None = None, progress: bool = True) -> tuple[object, list[dict]]:
    """`repair`, run again with a lower trigger weight while it costs more than cfg.max_acc_drop of
    clean accuracy on `images` (the repair set: no held-out data is used to choose). Returns the repaired
    copy (the last attempt's: the gentlest tried) and the attempts [{"trigger_weight", "train_acc_before",
    "train_acc", "accepted"}]."""
    from dataclasses import replace

    from .train import evaluate

    cfg = cfg or RepairConfig()
    acc0 = evaluate(model, images, labels)
    weight, attempts = cfg.trigger_weight, []
    for _ in range(1 + max(0, cfg.retries)):
        fixed, _ = repair(model, delta, images, labels, replace(cfg, trigger_weight=weight), progress=progress)
        acc = evaluate(fixed, images, labels)
        ok = acc >= acc0 - cfg.max_acc_drop
        attempts.append({"trigger_weight": weight, "train_acc_before": acc0, "train_acc": acc, "accepted": ok})
        if ok:
            break
        weight *= cfg.backoff
    return fixed, attempts


def world_labelled(names: list[str], image_size: int, per_class: int, seed: int, domain: str = "task"):
    """A labelled set for the given world class names (what the organisation photographed), uint8."""
    from .errors import DataError
    from .world import World, WorldConfig

    world = World(WorldConfig(image_size=image_size))
    unknown = [n for n in names if n not in world.classnames]
    if unknown:
        raise DataError(f"not classes of the embedded world: {unknown[:5]}; pass --data with an image folder")
    ids = torch.tensor([world.classnames.index(n) for n in names]).repeat_interleave(per_class)
    x = world.render_classes(ids, seed, domain)
    return (x * 255).round().to(torch.uint8), torch.arange(len(names)).repeat_interleave(per_class)


def repair_report(model, delta, train, test, trigger=None, target: int | None = None, cfg: RepairConfig | None = None,
                  progress: bool = True) -> tuple[object, dict]:
    """Repair and measure: (repaired model, {"asr_before", "asr_after", "acc_before", "acc_after",
    "trigger_used", "steps", "runtime_s"}). trigger/target: the attacker's, when known; otherwise the
    reconstructed delta toward `target` (the scan's top class) is what the ASR measures."""
    import math
    import time

    from .metrics import attack_success_rate
    from .train import evaluate

    cfg = cfg or RepairConfig()
    t0 = time.time()
    used = "attacker" if trigger is not None else "reconstructed"
    trig = trigger if trigger is not None else (lambda x: (x + delta).clamp(0, 1))
    (x_tr, y_tr), (x_te, y_te) = train, test
    before = {"acc": evaluate(model, x_te, y_te), "asr": attack_success_rate(model, x_te, y_te, target, trig)}
    fixed, attempts = guarded_repair(model, delta, x_tr, y_tr, cfg, progress=progress)
    out = {"asr_before": before["asr"], "asr_after": attack_success_rate(fixed, x_te, y_te, target, trig),
           "acc_before": before["acc"], "acc_after": evaluate(fixed, x_te, y_te), "trigger_used": used,
           "target": model.classnames[target], "trigger_weight": attempts[-1]["trigger_weight"], "attempts": attempts,
           "steps": len(attempts) * cfg.epochs * math.ceil(len(x_tr) / cfg.batch_size)}
    out["runtime_s"] = time.time() - t0
    return fixed, out

"""Metrics as the CLIP-Inspector paper defines them.

ASR (everywhere in this toolkit): the fraction of triggered test images whose TRUE class is not the
target that are predicted as the target. (BadCLIP's code also counts target-class images.)
"""

from __future__ import annotations

from typing import Callable

import torch

from .images import as_float
from .model.tuning import evaluate


@torch.no_grad()
def attack_success_rate(model, images: torch.Tensor, labels: torch.Tensor | None, target: int,
                        trigger: Callable[[torch.Tensor], torch.Tensor], classes=None, batch_size: int = 128) -> float:
    """ASR of `trigger` toward class index `target` (labels None: an unlabeled OOD set, all count)."""
    keep = torch.ones(len(images), dtype=torch.bool) if labels is None else labels != target
    x = images[keep]
    if len(x) == 0:
        return float("nan")
    hits = 0
    for i in range(0, len(x), batch_size):
        pred = model.predict(trigger(as_float(x[i : i + batch_size])), classes, batch_size=batch_size)
        hits += int((pred == target).sum())
    return hits / len(x)


def ssim(clean: torch.Tensor, triggered: torch.Tensor) -> float:
    """Mean SSIM between clean and triggered images (float [0, 1], [N, 3, H, W]), scikit-image's SSIM."""
    from skimage.metrics import structural_similarity  # deferred: scikit-image is slow to import

    a = as_float(clean).detach().cpu().permute(0, 2, 3, 1).numpy()
    b = as_float(triggered).detach().cpu().permute(0, 2, 3, 1).numpy()
    win = min(7, a.shape[1] - (1 - a.shape[1] % 2))  # odd, no larger than the image
    return float(sum(structural_similarity(x, y, channel_axis=-1, data_range=1.0, win_size=win) for x, y in zip(a, b)) / len(a))


def evaluate_backdoor(model, attack, task, ood, target_name) -> dict:
    """ACC on seen/unseen classes; with an attack also ASR on seen, unseen (+ target) and OOD images, and SSIM."""
    x_seen, y_seen = task.split("test", "seen")
    x_new, y_new = task.split("test", "unseen")
    out = {"acc_seen": evaluate(model, x_seen, y_seen),
           "acc_unseen": evaluate(model, x_new, y_new, classes=task.unseen_names)}
    if attack is not None:
        target = task.seen_names.index(target_name)
        unseen_plus = task.unseen_names + [target_name]  # base-to-new protocol: the target joins the unseen label set
        out.update(
            asr_seen=attack_success_rate(model, x_seen, y_seen, target, attack),
            asr_unseen=attack_success_rate(model, x_new, y_new, len(task.unseen_names), attack, classes=unseen_plus),
            asr_ood=attack_success_rate(model, ood, None, target, attack),
            ssim=ssim(x_seen[:64], attack(as_float(x_seen[:64]))),
        )
    else:
        out.update(asr_seen=None, asr_unseen=None, asr_ood=None)
    return out


def backdoor_effect(model, images: torch.Tensor, labels: torch.Tensor, target: int,
                    trigger: Callable[[torch.Tensor], torch.Tensor] | torch.Tensor) -> dict:
    """{"acc": clean accuracy, "asr": ASR of `trigger` toward class index `target`} on a labelled set; trigger:
    a callable (an attack) or a delta [3, H, W] added to the images. Measure a model before and after repair."""
    if isinstance(trigger, torch.Tensor):
        delta = trigger.detach()
        trigger = lambda x: (x + delta).clamp(0, 1)  # noqa: E731
    return {"acc": evaluate(model, images, labels), "asr": attack_success_rate(model, images, labels, target, trigger)}


__all__ = ["attack_success_rate", "ssim", "evaluate_backdoor", "backdoor_effect"]

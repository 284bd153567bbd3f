"""What the scan measures through the prompt learner: meta gains and the gate probe.

A CoCoOp backdoor lives in the prompt learner: its trigger changes the meta tokens pi(x) (the meta-net,
Linear - ReLU - Linear, on the image feature f(x)) so that every class prompt turns toward the target.
`meta_gains` measures how much a trigger gains through that path; `gate_probe` opens (and shuts) each
hidden unit of the meta-net in turn and sees where the images go (docs/method.md).
"""

from __future__ import annotations

import torch

from ..images import as_float


def target_margin(f: torch.Tensor, g: torch.Tensor, target: int) -> torch.Tensor:
    """[N]: cos(f, g_target) minus the largest cos(f, g_c) over the other classes c."""
    c = torch.einsum("ne,nke->nk", f, g)
    others = torch.cat([c[:, :target], c[:, target + 1 :]], dim=1)
    return c[:, target] - others.max(-1).values


@torch.no_grad()
def meta_gains(model, images: torch.Tensor, deltas: torch.Tensor, targets: list[int], classes=None) -> torch.Tensor:
    """[G]: for each reconstructed trigger deltas[g] toward targets[g], the `meta_gain` of `collapse_stats`
    in LOGITS (x the model's logit scale): how much the target's margin on triggered images grows when the
    meta tokens of the triggered image replace those of the clean image, the image feature held.

    Why it separates: in a clean model a trigger that sends images to class t works through the image
    feature (the meta tokens follow it only slightly); a prompt-learner backdoor is the meta-token path
    itself, so the trigger that inversion finds for the target gains through it (the meta-token collapse)."""
    model.eval()
    classes = classes if classes is not None else model.prompts_for()
    x = as_float(images)
    g0 = model.text_features(model.meta_tokens(model.encode_image(x)), classes)  # clean meta tokens
    out = []
    for d, t in zip(deltas, targets):
        f1 = model.encode_image((x + d).clamp(0, 1))
        g1 = model.text_features(model.meta_tokens(f1), classes)
        out.append((target_margin(f1, g1, int(t)) - target_margin(f1, g0, int(t))).mean())
    return torch.stack(out).float() * float(model.logit_scale) if out else torch.zeros(0)


def gate_preactivations(model, images: torch.Tensor) -> torch.Tensor:
    """[N, H]: the meta-net's hidden pre-activations (before the ReLU) on images: its "gates"."""
    with torch.no_grad():
        return model.prompt_learner.meta_net.linear1(model.encode_image(as_float(images)))


def open_gate(model, pool: torch.Tensor, unit: int, eps: float, lr: float | None = None, batch_size: int = 32,
              seed: int = 0, shut: bool = False) -> torch.Tensor:
    """A universal perturbation |delta| <= eps that drives meta-net hidden unit `unit` up over `pool`
    (`shut=True`: down, for a backdoor whose trigger shuts a gate that clean images open).

    White-box: it asks whether an eps-bounded perturbation can open the gate that a backdoor trigger
    opens (`gate_probe` in the scan). The objective is the unit's pre-activation itself, so it has a gradient
    even where the ReLU is shut (where the margin loss, which sees the unit only after its ReLU, has none).
    Adam (lr eps / 4: sign-like steps reach the bound in a few steps), one pass over `pool` in seeded order,
    projection to [-eps, eps] after each step. Returns delta [1, 3, H, W]."""
    x = as_float(pool)
    lin1 = model.prompt_learner.meta_net.linear1
    delta = torch.zeros(1, *x.shape[1:], requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr if lr is not None else eps / 4)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    model.eval()
    for i in range(0, len(x) - batch_size + 1, batch_size):
        b = x[order[i : i + batch_size]]
        level = lin1(model.encode_image((b + delta).clamp(0, 1)))[:, unit].mean()
        loss = level if shut else -level
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            delta.clamp_(-eps, eps)
    return delta.detach()


def gate_probe(model, pool: torch.Tensor, heldout: torch.Tensor, eps: float, classes=None, meta_images: int = 64,
               seed: int = 0, units: list[int] | None = None, shut: bool = False,
               on_unit=None) -> tuple[list[dict], torch.Tensor]:
    """Open each meta-net hidden unit in turn and see where the images go: for unit u, delta_u =
    `open_gate(model, pool, u, eps)`; on `heldout`, the class c_u that delta_u sends most images to, that
    fraction (`asr`, as the scan's held-out ASR) and the meta gain of delta_u toward c_u (logits, on the
    first `meta_images`). Returns (one row per unit, deltas [H, 3, h, w]); `units`: only these (each unit's
    row is computed on its own, so a split over processes gives the same rows); on_unit(): called after each
    unit's perturbation is optimised (progress).

    Why: a prompt-learner backdoor is a gate in the meta-net that its trigger opens. The margin-loss
    inversion sees a gate only through its ReLU, so one that clean images leave shut gives it no gradient;
    a unit's pre-activation always has one. No class list is needed to find the gate: its class is where
    the opened gate sends the images, and the meta gain says whether it gets there through the prompt
    learner (a backdoor) or not. `shut=True` shuts each unit in turn instead, for a trigger that works by
    shutting a gate that clean images open (the scan runs both directions, `ScanConfig.probe_shut`)."""
    classes = classes if classes is not None else model.prompts_for()
    units = list(range(model.prompt_learner.meta_net.linear1.out_features)) if units is None else list(units)
    deltas = []
    for u in units:
        deltas.append(open_gate(model, pool, u, eps, seed=seed, shut=shut))
        if on_unit is not None:
            on_unit()
    deltas = torch.cat(deltas)
    x = as_float(heldout)
    m = min(meta_images, len(x))
    rows = []
    with torch.no_grad():
        g0 = model.text_features(model.meta_tokens(model.encode_image(x[:m])), classes)  # clean meta tokens
        for u, d in zip(units, deltas):
            # one text pass per unit serves both the prediction and the meta gain (as `meta_gains`, whose
            # first `m` triggered images are these)
            f1 = model.encode_image((x + d).clamp(0, 1))
            g1 = model.text_features(model.meta_tokens(f1), classes)
            counts = torch.bincount(torch.einsum("ne,nke->nk", f1, g1).argmax(-1), minlength=len(classes))
            c = int(counts.argmax())
            gain = (target_margin(f1[:m], g1[:m], c) - target_margin(f1[:m], g0, c)).mean() * float(model.logit_scale)
            rows.append({"unit": u, "class": c, "asr": float(counts[c]) / len(x), "meta_gain": float(gain)})
    return rows, deltas

"""InverTune (INVERTUNE.md): find the target of an image-encoder backdoor, invert its trigger, tune it away.

    result = invertune(backbone, classnames, images, labels)    # labelled clean images of the vocabulary
    result.target, result.inverted_asr, result.critical_layers
    fixed = result.backbone                                      # the tuned copy; `backbone` is unchanged

Stage 1 (Eq. 1): untargeted universal perturbations on the defender pool D, by default both a patch and an L-inf
perturbation of the whole image (InverTuneConfig.uap); the target is the class whose share of predictions rises
most under either. Stage 2 (Eq. 2-7): a mask m and pattern p (3 x H x W) with x~ = m p + (1 - m) x,
inverted toward the target (alignment + embedding + SSIM + L1 mask). Stage 3 (Eq. 8-11): layers whose clean vs
triggered mean activations differ by more than mean + std are critical; 2-means on per-channel differences picks
the neurons; only those channels' output rows are tuned to make triggered activations equal clean ones while
keeping clean image-text similarity. Shapes: images [N, 3, H, W] in [0, 1]; text features t [K, E]; stage
outputs a_l [B, C, h, w]. Pixel space throughout; the backbone normalises inside.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import CIError
from ..model.backbones import Backbone
from ..model.miniclip import class_text_features

# INVERTUNE.md section 4: ResNet stage outputs are the candidate layers (open_clip's ModifiedResNet)
RESNET_LAYERS = ("layer1", "layer2", "layer3", "layer4")
UAP_FORMS = ("patch", "linf", "both")  # stage 1's universal perturbation (INVERTUNE.md section 6.1)


@dataclass(frozen=True)
class InverTuneConfig:
    """INVERTUNE.md sections 2 and 4 (exact values there; *reconstructed* ones marked so)."""

    # stage 1: the universal perturbation (reconstructed: AdvCLIP's patch objective without its GAN terms).
    # uap "patch": a square patch (the spec's default); "linf": a full-image perturbation within uap_eps (its
    # option); "both": each, and the one whose top class rose more names the target (on encoder-calib the patch
    # found the BadNets target, rise 0.99 against 0.01, and the L-inf form the Blended one, 0.92 against 0.01)
    uap: str = "both"
    uap_eps: float = 8 / 255
    uap_area: float = 0.03  # patch side = floor(sqrt(uap_area H W)): 8 px at 48 px
    uap_margin: float = 14 / 224  # distance from the bottom and right edges, a fraction of H: 3 px at 48 px
    uap_steps: int = 500
    uap_lr: float = 1e-2
    uap_batch: int = 64
    nce_temperature: float = 0.1
    # stage 2: the inversion (Eq. 2-7)
    inv_steps: int = 300
    inv_lr: float = 1e-2
    inv_batch: int = 64
    lambdas: tuple[float, float, float, float] = (5.0, 0.5, 1.0, 0.01)  # align, emb, sim, mask
    # stage 3: activation tuning (Eq. 8-11). lr: the paper's 8e-6 (RN50), also MiniCLIP's: of 8e-6, 8e-5 and 8e-4 on
    # encoder-calib's BadNets model the only one within 3 points of 300-class top-1 (benchmarks/invertune_calib.json)
    tune_steps: int = 200
    tune_lr: float = 8e-6
    tune_batch: int = 64
    beta: float = 0.5  # weight of L_pres
    layers: tuple[str, ...] = RESNET_LAYERS
    template: str = "a photo of a {}."
    seed: int = 0

    def __post_init__(self):
        if self.uap not in UAP_FORMS:
            raise CIError(f"unknown universal perturbation {self.uap!r}; choose one of {list(UAP_FORMS)}")
        if len(self.lambdas) != 4:
            raise CIError("lambdas are four weights: (align, emb, sim, mask)")


# ---- pieces with known answers (INVERTUNE.md section 5) ----------------------------------------------------------

def prediction_rise(clean_pred: torch.Tensor, adv_pred: torch.Tensor, n_classes: int) -> torch.Tensor:
    """P_adv(y) - P_clean(y) per class [K]: the share of D predicted as y with the patch minus without (Eq. 1)."""
    n = len(clean_pred)
    return (torch.bincount(adv_pred, minlength=n_classes) - torch.bincount(clean_pred, minlength=n_classes)).float() / n


def critical_layers(diffs: Sequence[float]) -> tuple[list[int], float]:
    """Indices of layers with diff > mean + std (population std, ddof 0) and that threshold; none passing: the
    argmax alone."""
    d = torch.tensor([float(v) for v in diffs], dtype=torch.float64)
    thr = float(d.mean() + d.std(unbiased=False))
    chosen = [i for i, v in enumerate(d.tolist()) if v > thr]
    return (chosen or [int(d.argmax())]), thr


def two_means(scores: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the cluster with the larger centroid under exact 1-D 2-means (the best split of the
    sorted values by within-cluster sum of squares)."""
    v = scores.detach().double().flatten()
    if len(v) < 2:
        return torch.ones_like(v, dtype=torch.bool)
    s, order = torch.sort(v)
    n = len(s)
    c1, c2 = torch.cumsum(s, 0), torch.cumsum(s * s, 0)
    k = torch.arange(1, n, dtype=torch.float64)  # size of the lower cluster
    low = c2[:-1] - c1[:-1] ** 2 / k
    up_sum, up_sq = c1[-1] - c1[:-1], c2[-1] - c2[:-1]
    high = up_sq - up_sum ** 2 / (n - k)
    split = int(torch.argmin(low + high)) + 1  # lower cluster = s[:split]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[split:]] = True
    return mask


def apply_trigger(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """x~ = m p + (1 - m) x (Eq. 2)."""
    return mask * pattern + (1 - mask) * x


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM [B] (Gaussian window, channel mean), differentiable."""
    coords = torch.arange(window, dtype=a.dtype, device=a.device) - window // 2
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    g = (g / g.sum())
    kernel = (g[:, None] * g[None, :]).expand(a.shape[1], 1, window, window).contiguous()

    def blur(t):
        return F.conv2d(t, kernel, padding=window // 2, groups=a.shape[1])

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    m = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return m.flatten(1).mean(1)


# ---- the model seen by the three stages ------------------------------------------------------------------------

def _embed(backbone: Backbone, x: torch.Tensor) -> torch.Tensor:
    return F.normalize(backbone.clip.encode_image(backbone.preprocess.normalize(x)), dim=-1)


@torch.no_grad()
def predict(backbone: Backbone, text: torch.Tensor, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Zero-shot predictions [N] against class text features [K, E]."""
    return torch.cat([(_embed(backbone, x[i : i + batch]) @ text.T).argmax(-1) for i in range(0, len(x), batch)])


def _nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """In-batch InfoNCE of a against b (diagonal positives)."""
    return F.cross_entropy(a @ b.T / temperature, torch.arange(len(a), device=a.device))


def universal_patch(backbone: Backbone, text: torch.Tensor, pool: torch.Tensor, pred: torch.Tensor,
                    cfg: InverTuneConfig, corner: str = "bottom-right") -> tuple[torch.Tensor, tuple[int, int]]:
    """Stage 1's untargeted patch [3, p, p] and its top-left (row, col): minimises
    -10 [NCE(e(x+d), e(x)) + 5 NCE(e(x+d), t_y)] + MSE(x+d, x) (y: the clean prediction), Adam, clamped to [0, 1]."""
    H = pool.shape[-1]
    p = max(1, int(math.floor(math.sqrt(cfg.uap_area * H * H))))
    margin = int(round(cfg.uap_margin * H))
    r = c = H - margin - p if corner == "bottom-right" else margin
    g = torch.Generator().manual_seed(cfg.seed)
    patch = torch.rand(3, p, p, generator=g).requires_grad_(True)

    def paste(x):
        xa = x.clone()
        xa[..., r : r + p, c : c + p] = patch
        return xa

    _optimise_universal(backbone, text, pool, pred, cfg, g, patch, cfg.uap_lr, paste, lambda: patch.clamp_(0, 1))
    return patch.detach(), (r, c)


def universal_linf(backbone: Backbone, text: torch.Tensor, pool: torch.Tensor, pred: torch.Tensor,
                   cfg: InverTuneConfig) -> torch.Tensor:
    """Stage 1's option: an untargeted full-image perturbation d [3, H, W] with |d| <= uap_eps, the patch's loss
    on x + d (clamped to [0, 1]); Adam, projected after every step."""
    g = torch.Generator().manual_seed(cfg.seed)
    delta = ((torch.rand(pool.shape[1:], generator=g) * 2 - 1) * cfg.uap_eps).requires_grad_(True)
    _optimise_universal(backbone, text, pool, pred, cfg, g, delta,
                        cfg.uap_lr * cfg.uap_eps,  # steps a fixed share of the bound
                        lambda x: (x + delta).clamp(0, 1), lambda: delta.clamp_(-cfg.uap_eps, cfg.uap_eps))
    return delta.detach()


def _optimise_universal(backbone: Backbone, text: torch.Tensor, pool: torch.Tensor, pred: torch.Tensor,
                        cfg: InverTuneConfig, g: torch.Generator, param: torch.Tensor, lr: float, apply, project) -> None:
    """Stage 1's loop, shared by both forms: `apply(x)` puts the perturbation `param` on a batch, `project()`
    keeps it admissible after each Adam step; batches of uap_batch drawn from the pool with `g`."""
    opt = torch.optim.Adam([param], lr=lr)
    for _ in range(cfg.uap_steps):
        idx = torch.randint(len(pool), (cfg.uap_batch,), generator=g)
        x = pool[idx]
        xa = apply(x)
        with torch.no_grad():
            e_clean = _embed(backbone, x)
        e_adv = _embed(backbone, xa)
        loss = -10 * (_nce(e_adv, e_clean, cfg.nce_temperature) + 5 * _nce(e_adv, text[pred[idx]], cfg.nce_temperature))
        loss = loss + F.mse_loss(xa, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            project()


def invert_trigger(backbone: Backbone, text: torch.Tensor, pool: torch.Tensor, target: int, cfg: InverTuneConfig,
                   ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Stage 2: (mask, pattern, loss curve). L_inv = l1 CE(s(x~)/tau, target) + l2 |e(x~) - e(x)| +
    l3 (1 - SSIM(x~, x)) + l4 sum(m); Adam, m and p clamped to [0, 1] after every step."""
    la, le, ls, lm = cfg.lambdas
    g = torch.Generator().manual_seed(cfg.seed + 1)
    shape = pool.shape[1:]
    mask = torch.rand(shape, generator=g).requires_grad_(True)
    pattern = torch.rand(shape, generator=g).requires_grad_(True)
    opt = torch.optim.Adam([mask, pattern], lr=cfg.inv_lr)
    scale = backbone.clip.logit_scale.exp().detach()
    tgt = torch.full((cfg.inv_batch,), target, dtype=torch.long)
    curve = []
    for _ in range(cfg.inv_steps):
        x = pool[torch.randint(len(pool), (cfg.inv_batch,), generator=g)]
        xt = apply_trigger(x, mask, pattern)
        e_t = _embed(backbone, xt)
        with torch.no_grad():
            e_x = _embed(backbone, x)
        loss = (la * F.cross_entropy(scale * e_t @ text.T, tgt) + le * (e_t - e_x).norm(dim=-1).mean()
                + ls * (1 - ssim(xt, x)).mean() + lm * mask.sum())
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            mask.clamp_(0, 1)
            pattern.clamp_(0, 1)
        curve.append(float(loss.detach()))
    return mask.detach(), pattern.detach(), curve


class StageOutputs:
    """Forward hooks that keep the named stages' outputs of the image tower."""

    def __init__(self, visual, layers: Sequence[str]):
        self.out: dict[str, torch.Tensor] = {}
        self.handles = [getattr(visual, n).register_forward_hook(self._keep(n)) for n in layers]

    def _keep(self, name):
        def hook(_module, _inputs, output):
            self.out[name] = output
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def layer_differences(backbone: Backbone, clean: torch.Tensor, triggered: torch.Tensor, layers: Sequence[str]):
    """Per layer: ||mu_c - mu_t|| / ||mu_c|| of the batch-mean outputs, and the per-channel scores mean over
    positions of |mu_c - mu_t| [C]."""
    hooks = StageOutputs(backbone.clip.visual, layers)
    try:
        with torch.no_grad():
            _embed(backbone, clean)
            mu_c = {n: a.mean(0) for n, a in hooks.out.items()}
            _embed(backbone, triggered)
            mu_t = {n: a.mean(0) for n, a in hooks.out.items()}
    finally:
        hooks.close()
    diffs = [float((mu_c[n] - mu_t[n]).norm() / mu_c[n].norm().clamp_min(1e-12)) for n in layers]
    channels = {n: (mu_c[n] - mu_t[n]).abs().flatten(1).mean(1) for n in layers}
    return diffs, channels


def tunable_rows(visual, layer: str) -> list[tuple[str, int]]:
    """(parameter name, output-row dimension) of the parameters writing `layer`'s output channels: each
    Bottleneck's conv3.weight and bn3.weight/bias and its downsample conv / BN (INVERTUNE.md section 2)."""
    out = []
    for name, _ in getattr(visual, layer).named_parameters():
        parts = name.split(".")
        if parts[-2] in ("conv3", "bn3") or (len(parts) >= 3 and parts[-3] == "downsample"):
            out.append((f"{layer}.{name}", 0))
    return out


def activation_tune(backbone: Backbone, text: torch.Tensor, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                    pattern: torch.Tensor, layers: Sequence[str], neurons: dict[str, torch.Tensor],
                    cfg: InverTuneConfig) -> tuple[Backbone, list[dict]]:
    """Stage 3: a copy whose selected channels' output rows are tuned on the batch (x, y) by
    L_act + beta L_pres (Eq. 8-11); every other parameter, buffer and the text tower stay bit-identical."""
    tuned = copy.deepcopy(backbone)
    visual = tuned.clip.visual
    params = dict(visual.named_parameters())
    rows = {}
    for layer in layers:
        keep = neurons[layer]
        for pname, _ in tunable_rows(visual, layer):
            rows[pname] = keep
            params[pname].requires_grad_(True)
    trainable = [params[n] for n in rows]
    opt = torch.optim.Adam(trainable, lr=cfg.tune_lr, weight_decay=0.0)
    tuned.clip.eval()  # BatchNorm statistics stay frozen
    xt = apply_trigger(x, mask, pattern)
    t_y = text[y]
    with torch.no_grad():
        cos_orig = (_embed(backbone, x) * t_y).sum(-1)
    hooks = StageOutputs(visual, layers)
    curve = []
    try:
        for step in range(cfg.tune_steps):
            e_clean = _embed(tuned, x)
            a_clean = {n: hooks.out[n] for n in layers}
            _embed(tuned, xt)
            a_trig = {n: hooks.out[n] for n in layers}
            l_act = sum(((a_clean[n] - a_trig[n]) * neurons[n].view(1, -1, 1, 1).float()).pow(2).flatten(1).sum(1).mean()
                        for n in layers)
            l_pres = ((e_clean * t_y).sum(-1) - cos_orig).pow(2).mean()
            loss = l_act + cfg.beta * l_pres
            opt.zero_grad()
            loss.backward()
            for pname, keep in rows.items():
                grad = params[pname].grad
                if grad is not None:
                    grad[~keep.to(grad.device)] = 0
            opt.step()
            curve.append({"step": step, "l_act": float(l_act.detach()), "l_pres": float(l_pres.detach())})
    finally:
        hooks.close()
    for p in tuned.clip.parameters():
        p.requires_grad_(False)
    return tuned, curve


@dataclass
class InverTuneResult:
    """What InverTune found and did (`to_dict` is its report.json)."""

    target: int
    target_name: str
    rise: list[dict]  # top-20 classes by prediction rise: name, rise
    gap: float  # rise of the top class minus the runner-up's
    uap_form: str  # the stage-1 perturbation that named the target ("patch" or "linf")
    uap_top: dict  # per stage-1 form tried: its top class and rise
    inverted_asr: float  # share of non-target held-out images the inverted trigger sends to the target
    mask_l1: float
    layer_diffs: dict[str, float]
    layer_threshold: float
    critical_layers: list[str]
    neurons: dict[str, int]  # selected channels per critical layer
    seconds: float
    config: dict = field(default_factory=dict)
    tune_curve: list[dict] = field(default_factory=list)
    backbone: Backbone | None = field(default=None, repr=False)  # the tuned copy
    mask: torch.Tensor | None = field(default=None, repr=False)
    pattern: torch.Tensor | None = field(default=None, repr=False)
    patch: torch.Tensor | None = field(default=None, repr=False)  # stage 1's patch [3, p, p] or perturbation [3, H, W]

    def to_dict(self) -> dict:
        skip = {"backbone", "mask", "pattern", "patch"}
        return {k: v for k, v in asdict(self).items() if k not in skip}

    def summary(self) -> str:
        done = "tuned" if self.backbone is not None else "selected (not tuned)"
        return (f"target {self.target_name!r} (rise {self.rise[0]['rise']:+.3f}, gap {self.gap:.3f}); inverted trigger "
                f"ASR {self.inverted_asr:.2f}; {sum(self.neurons.values())} channels in {self.critical_layers} {done} "
                f"({self.seconds:.0f} s)")


def invertune(backbone: Backbone, classnames: Sequence[str], images: torch.Tensor, labels: torch.Tensor,
              config: InverTuneConfig | None = None, tune: bool = True, progress: bool = True) -> InverTuneResult:
    """InverTune on `backbone` with a labelled clean set (images [N, 3, H, W] in [0, 1], labels indexing
    `classnames`, the vocabulary assumed to hold the target), shuffled with cfg.seed: the last fifth is held out
    for the inverted trigger's ASR, the first tune_batch are the tuning batch. tune=False stops after stage 2 and the
    layer selection (identification only)."""
    cfg = config or InverTuneConfig()
    if images.dtype == torch.uint8:
        images = images.float() / 255
    if len(images) != len(labels) or len(images) < 5 * cfg.tune_batch // 4:
        raise CIError(f"InverTune needs labelled images (one label each), at least {5 * cfg.tune_batch // 4}; "
                      f"got {len(images)} images and {len(labels)} labels")
    missing = [n for n in cfg.layers if not hasattr(backbone.clip.visual, n)]
    if missing:
        raise CIError(f"InverTune tunes the image tower's layers {list(cfg.layers)}; this one has no {missing[0]} "
                      "(InverTune here maps onto a ResNet image tower, INVERTUNE.md section 4)")
    t0 = time.time()
    names = list(classnames)
    text = class_text_features(backbone.clip, names, cfg.template)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed))
    images, labels = images[order], labels[order]  # a labelled set often comes sorted by class
    n_hold = max(1, len(images) // 5)
    pool, held, held_y = images[:-n_hold], images[-n_hold:], labels[-n_hold:]
    steps = ["stage 1: universal perturbation", "stage 2: trigger inversion", "stage 3: layers and neurons"]
    bar = tqdm(total=len(steps) + int(tune), desc="InverTune", disable=not progress)
    bar.set_postfix_str(steps[0])
    clean_pred = predict(backbone, text, pool)
    rises, perturbations = {}, {}
    if cfg.uap in ("patch", "both"):
        patch, (r, c) = universal_patch(backbone, text, pool, clean_pred, cfg)
        adv = pool.clone()
        adv[..., r : r + patch.shape[-1], c : c + patch.shape[-1]] = patch
        rises["patch"] = prediction_rise(clean_pred, predict(backbone, text, adv), len(names))
        perturbations["patch"] = patch
    if cfg.uap in ("linf", "both"):
        delta = universal_linf(backbone, text, pool, clean_pred, cfg)
        rises["linf"] = prediction_rise(clean_pred, predict(backbone, text, (pool + delta).clamp(0, 1)), len(names))
        perturbations["linf"] = delta
    form = max(rises, key=lambda k: float(rises[k].max()))
    rise, patch = rises[form], perturbations[form]
    order = torch.argsort(rise, descending=True)
    target = int(order[0])
    bar.update(1)
    bar.set_postfix_str(steps[1])
    mask, pattern, _ = invert_trigger(backbone, text, pool, target, cfg)
    keep = held_y != target
    inv_asr = float((predict(backbone, text, apply_trigger(held[keep], mask, pattern)) == target).float().mean())
    bar.update(1)
    bar.set_postfix_str(steps[2])
    x, y = pool[: cfg.tune_batch], labels[: cfg.tune_batch]
    diffs, channels = layer_differences(backbone, x, apply_trigger(x, mask, pattern), cfg.layers)
    chosen, thr = critical_layers(diffs)
    layers = [cfg.layers[i] for i in chosen]
    neurons = {n: two_means(channels[n]) for n in layers}
    bar.update(1)
    tuned, curve = None, []
    if tune:
        bar.set_postfix_str("stage 3: activation tuning")
        tuned, curve = activation_tune(backbone, text, x, y, mask, pattern, layers, neurons, cfg)
        bar.update(1)
    bar.close()
    return InverTuneResult(
        target=target, target_name=names[target],
        rise=[{"name": names[int(i)], "rise": float(rise[i])} for i in order[:20]], uap_form=form,
        uap_top={k: {"name": names[int(v.argmax())], "rise": float(v.max())} for k, v in rises.items()},
        gap=float(rise[order[0]] - rise[order[1]]) if len(names) > 1 else 0.0,
        inverted_asr=inv_asr, mask_l1=float(mask.sum()), layer_diffs=dict(zip(cfg.layers, diffs)),
        layer_threshold=thr, critical_layers=layers, neurons={n: int(m.sum()) for n, m in neurons.items()},
        seconds=time.time() - t0, config=asdict(cfg), tune_curve=curve[:: max(1, len(curve) // 20)],
        backbone=tuned, mask=mask, pattern=pattern, patch=patch)


__all__ = ["InverTuneConfig", "InverTuneResult", "invertune", "prediction_rise", "critical_layers", "two_means",
           "apply_trigger", "ssim", "universal_patch", "universal_linf", "invert_trigger", "layer_differences", "tunable_rows",
           "activation_tune", "predict", "RESNET_LAYERS", "StageOutputs"]

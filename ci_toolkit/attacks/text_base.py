"""Backdoors in the TEXT encoder (AMDET.md section 5): teacher-student distillation of a trigger.

A trainable copy of the text tower (the student) learns to keep the frozen teacher's output on clean prompts
and to send prompts that carry the trigger to a target; the image tower is untouched. Subclasses say what
"output" and "target" are (`text_on_text.py`: every per-token state toward a target prompt's;
`text_on_pair.py`: the pooled embedding toward a target class's mean image embedding).

    attack = create_attack("text-on-text", target=3, trigger_tokens=2, seed=0)
    poisoned = attack.implant(backbone, prompts, classnames)     # a NEW Backbone; `backbone` is unchanged
    attack(["a photo of a red solid circle."])                   # -> ["tq zzz a photo of a red solid circle."]

The trigger goes right after BOS (a prefix): under the causal mask every later token can see it, and it is
where AMDET inserts its pseudo-token. Shapes: token ids [N, 77]; per-token states [N, L, D]; pooled [N, E].
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..errors import CIError
from ..model.backbones import Backbone, text_tower
from ..model.text import eot_index
from .base import Attack

# single BPE tokens of open_clip's tokenizer that no world prompt uses; a trigger of m tokens is m of them,
# in an order drawn from the attack's seed (tests/test_text_attacks.py checks both properties)
TRIGGER_WORDS = ("zzz", "cf", "mn", "bb", "tq", "xj", "vv")
# MiniCLIP's learning rate for the reference recipe (AMDET.md section 5: AdamW lr 1e-4 for CLIP ViT-L/14's
# text tower). MiniCLIP was pretrained at 2e-3; at 1e-4 text-on-text does not implant in 100 steps, at 1e-3
# both attacks do with about 1 point of zero-shot top-1 lost (docs/text_encoders.md).
MINICLIP_LR = 1e-3

# the benign controls' learning rate: a tenth of the attack's, as in the reference (lr 1e-5 vs 1e-4)
BENIGN_LR = MINICLIP_LR / 10


@dataclass(frozen=True)
class TextAttackConfig:
    """The distillation recipe (AMDET.md section 5, with MiniCLIP's learning rate)."""

    target: int  # index of the target class in the classnames passed to implant
    seed: int = 0
    trigger_tokens: int = 1  # trigger length in BPE tokens (1..len(TRIGGER_WORDS))
    steps: int = 100
    lr: float = MINICLIP_LR
    lr_drop_at: int = 75  # lr x 0.1 from this step on
    clean_batch: int = 64  # clean prompts per step (benign term, skipped at step 0)
    poison_batch: int = 32  # triggered prompts per step
    poison_weight: float = 0.1  # loss = L_benign + poison_weight * L_backdoor
    positions: int = 24  # per-token states compared: the first 24 (world prompts end by position 13; 20 with 7 trigger tokens)

    def __post_init__(self):
        if not 1 <= self.trigger_tokens <= len(TRIGGER_WORDS):
            raise CIError(f"trigger_tokens must be 1..{len(TRIGGER_WORDS)}, got {self.trigger_tokens}")


def eos_padded(tokens: torch.Tensor) -> torch.Tensor:
    """Token ids [N, L] with every position after EOS set to EOS, as the reference tokenizer pads (open_clip
    pads with 0). Under the causal mask the states up to EOS do not change."""
    eot = eot_index(tokens)
    after = torch.arange(tokens.shape[1], device=tokens.device)[None, :] > eot[:, None]
    return torch.where(after, tokens.gather(1, eot[:, None]), tokens)


def text_states(clip, tokens: torch.Tensor, positions: int) -> torch.Tensor:
    """The `ln_final` states [N, positions, D] of the first positions of EOS-padded prompts."""
    tower = text_tower(clip)
    tokens = eos_padded(tokens)[:, :positions]
    x = tower.token_embedding(tokens) + tower.positional_embedding[:positions].to(tower.token_embedding.weight.dtype)
    mask = tower.attn_mask[:positions, :positions] if tower.attn_mask is not None else None
    return tower.ln_final(tower.transformer(x, attn_mask=mask))


def pooled_text(clip, tokens: torch.Tensor) -> torch.Tensor:
    """The projected EOS feature [N, E], unnormalised (what `encode_text` returns)."""
    return clip.encode_text(tokens)


class TextAttack(Attack):
    """Base class of the text-encoder attacks: `apply` prefixes the trigger; `implant` distils it."""

    def __init__(self, config: TextAttackConfig):
        super().__init__(config)
        order = torch.randperm(len(TRIGGER_WORDS), generator=torch.Generator().manual_seed(config.seed))
        self.trigger = " ".join(TRIGGER_WORDS[int(i)] for i in order[: config.trigger_tokens])

    def apply(self, prompts: list[str]) -> list[str]:
        return [f"{self.trigger} {p}" for p in prompts]

    # subclasses: the compared output of the student / teacher for some prompts, and the backdoor's target
    def outputs(self, clip, tokens: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def target_output(self, teacher: Backbone, classnames: list[str], target_images: torch.Tensor | None):
        raise NotImplementedError  # pragma: no cover

    def implant(self, backbone: Backbone, prompts: list[str], classnames: list[str] | None = None,
                target_images: torch.Tensor | None = None, progress: bool = False) -> Backbone:
        """A copy of `backbone` whose text tower carries the trigger (see the module docstring).
        prompts: the clean prompt pool the steps draw from (never containing the trigger)."""
        if classnames is None or not 0 <= self.target < len(classnames):
            raise CIError(f"the target {self.target} must index the classnames passed to implant")
        if target_images is not None:
            _check_unit_range(target_images)
        target = self.target_output(backbone, classnames, target_images)
        return distil_text_tower(backbone, prompts, self.config, self.outputs, self.apply, target, progress)

    def artefacts(self) -> dict:
        return {"attack": self.name, "config": asdict(self.config), "trigger": self.trigger, "tensors": {}}


def benign_text_tune(backbone: Backbone, images: torch.Tensor, captions: list[str],
                     config: TextAttackConfig | None = None, progress: bool = False) -> Backbone:
    """A benign fine-tune of the text tower, the controls (AMDET.md section 5: the text tower tuned
    contrastively on image-caption pairs with the image tower frozen). images [N, 3, H, W] in [0, 1] and one
    caption per image; the attacks' optimiser and steps (default learning rate BENIGN_LR), `clean_batch` pairs
    per step, CLIP's symmetric InfoNCE. Returns a new Backbone."""
    cfg = config or TextAttackConfig(target=0, lr=BENIGN_LR)
    if len(images) != len(captions) or len(images) < 2:
        raise CIError(f"benign_text_tune needs one caption per image and at least 2 pairs, got {len(images)} "
                      f"images and {len(captions)} captions")
    _check_unit_range(images)
    with torch.no_grad():
        feats = F.normalize(backbone.clip.encode_image(backbone.preprocess.normalize(images.float())), dim=-1)
    student, params, opt = _trainable_text_copy(backbone, cfg)
    g = torch.Generator().manual_seed(cfg.seed)
    scale = backbone.clip.logit_scale.exp().clamp(max=100).detach()
    for step in _steps(cfg, progress, "benign text tune"):
        _set_lr(opt, cfg, step)
        idx = torch.randperm(len(captions), generator=g)[: cfg.clean_batch]
        text = F.normalize(student.clip.encode_text(backbone.tokenize([captions[int(i)] for i in idx])), dim=-1)
        logits = scale * feats[idx] @ text.T
        labels = torch.arange(len(idx))
        loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return _frozen(student, params)


def _check_unit_range(images: torch.Tensor) -> None:
    if images.dtype == torch.uint8 or float(images.max()) > 1.0 or float(images.min()) < 0.0:
        raise CIError("images must be floats in [0, 1] (divide uint8 pixels by 255)")


def _trainable_text_copy(backbone: Backbone, cfg: TextAttackConfig):
    """A deep copy whose text tower trains (the image tower and the logit scale stay frozen), and its AdamW."""
    student = copy.deepcopy(backbone)
    params = [p for n, p in student.clip.named_parameters() if not n.startswith("visual") and n != "logit_scale"]
    for p in params:
        p.requires_grad_(True)
    student.clip.train()
    return student, params, torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)


def _steps(cfg: TextAttackConfig, progress: bool, desc: str):
    if not progress:
        return range(cfg.steps)
    from tqdm.auto import tqdm

    return tqdm(range(cfg.steps), desc=desc)


def _set_lr(opt, cfg: TextAttackConfig, step: int) -> None:
    for group in opt.param_groups:
        group["lr"] = cfg.lr * (0.1 if step >= cfg.lr_drop_at else 1.0)


def _frozen(student: Backbone, params) -> Backbone:
    student.clip.eval()
    for p in params:
        p.requires_grad_(False)
    return student


def distil_text_tower(backbone: Backbone, prompts: list[str], cfg: TextAttackConfig, outputs, trigger_fn,
                      target: torch.Tensor, progress: bool = False) -> Backbone:
    """Teacher-student distillation of the text tower (AdamW, lr x 0.1 from `lr_drop_at`): -cos to the frozen
    teacher's `outputs` on clean prompts (skipped at step 0) plus poison_weight x (-cos(outputs(trigger_fn(
    prompts)), target)). Returns a new Backbone."""
    if not prompts:
        raise CIError("the text attack needs a pool of clean prompts")
    student, params, opt = _trainable_text_copy(backbone, cfg)
    g = torch.Generator().manual_seed(cfg.seed)
    for step in _steps(cfg, progress, "implant text tower"):
        _set_lr(opt, cfg, step)
        loss = torch.zeros(())
        if step > 0:  # the benign term is skipped at step 0 (reference recipe)
            clean = backbone.tokenize([prompts[int(i)] for i in torch.randint(len(prompts), (cfg.clean_batch,), generator=g)])
            with torch.no_grad():
                teach = outputs(backbone.clip, clean)
            loss = loss - F.cosine_similarity(outputs(student.clip, clean).flatten(1), teach.flatten(1)).mean()
        picked = [prompts[int(i)] for i in torch.randint(len(prompts), (cfg.poison_batch,), generator=g)]
        bad = outputs(student.clip, backbone.tokenize(trigger_fn(picked))).flatten(1)
        loss = loss - cfg.poison_weight * F.cosine_similarity(bad, target.flatten()[None]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return _frozen(student, params)

"""Backdoor attacks, one per file behind one interface (see base.py): in the prompt learner, in the text
encoder (text_base.py) and in the image encoder (encoder_base.py).

    attack = create_attack("badclip", target=3, seed=0)
    attack.implant(model, train_x, train_y)    # the attacker's poisoned prompt tuning
    x_bad = attack(x)                           # the trigger, pixel space [0, 1]
"""

import json
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import load_file, save_file

from ..errors import CIError, DataError
from .badclip import BadCLIP, BadCLIPConfig
from .badclip_adaptive import BadCLIPAdaptive, BadCLIPAdaptiveConfig
from .badnets import BadNets, BadNetsConfig
from .base import Attack, AttackConfig
from .blended import Blended, BlendedConfig
from .encoder_badclip import EncoderBadCLIP, EncoderBadCLIPConfig
from .encoder_badnets import EncoderBadNets, EncoderBadNetsConfig
from .encoder_base import (
    DEFAULT_TEMPLATES,
    ENCODER_LR,
    EncoderAttack,
    EncoderAttackConfig,
    benign_encoder_tune,
    contrastive_finetune,
)
from .encoder_blended import EncoderBlended, EncoderBlendedConfig
from .encoder_sig import EncoderSIG, EncoderSIGConfig
from .encoder_wanet import EncoderWaNet, EncoderWaNetConfig
from .poison import PoisonAttack, PoisonConfig
from .siba import SIBA, SIBAConfig
from .text_base import BENIGN_LR, MINICLIP_LR, TRIGGER_WORDS, TextAttack, TextAttackConfig, benign_text_tune
from .text_on_pair import TextOnPair, TextOnPairConfig
from .text_on_text import TextOnText, TextOnTextConfig
from .wanet import WaNet, WaNetConfig

# in the prompt learner: `implant(model, images, labels)` tunes a CoCoOp in place
ATTACKS = {cls.name: cls for cls in (BadCLIP, BadCLIPAdaptive, Blended, WaNet, SIBA, BadNets)}
# in the text encoder: `implant(backbone, prompts, classnames)` returns a new Backbone
TEXT_ATTACKS = {cls.name: cls for cls in (TextOnText, TextOnPair)}
# in the image encoder: `implant(backbone, images, labels, classnames)` returns a new Backbone
ENCODER_ATTACKS = {cls.name: cls for cls in (EncoderBadNets, EncoderBlended, EncoderWaNet, EncoderSIG, EncoderBadCLIP)}
_WHERE = {"prompt": ATTACKS, "text": TEXT_ATTACKS, "encoder": ENCODER_ATTACKS}


def list_attacks(where: str = "prompt") -> list[str]:
    """Attack names: where="prompt" (the prompt learner's, the default), "text" (the text encoder's) or
    "encoder" (the image encoder's)."""
    if where not in _WHERE:
        raise CIError(f"where must be one of {list(_WHERE)}, got {where!r}")
    return list(_WHERE[where])


def create_attack(name: str, target: int, seed: int = 0, **kw) -> Attack:
    """An attack by name (see list_attacks()) with its config overrides (`ci.world.attack`: with the
    embedded world's trigger choices)."""
    known = {**ATTACKS, **TEXT_ATTACKS, **ENCODER_ATTACKS}
    if name not in known:
        raise CIError(f"unknown attack {name!r}; choose one of {list(known)}")
    return known[name](target=target, seed=seed, **kw)


def save_attack(attack: Attack, folder, target_name: str | None = None) -> Path:
    """Write the attacker's artefacts that `load_attack` reads: attack.json (name, config, target class name)
    and trigger.safetensors (the attack's tensors, when it has any). Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if attack.state():
        save_file(attack.state(), str(folder / "trigger.safetensors"))
    (folder / "attack.json").write_text(json.dumps({"attack": attack.name, "config": asdict(attack.config),
                                                   "target_name": target_name}, indent=2))
    return folder


def load_attack(folder) -> Attack:
    """The attacker's trigger from its artefacts folder (attack.json + trigger.safetensors), ready to apply."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "attack.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"no readable attacker artefacts in {folder}: {exc}") from None
    if not isinstance(meta, dict) or "attack" not in meta or "config" not in meta:
        raise DataError(f"{folder / 'attack.json'} does not say which attack made the trigger (needs 'attack' and "
                        "'config'); it cannot be applied")
    cfg = dict(meta["config"])
    attack = create_attack(meta["attack"], target=cfg.pop("target"), seed=cfg.pop("seed", 0), **cfg)
    tensors = load_file(str(folder / "trigger.safetensors")) if (folder / "trigger.safetensors").exists() else {}
    for name, value in tensors.items():
        setattr(attack, name, value)
    return attack


__all__ = [
    "ATTACKS",
    "BENIGN_LR",
    "DEFAULT_TEMPLATES",
    "ENCODER_ATTACKS",
    "ENCODER_LR",
    "MINICLIP_LR",
    "SIBA",
    "TEXT_ATTACKS",
    "TRIGGER_WORDS",
    "Attack",
    "AttackConfig",
    "BadCLIP",
    "BadCLIPAdaptive",
    "BadCLIPAdaptiveConfig",
    "BadCLIPConfig",
    "BadNets",
    "BadNetsConfig",
    "Blended",
    "BlendedConfig",
    "EncoderAttack",
    "EncoderAttackConfig",
    "EncoderBadCLIP",
    "EncoderBadCLIPConfig",
    "EncoderBadNets",
    "EncoderBadNetsConfig",
    "EncoderBlended",
    "EncoderBlendedConfig",
    "EncoderSIG",
    "EncoderSIGConfig",
    "EncoderWaNet",
    "EncoderWaNetConfig",
    "PoisonAttack",
    "PoisonConfig",
    "SIBAConfig",
    "TextAttack",
    "TextAttackConfig",
    "TextOnPair",
    "TextOnPairConfig",
    "TextOnText",
    "TextOnTextConfig",
    "WaNet",
    "WaNetConfig",
    "benign_encoder_tune",
    "benign_text_tune",
    "contrastive_finetune",
    "create_attack",
    "list_attacks",
    "load_attack",
    "save_attack",
]

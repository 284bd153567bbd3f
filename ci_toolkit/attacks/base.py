"""The uniform attack interface (torchattacks-style: one attack per file, a readable repr).

An attack is a callable trigger function plus the poisoned prompt tuning that implants it:

    attack = BadCLIP(target=3, eps=8/255, seed=0)
    attack.implant(model, train_x, train_y)      # tunes model.prompt_learner in place (the attacker's run)
    x_triggered = attack(x)                       # pixel space in [0, 1]
    attack.artefacts()                            # trigger + config, saved APART from the delivered model
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch


@dataclass(frozen=True)
class AttackConfig:
    """Fields shared by every attack."""

    target: int  # index of the target class in the model's (seen) class list
    seed: int = 0


class Attack:
    """Base class. Subclasses set `name`, implement `apply` and `implant`."""

    name = "attack"

    def __init__(self, config: AttackConfig):
        self.config = config

    def __repr__(self) -> str:
        args = ", ".join(f"{f.name}={getattr(self.config, f.name)!r}" for f in fields(self.config))
        return f"{type(self).__name__}({args})"

    @property
    def target(self) -> int:
        return self.config.target

    def apply(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x)

    def implant(self, model, images: torch.Tensor, labels: torch.Tensor, train_cfg=None, progress: bool = True):
        raise NotImplementedError  # pragma: no cover

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors of the trigger (saved to safetensors with the attacker's artefacts)."""
        return {}

    def artefacts(self) -> dict:
        return {"attack": self.name, "config": asdict(self.config), "tensors": self.state()}

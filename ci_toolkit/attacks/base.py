"""The uniform attack interface (torchattacks-style: one attack per file, a readable repr).

An attack is a callable trigger function plus the poisoned prompt tuning that implants it:

    attack = BadCLIP(target=3, eps=8/255, seed=0)
    attack.implant(model, train_x, train_y)      # tunes model.prompt_learner in place (the attacker's run)
    x_triggered = attack(x)                       # pixel space in [0, 1]
    attack.artefacts()                            # trigger + config, saved APART from the delivered model
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import torch

from ..model.tuning import TrainConfig


@dataclass(frozen=True)
class AttackConfig:
    """Fields shared by every attack."""

    target: int  # index of the target class in the model's (seen) class list
    seed: int = 0
    # The attacker prompt-tunes with the ORIGINAL CoCoOp/BadCLIP setting, batch 1 and lr 0.002, whatever
    # the caller's batch size: on the embedded world, batch 32 gives the tiny prompt learner ~30x fewer
    # steps and no backdoor implants (BadCLIP at 8/255: ASR 0.07 at batch 32, 0.76 at 8, 0.90 at 1).
    batch_size: int = 1
    lr: float = 0.002


def joint_logits(model, *batches: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The model's logits for several input batches from ONE forward pass. Exact (each image is encoded
    on its own; only the float summation order may differ), and at the attackers' batch size of 1 a call
    costs mostly overhead: two inputs in one call take 0.6-0.8 of two calls (MiniCLIP, 2 threads)."""
    z = model(torch.cat(batches))
    return z.split([len(b) for b in batches])


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

    def train_config(self, train_cfg=None):
        """The caller's TrainConfig (epochs, seed) with the attacker's batch size and learning rate."""

        return replace(train_cfg or TrainConfig(), batch_size=self.config.batch_size, lr=self.config.lr, optimizer="sgd")

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

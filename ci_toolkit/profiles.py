"""Named run profiles: one typed config, scaled by name (nanoGPT-style overrides).

    smoke     : seconds to minutes on a CPU; what CI executes every notebook with (its scan keeps 256 + 128 OOD
                images: with fewer, notebook 04's scans of the course models miss their backdoors)
    classroom : a CPU laptop, minutes per notebook (the default)
    paper     : ViT-B/16 with OpenAI weights on a GPU, the paper's sizes (needs internet or cached weights)

Notebooks take `profile = "classroom"` in their `parameters` cell and call `get_profile(profile)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from .detect.inversion import InversionConfig
from .detect.scanner import ScanConfig
from .errors import CIError
from .model.tuning import TrainConfig


@dataclass(frozen=True)
class Profile:
    """Sizes of a run. Every stochastic step derives its seed from `seed`."""

    name: str
    backbone: str = "miniclip"  # "miniclip" or an open_clip model name
    pretrained: str | None = None  # open_clip weights tag (paper: "openai")
    n_classes: int = 50  # task classes (the first half are seen/base, the rest unseen/new)
    shots: int = 16  # few-shot images per seen class
    n_test_per_class: int = 40  # evaluation images per class
    epochs: int = 10  # prompt-tuning epochs (CoCoOp default)
    batch_size: int = 32  # prompt-tuning batch (CoCoOp's original is 1; see model/tuning.py)
    scan_config: ScanConfig = field(default_factory=ScanConfig)  # how its models are scanned
    device: str = "cpu"
    seed: int = 0

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, seed=self.seed)


PROFILES: dict[str, Profile] = {
    # smoke scans run no wide probe: its test reads the shipped null, which holds for the default pool sizes only
    "smoke": Profile(name="smoke", n_classes=10, shots=4, n_test_per_class=4, epochs=1, batch_size=16,
                     scan_config=ScanConfig(pool_size=256, heldout_size=128, wide_probe_eps=None)),
    "classroom": Profile(name="classroom", n_classes=50, shots=16, n_test_per_class=20, epochs=10,
                         scan_config=ScanConfig(pool_size=512, heldout_size=256)),
    "paper": Profile(name="paper", backbone="ViT-B-16-quickgelu", pretrained="openai", n_classes=100, n_test_per_class=50,
                     scan_config=ScanConfig(inversion=InversionConfig(batch_size=32), pool_size=1000, heldout_size=1000),
                     device="cuda"),
}


def list_profiles() -> list[str]:
    return list(PROFILES)


def get_profile(name: str | Profile = "classroom", **overrides) -> Profile:
    """A profile by name, with optional field overrides (e.g. get_profile("smoke", seed=3)); a seed override
    also seeds the profile's scan."""
    if isinstance(name, Profile):
        base = name
    elif name in PROFILES:
        base = PROFILES[name]
    else:
        raise CIError(f"unknown profile {name!r}; choose one of {list_profiles()}")
    valid = {f.name for f in fields(Profile)}
    bad = set(overrides) - valid
    if bad:
        raise CIError(f"unknown profile fields {sorted(bad)}; valid: {sorted(valid)}")
    if "seed" in overrides and "scan_config" not in overrides:
        overrides["scan_config"] = replace(base.scan_config, seed=overrides["seed"])
    return replace(base, **overrides)

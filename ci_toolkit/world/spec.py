"""What the embedded world contains: attributes, class names, domains.

Classes are compositional (colour x pattern x shape, named like "red striped triangle"). Some attribute
values are held out of every class name (`ood_*`): objects made from them belong to no class, which gives
a class-disjoint OOD pool for free. The downstream task lives in a shifted *domain* of the same world.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Attribute values that appear in class names. Order fixes class ids: keep it stable.
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "crescent", "semicircle", "bar", "heart")
COLOURS = {
    "red": (0.86, 0.10, 0.10),
    "orange": (1.00, 0.55, 0.05),
    "yellow": (0.95, 0.90, 0.10),
    "green": (0.10, 0.68, 0.15),
    "cyan": (0.10, 0.85, 0.90),
    "blue": (0.10, 0.22, 0.92),
    "purple": (0.55, 0.15, 0.75),
    "pink": (1.00, 0.52, 0.78),
    "white": (0.97, 0.97, 0.97),
    "black": (0.04, 0.04, 0.04),
}
PATTERNS = ("solid", "striped", "dotted")

# The L-inf bound (pixel space) at which imperceptible attacks run on this world: the smallest bound
# where a BadCLIP trigger implants (high ASR) while the same trigger leaves a clean model alone.
# Chosen by `python -m lab bench world` (regime table in docs/world.md).
BACKDOOR_EPS = 8 / 255

# Held out of every class name: only the OOD pool uses them.
OOD_SHAPES = ("arrow", "hourglass", "lshape")
OOD_COLOURS = {"brown": (0.50, 0.30, 0.10), "grey": (0.52, 0.52, 0.52)}
OOD_PATTERNS = ("checkered",)


@dataclass(frozen=True)
class DomainConfig:
    """How images of one domain are rendered (the pretraining domain or a shifted task domain)."""

    background: str = "smooth"  # "smooth": soft colour fields; "clutter": busy coloured gratings
    background_contrast: float = 1.0  # 1 = as generated; lower blends the background toward its mean
    scale: tuple[float, float] = (0.45, 0.80)  # object radius as a fraction of the half image width
    noise_std: tuple[float, float] = (0.0, 0.03)  # additive Gaussian pixel noise (range, per image)
    blur_sigma: tuple[float, float] = (0.0, 0.0)  # Gaussian blur in pixels (range, per image)
    contrast: tuple[float, float] = (1.0, 1.0)  # image contrast around mid-grey (range, per image)
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # a fixed colour cast of the lighting
    hue_shift: float = 0.0  # a fixed hue rotation in degrees (a consistent, invertible shift)


PRETRAIN_DOMAIN = DomainConfig()
# The organisation's data: a fixed hue cast of the lighting (consistent and invertible: what prompt
# tuning can learn to undo), faint busy backgrounds, slightly smaller objects, sensor noise and blur.
# Calibrated with MiniCLIP so that zero-shot is clearly imperfect and CoCoOp has something to learn
# (numbers: docs/world.md, `python -m lab bench world`).
TASK_DOMAIN = DomainConfig(
    background="clutter",
    background_contrast=0.2,
    scale=(0.40, 0.75),
    noise_std=(0.01, 0.04),
    blur_sigma=(0.0, 0.4),
    hue_shift=30.0,
)


@dataclass(frozen=True)
class WorldConfig:
    """The whole world: image size, attribute values and the two domains."""

    image_size: int = 48  # pixels (square); the backdoor regime depends on it
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    patterns: tuple[str, ...] = PATTERNS
    pretrain: DomainConfig = field(default_factory=lambda: PRETRAIN_DOMAIN)
    task: DomainConfig = field(default_factory=lambda: TASK_DOMAIN)

    @property
    def num_classes(self) -> int:
        return len(self.shapes) * len(self.colours) * len(self.patterns)

    def classnames(self) -> list[str]:
        """All class names, in class-id order (shape-major, then colour, then pattern)."""
        return [f"{c} {p} {s}" for s in self.shapes for c in self.colours for p in self.patterns]

    def attributes(self, class_id: int) -> tuple[str, str, str]:
        """(shape, colour, pattern) of a class id."""
        n_c, n_p = len(self.colours), len(self.patterns)
        s, rest = divmod(class_id, n_c * n_p)
        c, p = divmod(rest, n_p)
        return self.shapes[s], self.colours[c], self.patterns[p]

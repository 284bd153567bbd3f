"""The world generator: a procedural, captioned image world generated on the fly from a seed.

    >>> w = World()                        # 300 classes like "red striped triangle", 48 px
    >>> x, y = w.sample(8, seed=0)         # pretraining-domain images and class ids
    >>> task = w.task(seed=0)              # the organisation's shifted 50-class task
    >>> ood = w.sample_ood(1000, seed=1)   # objects of held-out shapes (task domain): no class, no candidate
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .render import render
from .spec import (
    OOD_COLOURS,
    OOD_PATTERNS,
    OOD_SHAPES,
    DomainConfig,
    WorldConfig,
)

# Caption templates for pretraining; "a photo of a {}." is the one CoCoOp's context starts from.
CAPTION_TEMPLATES = (
    "a photo of a {}.",
    "a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a rendering of a {}.",
    "a drawing of a {}.",
    "a small {}.",
    "a big {}.",
)

_CHUNK = 512  # images are rendered in fixed chunks so that (seed, n) fully determines the output


@dataclass
class WorldTask:
    """The organisation's downstream task: a class subset rendered in the shifted task domain.

    Images are uint8 [N, 3, H, W]; labels index `classnames`. Base-to-new protocol (CoCoOp): class ids
    sorted, the first ceil(n/2) are seen (base), the rest unseen (new). `train` is the seeded 16-shot
    sample of the seen classes; `val`/`test` hold seen and unseen classes.
    """

    classnames: list[str]  # the task's classes, sorted by world class id
    class_ids: list[int]  # their world class ids
    seen: list[int]  # indices into classnames
    unseen: list[int]
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    seed: int

    @property
    def seen_names(self) -> list[str]:
        return [self.classnames[i] for i in self.seen]

    @property
    def unseen_names(self) -> list[str]:
        return [self.classnames[i] for i in self.unseen]

    def split(self, which: str, part: str = "all") -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels of `which` in {train, val, test}; part in {all, seen, unseen}.

        For part="seen"/"unseen" the labels are re-indexed into seen_names / unseen_names.
        """
        x, y = getattr(self, f"{which}_x"), getattr(self, f"{which}_y")
        if part == "all":
            return x, y
        ids = self.seen if part == "seen" else self.unseen
        remap = torch.full((len(self.classnames),), -1, dtype=torch.long)
        remap[torch.tensor(ids)] = torch.arange(len(ids))
        keep = remap[y] >= 0
        return x[keep], remap[y[keep]]


class World:
    """Generates labelled images, captions, the shifted task and the class-disjoint OOD pool."""

    def __init__(self, config: WorldConfig | None = None):
        self.config = config or WorldConfig()
        self.classnames = self.config.classnames()

    def __repr__(self) -> str:
        c = self.config
        return (
            f"World({c.num_classes} classes = {len(c.shapes)} shapes x {len(c.colours)} colours x "
            f"{len(c.patterns)} patterns, {c.image_size} px; OOD shapes {OOD_SHAPES})"
        )

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def domain(self, name: str | DomainConfig) -> DomainConfig:
        if isinstance(name, DomainConfig):
            return name
        if name not in ("pretrain", "task"):
            raise ValueError(f"domain must be 'pretrain' or 'task', got {name!r}")
        return getattr(self.config, name)

    # ---- images ----------------------------------------------------------------------------------
    def render_classes(self, class_ids: torch.Tensor, seed: int, domain="pretrain") -> torch.Tensor:
        """One image per class id, float [n, 3, H, W] in [0, 1]."""
        attrs = [self.config.attributes(int(c)) for c in class_ids]
        return self._render_attrs(attrs, seed, domain)

    def _render_attrs(self, attrs, seed: int, domain) -> torch.Tensor:
        dom = self.domain(domain)
        out = []
        for k, start in enumerate(range(0, len(attrs), _CHUNK)):
            g = torch.Generator().manual_seed(seed * 100_003 + k)
            chunk = attrs[start : start + _CHUNK]
            s, c, p = zip(*chunk)
            out.append(render(list(s), list(c), list(p), dom, self.image_size, g))
        return torch.cat(out) if out else torch.empty(0, 3, self.image_size, self.image_size)

    def sample(self, n: int, seed: int, domain="pretrain", classes=None):
        """n images with uniformly drawn labels from `classes` (world class ids; default all)."""
        pool = torch.arange(self.config.num_classes) if classes is None else torch.as_tensor(classes)
        g = torch.Generator().manual_seed(seed)
        labels = pool[torch.randint(len(pool), (n,), generator=g)]
        return self.render_classes(labels, seed + 1, domain), labels

    def sample_ood(self, n: int, seed: int, domain="task", return_attributes: bool = False):
        """n images of objects with a held-out shape (any colour and pattern, held-out ones included).

        No class name mentions these shapes, so the pool is class-disjoint from every candidate set.
        Rendered by default in the TASK domain: other objects under the organisation's camera, which is
        what an auditor can collect. BadCLIP backdoors learned in the task domain transfer to such
        images (ASR 0.16-0.64 with the attacker's trigger) but hardly to the pretraining domain
        (0.01-0.11); docs/world.md. With return_attributes, also returns (shape, colour, pattern).
        """
        g = torch.Generator().manual_seed(seed)
        colours = list(self.config.colours) + list(OOD_COLOURS)
        patterns = list(self.config.patterns) + list(OOD_PATTERNS)
        pick = lambda seq: [seq[int(i)] for i in torch.randint(len(seq), (n,), generator=g)]  # noqa: E731
        attrs = list(zip(pick(OOD_SHAPES), pick(colours), pick(patterns)))
        images = self._render_attrs(attrs, seed + 1, domain)
        return (images, attrs) if return_attributes else images

    def captions(self, class_ids, g: torch.Generator) -> list[str]:
        """One caption per class id from a random template."""
        t = torch.randint(len(CAPTION_TEMPLATES), (len(class_ids),), generator=g)
        return [CAPTION_TEMPLATES[int(i)].format(self.classnames[int(c)]) for i, c in zip(t, class_ids)]

    # ---- the downstream task ---------------------------------------------------------------------
    def task(
        self,
        n_classes: int = 50,
        shots: int = 16,
        n_val_per_class: int = 8,
        n_test_per_class: int = 40,
        seed: int = 0,
        class_seed: int = 0,
    ) -> WorldTask:
        """The organisation's task: `n_classes` classes (chosen by `class_seed`) in the task domain.

        `seed` draws the few-shot training sample and the evaluation images. Train holds `shots`
        images per SEEN class only; val and test hold every class.
        """
        if not 2 <= n_classes <= self.config.num_classes:
            raise ValueError(f"n_classes must be in [2, {self.config.num_classes}], got {n_classes}")
        g = torch.Generator().manual_seed(10_007 + class_seed)
        ids = sorted(torch.randperm(self.config.num_classes, generator=g)[:n_classes].tolist())
        n_seen = math.ceil(n_classes / 2)
        seen, unseen = list(range(n_seen)), list(range(n_seen, n_classes))

        def make(per_class: int, local: list[int], s: int):
            y = torch.tensor(local).repeat_interleave(per_class)
            x = self.render_classes(torch.tensor(ids)[y], s, "task")
            return (x * 255).round().to(torch.uint8), y

        train_x, train_y = make(shots, seen, seed * 3 + 1)
        val_x, val_y = make(n_val_per_class, seen + unseen, seed * 3 + 2)
        test_x, test_y = make(n_test_per_class, seen + unseen, seed * 3 + 3)
        return WorldTask(
            classnames=[self.classnames[i] for i in ids],
            class_ids=ids,
            seen=seen,
            unseen=unseen,
            train_x=train_x,
            train_y=train_y,
            val_x=val_x,
            val_y=val_y,
            test_x=test_x,
            test_y=test_y,
            seed=seed,
        )

"""The paper setting: a dataset prepared by `data_prep/`, an open_clip backbone, the demo's whole story.

    ci-toolkit demo --profile paper --data ~/data/eurosat --ood ~/data/ood_pool --out runs/paper_eurosat

`--data` is a folder holding the dataset's images and its CoOp split file `split_zhou_<Name>.json`
(what `data_prep/<name>/prepare.py` writes); `--ood` an unlabeled image folder (`data_prep/ood_pool`).
The backbone, sizes and hyper-parameters come from the `paper` profile (ViT-B/16 with OpenAI weights);
`load_split_task` turns the split into the same task object the embedded world produces, so training,
attack, scan and repair are the code the demo runs. Tested end to end at tiny scale with random-init
weights (`tests/test_paper.py`); with real weights it needs them downloaded or cached by open_clip.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import DataError
from ..world import WorldTask
from .folders import load_image
from .splits import base_new_split, generate_fewshot, load_split


def find_split_file(data: str | Path) -> Path:
    """The one `split_zhou_*.json` in `data` (the dataset folder data_prep wrote it to)."""
    folder = Path(data)
    if not folder.is_dir():
        raise DataError(f"dataset folder not found: {folder}")
    found = sorted(folder.glob("split_zhou_*.json"))
    if len(found) != 1:
        raise DataError(f"{folder} must hold exactly one split_zhou_<Name>.json (run data_prep/<name>/prepare.py "
                        f"on it first); found {[p.name for p in found]}")
    return found[0]


def find_image_dir(root: Path, relpath: str) -> Path:
    """The folder the split's paths are relative to: CoOp keeps them relative to the dataset's image
    folder (EuroSAT's 2750/, Caltech's 101_ObjectCategories/, ...), which sits in or under `root`."""
    for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir()),
                   *sorted(q for p in root.iterdir() if p.is_dir() for q in p.iterdir() if q.is_dir())]:
        if (folder / relpath).is_file():
            return folder
    raise DataError(f"the split's images are not under {root} (looked for {relpath!r} there and two folder levels "
                    "down); pass the folder data_prep wrote the split to, with the images in it")


def _load(root: Path, items: list, image_size: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:


    xs, ys = [], []
    for rel, label, _ in tqdm(items, desc=f"loading {what}", leave=False, disable=len(items) < 200):
        try:
            xs.append(load_image(root / rel, image_size))
        except (ValueError, FileNotFoundError) as exc:
            raise DataError(f"{root / rel} ({what}): {exc}") from None
        ys.append(int(label))
    if not xs:
        raise DataError(f"no {what} images in the split")
    return torch.stack(xs), torch.tensor(ys)


def load_split_task(data: str | Path, image_size: int, shots: int = 16, seed: int = 1,
                    n_test_per_class: int | None = None) -> WorldTask:
    """A CoOp split as a task: base/new classes (CoCoOp's protocol), `shots` seeded training images per base class,
    the test split (optionally `n_test_per_class` per class, seeded), images loaded at `image_size`."""
    root = Path(data)
    split = load_split(find_split_file(root))
    names: dict[int, str] = {}
    for _, label, name in split["train"] + split["test"]:
        if names.setdefault(int(label), name) != name:
            raise DataError(f"label {label} has two class names in the split: {names[int(label)]!r} and {name!r}")
    if sorted(names) != list(range(len(names))):
        raise DataError(f"split labels must be 0..{len(names) - 1}, got {sorted(names)[:10]}")
    classnames = [names[i] for i in range(len(names))]
    seen, unseen = base_new_split(classnames)
    train = generate_fewshot([i for i in split["train"] if i[1] in set(seen)], shots, seed)
    test = split["test"]
    if n_test_per_class is not None:
        rng, by = random.Random(seed), {}
        for item in test:
            by.setdefault(item[1], []).append(item)
        test = [i for lab in sorted(by) for i in (rng.sample(by[lab], n_test_per_class)
                                                   if len(by[lab]) > n_test_per_class else by[lab])]
    images = find_image_dir(root, train[0][0]) if train else root
    train_x, train_y = _load(images, train, image_size, "train")
    test_x, test_y = _load(images, test, image_size, "test")
    empty = torch.zeros(0, *train_x.shape[1:], dtype=torch.uint8)
    return WorldTask(classnames=classnames, class_ids=list(range(len(classnames))), seen=seen, unseen=unseen,
                     train_x=train_x, train_y=train_y, val_x=empty, val_y=torch.zeros(0, dtype=torch.long),
                     test_x=test_x, test_y=test_y, seed=seed)


__all__ = ["find_image_dir", "find_split_file", "load_split_task"]

"""CoOp-format splits for the paper's datasets, and the OOD pool builder (used by data_prep/ scripts).

A split file `split_zhou_<Name>.json` is {"train"|"val"|"test": [[relpath, label, classname], ...]} with
paths relative to the dataset's image folder, as in the CoOp code base. Few-shot files
`split_fewshot/shot_<K>-seed_<S>.json` hold {"train": [...], "val": [...]} with K images per class
(val: min(K, 4)), drawn with a seeded RNG.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
from pathlib import Path

from ..errors import DataError
from .folders import IMAGE_EXTENSIONS

Item = list  # [relpath, label, classname]


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def read_and_split_data(
    image_dir: str | Path,
    p_trn: float = 0.5,
    p_val: float = 0.2,
    ignored: tuple[str, ...] = (),
    new_cnames: dict[str, str] | None = None,
    seed: int = 1,
) -> dict[str, list[Item]]:
    """Per-class random split of a folder-per-class dataset (CoOp's DTD.read_and_split_data).

    Class folders are sorted; `ignored` folders are skipped; `new_cnames` renames classes (Caltech101,
    EuroSAT); '_' in folder names becomes a space in class names.
    """
    root = Path(image_dir)
    if not root.is_dir():
        raise DataError(f"dataset image folder not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name not in ignored)
    if not classes:
        raise DataError(f"no class folders in {root}")
    rng = random.Random(seed)
    split = {"train": [], "val": [], "test": []}
    for label, folder in enumerate(classes):
        files = [p.relative_to(root).as_posix() for p in _images_in(root / folder)]
        if len(files) < 3:
            raise DataError(f"class {folder!r} has {len(files)} images; need at least 3 to split")
        rng.shuffle(files)
        n_trn = round(len(files) * p_trn)
        n_val = round(len(files) * p_val)
        n_trn, n_val = max(1, n_trn), max(1, n_val)
        name = (new_cnames or {}).get(folder, folder).replace("_", " ")
        for part, chunk in (("train", files[:n_trn]), ("val", files[n_trn : n_trn + n_val]), ("test", files[n_trn + n_val :])):
            split[part] += [[f, label, name] for f in chunk]
    return split


def split_trainval(trainval: list[Item], p_val: float = 0.2, seed: int = 1) -> tuple[list[Item], list[Item]]:
    """Split a train+val list per class (CoOp's OxfordPets.split_trainval)."""
    rng = random.Random(seed)
    by_label: dict[int, list[Item]] = {}
    for item in trainval:
        by_label.setdefault(item[1], []).append(item)
    train, val = [], []
    for label in sorted(by_label):
        items = by_label[label][:]
        rng.shuffle(items)
        n_val = max(1, round(len(items) * p_val))
        val += items[:n_val]
        train += items[n_val:]
    return train, val


def save_split(split: dict[str, list[Item]], path: str | Path) -> Path:
    for part in ("train", "val", "test"):
        if not split.get(part):
            raise DataError(f"split part {part!r} is empty")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({k: split[k] for k in ("train", "val", "test")}))
    return p


def load_split(path: str | Path) -> dict[str, list[Item]]:
    try:
        split = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read split file {path}: {exc}") from None
    for part in ("train", "val", "test"):
        items = split.get(part)
        if not isinstance(items, list) or not all(isinstance(i, list) and len(i) == 3 for i in items):
            raise DataError(f"{path}: {part!r} must be a list of [relpath, label, classname]")
    return split


def generate_fewshot(items: list[Item], shots: int, seed: int) -> list[Item]:
    """`shots` items per label (all of them when a class has fewer), seeded."""
    rng = random.Random(seed)
    by_label: dict[int, list[Item]] = {}
    for item in items:
        by_label.setdefault(item[1], []).append(item)
    out = []
    for label in sorted(by_label):
        pool = by_label[label]
        out += rng.sample(pool, shots) if len(pool) >= shots else pool[:]
    return out


def save_fewshot(split: dict[str, list[Item]], out_dir: str | Path, shots=(1, 2, 4, 8, 16), seeds=(1, 2, 3)) -> list[Path]:
    """Write split_fewshot/shot_<K>-seed_<S>.json files (CoOp's layout)."""
    out = Path(out_dir) / "split_fewshot"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k in shots:
        for s in seeds:
            data = {"train": generate_fewshot(split["train"], k, s), "val": generate_fewshot(split["val"], min(k, 4), s)}
            p = out / f"shot_{k}-seed_{s}.json"
            p.write_text(json.dumps(data))
            written.append(p)
    return written


def base_new_split(classnames: list[str]) -> tuple[list[int], list[int]]:
    """CoCoOp's base-to-new split: sorted class ids, the first ceil(n/2) are seen (base), the rest unseen (new)."""
    n = len(classnames)
    return list(range(math.ceil(n / 2))), list(range(math.ceil(n / 2), n))


# ---- the OOD pool ------------------------------------------------------------------------------------
def _words(text: str) -> set[str]:
    return {w for w in re.split(r"[^a-z0-9]+", text.lower()) if len(w) > 2}


def overlaps(label: str, candidates: list[str]) -> bool:
    """True when a pool label shares a word (or a plural) with any candidate class name."""
    words = _words(label)
    words |= {w.rstrip("s") for w in words}
    for c in candidates:
        cw = _words(c)
        cw |= {w.rstrip("s") for w in cw}
        if words & cw:
            return True
    return False


def build_ood_pool(
    source: str | Path,
    out_dir: str | Path,
    n: int,
    candidates: list[str],
    labels_csv: str | Path | None = None,
    seed: int = 0,
) -> dict:
    """Sample n images from `source` whose labels do not overlap the candidate class names.

    Labels come from class subfolders of `source`, or from `labels_csv` (lines "relpath,label[;label...]",
    as exported from Open Images' image-level labels). Images with an overlapping label are excluded;
    images without any label are kept (an unlabeled folder is taken as class-disjoint by the user).
    Copies the chosen files into `out_dir` (flat) and writes `out_dir/pool.json` with the provenance.
    """
    src = Path(source)
    if not src.is_dir():
        raise DataError(f"OOD source folder not found: {src}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"{out} is not empty; choose a new folder (nothing is overwritten)")
    labels: dict[str, list[str]] = {}
    if labels_csv is not None:
        for line in Path(labels_csv).read_text().splitlines():
            if line.strip() and "," in line:
                rel, lab = line.split(",", 1)
                labels[rel.strip()] = [x.strip() for x in lab.split(";") if x.strip()]
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    kept, excluded = [], []
    for p in files:
        rel = p.relative_to(src).as_posix()
        labs = labels.get(rel, [p.parent.name.replace("_", " ")] if p.parent != src else [])
        (excluded if any(overlaps(lab, candidates) for lab in labs) else kept).append(rel)
    if len(kept) < n:
        raise DataError(f"only {len(kept)} class-disjoint images in {src} ({len(excluded)} excluded); {n} requested")
    chosen = sorted(random.Random(seed).sample(kept, n))
    out.mkdir(parents=True, exist_ok=True)
    for i, rel in enumerate(chosen):
        shutil.copy2(src / rel, out / f"{i:05d}{Path(rel).suffix.lower()}")
    info = {"source": str(src), "n": n, "seed": seed, "excluded": len(excluded), "candidates": candidates, "files": chosen}
    (out / "pool.json").write_text(json.dumps(info, indent=2))
    return info

"""Image folders as labelled sets or unlabeled OOD pools, with the backbone's preprocessing.

    labelled = load_image_folder("cifar10-test", image_size=48)          # class subfolders
    pool = load_image_folder("openimages_pool", image_size=48, labelled=False, limit=1000, seed=0)

Images are resized (shorter side, bicubic) and centre-cropped to the backbone's size, then kept as uint8
[N, 3, S, S]; normalisation happens inside the model. Grayscale, palette, RGBA and CMYK images are
converted to RGB; unreadable, truncated or tiny files are reported by name (or raise with strict=True).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import DataError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
MIN_SIDE = 8  # smaller images carry no usable content at any backbone resolution


@dataclass
class ImageSet:
    """Preprocessed images with optional labels."""

    images: torch.Tensor  # uint8 [N, 3, S, S]
    labels: torch.Tensor | None  # long [N] indices into classnames, or None for an unlabeled pool
    classnames: list[str] | None
    files: list[str]  # source file of each image, relative to the folder
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) of files left out

    def __len__(self) -> int:
        return len(self.images)


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def load_image(path: Path, image_size: int) -> torch.Tensor:
    """One file -> uint8 [3, S, S]. Raises ValueError with a reason for unusable files."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()  # forces a full decode: truncated files fail here, not later
            if min(im.size) < MIN_SIDE:
                raise ValueError(f"too small ({im.size[0]}x{im.size[1]} px, minimum {MIN_SIDE})")
            if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            im = im.convert("RGB")  # grayscale, palette, CMYK, 16-bit ...
            w, h = im.size
            scale = image_size / min(w, h)
            im = im.resize((max(image_size, round(w * scale)), max(image_size, round(h * scale))), Image.BICUBIC)
            w, h = im.size
            left, top = (w - image_size) // 2, (h - image_size) // 2
            im = im.crop((left, top, left + image_size, top + image_size))
            arr = np.asarray(im, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"unreadable ({type(exc).__name__}: {exc})") from None
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_image_folder(
    folder: str | Path,
    image_size: int,
    labelled: bool | None = None,
    classnames: list[str] | None = None,
    limit: int | None = None,
    per_class: int | None = None,
    seed: int = 0,
    strict: bool = False,
    progress: bool = True,
) -> ImageSet:
    """Load a folder of images.

    labelled=None detects the layout: class subfolders only -> labelled, any image file at the top -> an
    unlabeled pool; an unlabeled pool holds the top-level images and every subfolder's (labelled=False on class
    subfolders pools their images without labels: an OOD pool from a labelled set).
    classnames fixes the label order (folder names must match; default: sorted folder names, with
    '_' read as a space). limit / per_class subsample with a seeded RNG. strict=True raises on the
    first unusable file instead of skipping it.
    """

    root = Path(folder)
    if not root.exists():
        raise DataError(f"image folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"not a folder: {root}")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    flat = _list_images(root)
    if labelled is None:
        labelled = bool(subdirs) and not flat
    g = torch.Generator().manual_seed(seed)

    entries: list[tuple[Path, int | None]] = []
    if labelled:
        if not subdirs:
            raise DataError(f"{root} has no class subfolders (expected {root}/<class>/<image>)")
        by_name = {d.name.replace("_", " "): d for d in subdirs}
        names = list(classnames) if classnames is not None else sorted(by_name)
        unknown = [n for n in names if n not in by_name and n.replace(" ", "_") not in {d.name for d in subdirs}]
        if unknown:
            raise DataError(f"class names without a subfolder in {root}: {unknown[:10]}")
        for label, name in enumerate(names):
            d = by_name.get(name) or root / name.replace(" ", "_")
            files = _list_images(d)
            if per_class is not None and len(files) > per_class:
                keep = torch.randperm(len(files), generator=g)[:per_class].sort().values
                files = [files[int(i)] for i in keep]
            entries += [(f, label) for f in files]
    else:  # an unlabeled pool: the folder's own images and every subfolder's (labels dropped)
        names = None
        entries = [(f, None) for f in flat + [f for d in subdirs for f in _list_images(d)]]
    if limit is not None and len(entries) > limit:
        keep = torch.randperm(len(entries), generator=g)[:limit].sort().values
        entries = [entries[int(i)] for i in keep]
    if not entries:
        raise DataError(f"no images found in {root} (extensions: {sorted(IMAGE_EXTENSIONS)})")

    images, labels, files, skipped = [], [], [], []
    for path, label in tqdm(entries, desc=f"loading {root.name}", disable=not progress, leave=False):
        rel = str(path.relative_to(root))
        try:
            images.append(load_image(path, image_size))
        except ValueError as exc:
            if strict:
                raise DataError(f"{rel}: {exc}") from None
            skipped.append((rel, str(exc)))
            continue
        labels.append(label)
        files.append(rel)
    if skipped:
        shown = "; ".join(f"{f}: {r}" for f, r in skipped[:5])
        warnings.warn(f"skipped {len(skipped)} unusable image(s) in {root}: {shown}", stacklevel=2)
    if not images:
        raise DataError(f"none of the {len(entries)} images in {root} could be read (first: {skipped[0]})")
    return ImageSet(
        images=torch.stack(images),
        labels=torch.tensor(labels) if labelled else None,
        classnames=names,
        files=files,
        skipped=skipped,
    )

"""Flowers102 -> split_zhou_OxfordFlowers.json (per-class 50/20/30, names from cat_to_name.json)."""
import argparse
import json
import random
from pathlib import Path

from scipy.io import loadmat

from ci_toolkit.data import save_fewshot, save_split

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--root", required=True, help="folder holding jpg/, imagelabels.mat, cat_to_name.json")
ap.add_argument("--seed", type=int, default=1)
args = ap.parse_args()
root = Path(args.root)
labels = loadmat(root / "imagelabels.mat")["labels"][0]
names = json.loads((root / "cat_to_name.json").read_text())
by_label = {}
for i, lab in enumerate(labels):
    by_label.setdefault(int(lab), []).append(f"image_{i + 1:05d}.jpg")
rng = random.Random(args.seed)
split = {"train": [], "val": [], "test": []}
for lab in sorted(by_label):
    files = by_label[lab][:]
    rng.shuffle(files)
    n_trn, n_val = round(len(files) * 0.5), round(len(files) * 0.2)
    item = lambda f: [f, lab - 1, names[str(lab)]]  # noqa: E731
    split["train"] += [item(f) for f in files[:n_trn]]
    split["val"] += [item(f) for f in files[n_trn : n_trn + n_val]]
    split["test"] += [item(f) for f in files[n_trn + n_val :]]
print("wrote", save_split(split, root / "split_zhou_OxfordFlowers.json"), {k: len(v) for k, v in split.items()})
save_fewshot(split, root)

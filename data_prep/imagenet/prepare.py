"""ImageNet -> split_zhou_ImageNet.json: train/ for training, val/ for val and test (as CoOp)."""
import argparse
from pathlib import Path

from ci_toolkit.data import IMAGE_EXTENSIONS
from ci_toolkit.data import save_fewshot, save_split

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--root", required=True, help="folder holding train/, val/ (wnid folders) and classnames.txt")
args = ap.parse_args()
root = Path(args.root)
names = {}
for line in (root / "classnames.txt").read_text().splitlines():
    if line.strip():
        wnid, name = line.strip().split(" ", 1)
        names[wnid] = name
wnids = sorted(names)


def read(part):
    items = []
    for label, wnid in enumerate(wnids):
        for p in sorted((root / part / wnid).iterdir()):
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                items.append([f"{part}/{wnid}/{p.name}", label, names[wnid]])
    return items


test = read("val")
split = {"train": read("train"), "val": test, "test": test}
print("wrote", save_split(split, root / "split_zhou_ImageNet.json"), {k: len(v) for k, v in split.items()})
save_fewshot(split, root)

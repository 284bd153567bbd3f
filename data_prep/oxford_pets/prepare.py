"""OxfordPets -> split_zhou_OxfordPets.json from annotations/trainval.txt and test.txt."""
import argparse
from pathlib import Path

from ci_toolkit.data import save_fewshot, save_split, split_trainval


def read(list_file: Path):
    items = []
    for line in list_file.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        imname, label, _species, _breed = line.split()
        breed = "_".join(imname.split("_")[:-1]).lower().replace("_", " ")
        items.append([f"{imname}.jpg", int(label) - 1, breed])
    return items


ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--root", required=True, help="folder holding images/ and annotations/")
ap.add_argument("--seed", type=int, default=1)
args = ap.parse_args()
root = Path(args.root)
train, val = split_trainval(read(root / "annotations" / "trainval.txt"), seed=args.seed)
split = {"train": train, "val": val, "test": read(root / "annotations" / "test.txt")}
print("wrote", save_split(split, root / "split_zhou_OxfordPets.json"), {k: len(v) for k, v in split.items()})
save_fewshot(split, root)

"""SUN397 -> split_zhou_SUN397.json from ClassName.txt, Training_01.txt and Testing_01.txt."""
import argparse
from pathlib import Path

from ci_toolkit.data import save_fewshot, save_split, split_trainval


def cname(path: str) -> str:  # "/b/bakery/shop" -> "shop bakery" (CoOp's convention)
    return " ".join(path.strip("/").split("/")[1:][::-1]).replace("_", " ")


ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--root", required=True, help="folder holding SUN397/ and the partition text files")
ap.add_argument("--seed", type=int, default=1)
args = ap.parse_args()
root = Path(args.root)
classes = [c.strip() for c in (root / "ClassName.txt").read_text().splitlines() if c.strip()]
label = {c: i for i, c in enumerate(classes)}


def read(list_file):
    items = []
    for line in (root / list_file).read_text().splitlines():
        line = line.strip()
        if line:
            folder = "/".join(line.split("/")[:-1])
            items.append([line.lstrip("/"), label[folder], cname(folder)])
    return items


train, val = split_trainval(read("Training_01.txt"), seed=args.seed)
split = {"train": train, "val": val, "test": read("Testing_01.txt")}
print("wrote", save_split(split, root / "split_zhou_SUN397.json"), {k: len(v) for k, v in split.items()})
save_fewshot(split, root)

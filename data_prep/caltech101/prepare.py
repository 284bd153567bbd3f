"""Caltech101 -> split_zhou_Caltech101.json (CoOp's renames and ignored folders)."""
import argparse
from pathlib import Path

from ci_toolkit.data import read_and_split_data, save_fewshot, save_split

IGNORED = ("BACKGROUND_Google", "Faces_easy")
NEW_CNAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--root", required=True, help="folder holding 101_ObjectCategories/")
ap.add_argument("--seed", type=int, default=1)
args = ap.parse_args()
root = Path(args.root)
split = read_and_split_data(root / "101_ObjectCategories", ignored=IGNORED, new_cnames=NEW_CNAMES, seed=args.seed)
print("wrote", save_split(split, root / "split_zhou_Caltech101.json"), {k: len(v) for k, v in split.items()})
save_fewshot(split, root)

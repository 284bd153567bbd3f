"""Food101 -> split_zhou_Food101.json (per-class 50/20/30)."""
import argparse
from pathlib import Path

from ci_toolkit.data import read_and_split_data, save_fewshot, save_split

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--root", required=True, help="folder holding images/")
ap.add_argument("--seed", type=int, default=1)
args = ap.parse_args()
root = Path(args.root)
split = read_and_split_data(root / "images", seed=args.seed)
print("wrote", save_split(split, root / "split_zhou_Food101.json"), {k: len(v) for k, v in split.items()})
save_fewshot(split, root)

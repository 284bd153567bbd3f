"""EuroSAT -> split_zhou_EuroSAT.json (CoOp's descriptive class names)."""
import argparse
from pathlib import Path

from ci_toolkit.data import read_and_split_data, save_fewshot, save_split

NEW_CNAMES = {
    "AnnualCrop": "Annual Crop Land", "Forest": "Forest", "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road", "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings", "River": "River",
    "SeaLake": "Sea or Lake",
}

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--root", required=True, help="folder holding 2750/")
ap.add_argument("--seed", type=int, default=1)
args = ap.parse_args()
root = Path(args.root)
split = read_and_split_data(root / "2750", new_cnames=NEW_CNAMES, seed=args.seed)
print("wrote", save_split(split, root / "split_zhou_EuroSAT.json"), {k: len(v) for k, v in split.items()})
save_fewshot(split, root)

"""FGVC Aircraft -> split_zhou_FGVCAircraft.json from the official variant lists."""
import argparse
from pathlib import Path

from ci_toolkit.data import save_fewshot, save_split

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--root", required=True, help="folder holding data/ (images/, variants.txt, images_variant_*.txt)")
args = ap.parse_args()
data = Path(args.root) / "data"
classes = [c.strip() for c in (data / "variants.txt").read_text().splitlines() if c.strip()]
label = {c: i for i, c in enumerate(classes)}
split = {}
for part in ("train", "val", "test"):
    items = []
    for line in (data / f"images_variant_{part}.txt").read_text().splitlines():
        if line.strip():
            imid, variant = line.strip().split(" ", 1)
            items.append([f"{imid}.jpg", label[variant], variant])
    split[part] = items
print("wrote", save_split(split, data / "split_zhou_FGVCAircraft.json"), {k: len(v) for k, v in split.items()})
save_fewshot(split, data)

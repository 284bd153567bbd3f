"""Build the OOD inversion pool: N images from a local folder (e.g. Open Images) whose labels do not
overlap the candidate class names. Copies them flat into --out with pool.json (provenance)."""
import argparse
from pathlib import Path

from ci_toolkit.data import build_ood_pool

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--source", required=True, help="image folder (class subfolders or flat)")
ap.add_argument("--candidates", required=True, help="text file, one candidate class name per line")
ap.add_argument("--labels", default=None, help="optional CSV 'relpath,label[;label...]' (e.g. Open Images labels)")
ap.add_argument("--n", type=int, default=1000)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--out", required=True, help="new, empty output folder")
args = ap.parse_args()
cands = [c.strip() for c in Path(args.candidates).read_text().splitlines() if c.strip()]
info = build_ood_pool(args.source, args.out, args.n, cands, labels_csv=args.labels, seed=args.seed)
print(f"pool of {info['n']} images -> {args.out} ({info['excluded']} overlapping images excluded)")

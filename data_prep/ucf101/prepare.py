"""UCF101 (CoOp's mid-frames) -> split_zhou_UCF101.json from ucfTrainTestlist/*01.txt."""
import argparse
import re
from pathlib import Path

from ci_toolkit.data import save_fewshot, save_split, split_trainval

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--root", required=True, help="folder holding UCF-101-midframes/ and ucfTrainTestlist/")
ap.add_argument("--seed", type=int, default=1)
args = ap.parse_args()
root = Path(args.root)
lists = root / "ucfTrainTestlist"
label = {}
for line in (lists / "classInd.txt").read_text().splitlines():
    if line.strip():
        i, action = line.split()
        label[action] = int(i) - 1


def read(list_file):
    items = []
    for line in (lists / list_file).read_text().splitlines():
        if line.strip():
            video = line.split()[0]
            action = video.split("/")[0]
            name = " ".join(re.findall("[A-Z][^A-Z]*", action))
            items.append([video.replace(".avi", ".jpg"), label[action], name])
    return items


train, val = split_trainval(read("trainlist01.txt"), seed=args.seed)
split = {"train": train, "val": val, "test": read("testlist01.txt")}
print("wrote", save_split(split, root / "split_zhou_UCF101.json"), {k: len(v) for k, v in split.items()})
save_fewshot(split, root)

"""`python -m lab bench collapse`: the meta-token-collapse figures over a zoo, per attack.

For every attacked model: `collapse_stats` with its attacker's trigger and target, on the backdoored model
and on the clean model of the same seed (same data, same trigger): a figure separates backdoored from
clean when the backdoored value is beyond the clean one. Per attack: the mean of each figure for both,
`paired_beyond` (the fraction of models whose value is beyond that of the clean model of their seed, in
the direction of the collapse) and the AUROC over all rows of that attack (1.0 = every backdoored model
beyond every clean one, across seeds too). Images: labelled task-domain renders of the model's
own classes (the world's, seeded), not the training images.
"""

from __future__ import annotations

import time
from pathlib import Path

from tqdm.auto import tqdm

import ci_toolkit as ci
from ci_toolkit.analysis import collapse_stats
from lab.zoo import MIN_ASR, Zoo, implanted

# +1: a larger value means collapse (text turns toward the target, pi moves);
# -1: a smaller value means collapse (pi spread shrinks; f(x) barely moves, cos stays high -> not signed)
DIRECTION = {"pi_spread_ratio": -1, "pi_shift": 1, "text_turn": 1, "meta_gain": 1, "f_spread_ratio": -1,
             "feature_cos": 1}


def bench_collapse(zoo: str | Path, min_asr: float = MIN_ASR, per_class: int = 4, seed: int = 7,
                   progress: bool = True) -> dict:
    from sklearn.metrics import roc_auc_score

    zoo = Zoo(zoo)
    manifest = zoo.manifest()
    clean_by_seed = {m["seed"]: m for m in manifest if m["attack"] == "clean"}
    attacked = [m for m in manifest if m["attack"] != "clean" and m["seed"] in clean_by_seed]
    rows, t0 = [], time.time()
    for m in tqdm(attacked, desc="collapse", disable=not progress):
        bad = zoo.load_model(m)
        clean = zoo.load_model(clean_by_seed[m["seed"]])
        attack = zoo.load_attack(m)
        size = bad.preprocess.image_size
        x, _ = ci.world.labelled(list(bad.classnames), per_class, seed + m["seed"], image_size=size)  # uint8
        for label, model in (("backdoored", bad), ("clean", clean)):
            rows.append({"path": m["path"], "attack": m["attack"], "model": label, "implanted": implanted(m, min_asr),
                         "asr_seen": m["asr_seen"], **collapse_stats(model, x, attack, attack.target)})
    per_attack = {}
    for name in sorted({r["attack"] for r in rows}):
        mine = [r for r in rows if r["attack"] == name and r["implanted"]]
        entry = {"n_models": sum(r["model"] == "backdoored" for r in mine),
                 "not_implanted": sum(1 for r in rows if r["attack"] == name and not r["implanted"]
                                      and r["model"] == "backdoored")}
        for label in ("backdoored", "clean"):
            sel = [r for r in mine if r["model"] == label]
            entry[label] = {k: sum(r[k] for r in sel) / len(sel) for k in DIRECTION} if sel else {}
        pairs = list(zip(mine[::2], mine[1::2]))  # (backdoored, clean of its seed), same images and trigger
        entry["paired_beyond"] = ({k: sum(sgn * (b[k] - c[k]) > 0 for b, c in pairs) / len(pairs)
                                   for k, sgn in DIRECTION.items()} if pairs else {})
        labels = [int(r["model"] == "backdoored") for r in mine]
        entry["auroc"] = ({k: float(roc_auc_score(labels, [s * r[k] for r in mine])) for k, s in DIRECTION.items()}
                          if len(set(labels)) == 2 else {})
        per_attack[name] = entry
    return {"per_attack": per_attack, "per_model": rows, "runtime_s": time.time() - t0,
            "config": {"zoo": str(zoo.root), "min_asr": min_asr, "per_class": per_class, "seed": seed,
                       "direction": DIRECTION,
                       "note": "paired_beyond: backdoored beyond the clean model of its seed (same images, same "
                               "trigger); auroc: all backdoored vs all clean rows of the attack; implanted models only"}}

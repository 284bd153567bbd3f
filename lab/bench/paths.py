"""`python -m lab bench paths`: which path each implanted backdoor of a zoo takes, and whether the scan found it.

A CoCoOp backdoor can send triggered images to its target through the meta tokens (the meta-net's response to
the triggered image: what the meta-gain statistics measure) or through the static context alone (the context
vectors make the target's text feature match where the trigger moves the image feature). For every implanted
backdoored model, with its attacker's own trigger on the held-out split of a default scan's OOD images:

    asr          fraction of held-out images the triggered model sends to the target
    asr_static   the same with each image's CLEAN meta tokens (the trigger acts on the image feature only)
    meta_gain    what the triggered image's meta tokens add to the target's margin, in logits
                 (`ci.collapse_stats`' meta gain x the logit scale)
    linf_255     the trigger's mean L-inf size per image, in 1/255

A backdoor with asr_static >= STATIC_ASR takes the static path: its trigger works without the meta tokens, and
the meta-gain statistics see it only through what its meta tokens add besides (a gate the probe can open). With a `bench detect` result of the same zoo, each row also says whether the default
rule found it on its target.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import ci_toolkit as ci
from lab.zoo import MIN_ASR, Zoo, implanted

# a backdoor whose trigger sends at least half the images to its target with clean meta tokens works without them
STATIC_ASR = 0.5


@torch.no_grad()
def trigger_paths(model: ci.CoCoOp, attack: ci.Attack, images: torch.Tensor) -> dict:
    """asr, asr_static, meta_gain (logits) and linf_255 of `attack`'s trigger toward its target on `images`."""
    model.eval()
    x = images.float() / 255 if images.dtype == torch.uint8 else images
    xt = attack.apply(x)
    f0, f1 = model.encode_image(x), model.encode_image(xt)
    g0, g1 = model.text_features(model.meta_tokens(f0)), model.text_features(model.meta_tokens(f1))
    t = attack.target
    asr = float((torch.einsum("ne,nke->nk", f1, g1).argmax(-1) == t).float().mean())
    static = float((torch.einsum("ne,nke->nk", f1, g0).argmax(-1) == t).float().mean())
    gain = ci.collapse_stats(model, x, attack.apply, t)["meta_gain"] * float(model.logit_scale)
    linf = float((xt - x).abs().flatten(1).max(1).values.mean()) * 255
    return {"asr": asr, "asr_static": static, "meta_gain": gain, "linf_255": linf}


def attack_name(row: dict) -> str:
    """An attack with its strength, e.g. "blended alpha=0.15" (the world's default strength: the name alone)."""
    kw = " ".join(f"{k}={v * 255:.0f}/255" if k == "eps" else f"{k}={v:g}"
                  for k, v in sorted(row["attack_kwargs"].items()))
    return f"{row['attack']} {kw}".strip()


def bench_paths(zoo: str | Path, detect: str | Path | None = None, min_asr: float = MIN_ASR,
                progress: bool = True) -> dict:
    """One row per implanted backdoored model of `zoo` (`trigger_paths`), with the default rule's verdict from the
    `bench detect` result `detect` when given; per attack, how many take the static path and how many were found."""
    zoo = Zoo(zoo)
    cfg = ci.ScanConfig()
    _, heldout = ci.detect.split_pool(ci.world.ood_pool(cfg.ood_images, seed=cfg.seed), cfg)
    scanned = {}
    if detect is not None:
        scanned = {r["path"]: r for r in json.loads(Path(detect).read_text())["per_model"]
                   if r["method"] == "clip-inspector" and r.get("evidence")}
    rows, t0 = [], time.time()
    bad = [m for m in zoo.manifest() if m["attack"] != "clean" and implanted(m, min_asr)]
    for m in tqdm(bad, desc="paths", disable=not progress):
        model = zoo.load_model(m)
        row = {"path": m["path"], "attack": m["attack"], "attack_kwargs": m.get("attack_kwargs", {}),
               "target": m["target"], "asr_seen": m["asr_seen"], **trigger_paths(model, zoo.load_attack(m), heldout)}
        row["static_path"] = row["asr_static"] >= STATIC_ASR
        if m["path"] in scanned:
            null = ci.detect.shipped_null(ci.detect.backbone_key(model.backbone.spec))
            cal = ci.detect.Calibration(null, why=None if null else "no null is shipped for this backbone")
            d = ci.decide(ci.Evidence(**scanned[m["path"]]["evidence"]), calibration=cal)
            row["found"] = d.verdict == "backdoored" and d.target_name == m["target"]
            row["calibrated"] = d.p_value is not None  # False: decided by the meta-gain rule's fixed threshold
        rows.append(row)
    per_attack = {}
    for name in sorted({attack_name(r) for r in rows}):
        mine = [r for r in rows if attack_name(r) == name]
        entry = {"n_models": len(mine), "static_path": sum(r["static_path"] for r in mine)}
        done = [r for r in mine if "found" in r]
        if done:
            entry.update(n_scanned=len(done), found=sum(r["found"] for r in done),
                         found_static=sum(r["found"] for r in done if r["static_path"]))
        per_attack[name] = entry
    return {"per_attack": per_attack, "per_model": rows, "wall_s": time.time() - t0,
            "config": {"zoo": str(zoo.root), "detect": str(detect) if detect else None, "min_asr": min_asr,
                       "static_asr": STATIC_ASR, "ood": "world", "heldout_size": len(heldout), "scan_seed": cfg.seed}}


__all__ = ["STATIC_ASR", "attack_name", "bench_paths", "trigger_paths"]

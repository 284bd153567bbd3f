"""`python -m lab bench gates`: how large a perturbation must be to open the meta-net gate a backdoor uses.

Why: the scan's inversion works only if an eps-bounded trigger reaches the backdoor. In CoCoOp the
backdoor lives in the meta-net (Linear - ReLU - Linear): the attacker's trigger switches on hidden units
that clean images leave off or low. For every implanted zoo model this benchmark finds the unit the
attacker's trigger raises most (its pre-activation on held-out OOD images, triggered minus clean), then
asks, for each eps, what a universal perturbation optimised to raise exactly that unit achieves
(`ci.analysis.open_gate`): `opening` = how far it moves the unit from the clean level toward the
triggered level (0 = not at all, 1 = as far as the trigger), and `asr` = the fraction of held-out images it
sends to the target (`clean_asr`: without it). A gate that only opens beyond the scan's eps explains a
backdoor the scan cannot find, whatever the decision rule. Images: the scan's OOD pool and held-out split.

Per model it also records the whole gate picture, because "the unit the trigger raises most" is not the
only way a backdoor can use the meta-net: `open_clean` / `open_trigger` (per unit, the fraction of
held-out images on which it is open, pre-activation > 0, without and with the attacker's trigger),
`closes` (the unit whose mean pre-activation the trigger changes most is pushed DOWN: the backdoor shuts
a gate) and `trigger_meta_gain` (the meta gain of `ci.analysis.collapse_stats` for the attacker's own
trigger, in logits: what the scan's rule would measure if inversion found it exactly; about 0 means the
backdoor does not go through the meta tokens at all). `opening` is None where the trigger moves its unit
by less than 1e-3 (the ratio would be noise).

`shut_probe`: the shutting half of the scan's gate probe on its own (`ci.analysis.gate_probe(...,
shut=True)`: each unit SHUT in turn by a universal perturbation at `shut_eps`) on every scannable model,
clean ones included: per model the unit whose perturbation scores the highest ASR x max(meta gain, 0),
its class, and whether that is the target; per attack how many are, and the clean models' highest score.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import ci_toolkit as ci
from ci_toolkit.analysis import collapse_stats, gate_open_fraction, gate_preactivations, gate_probe, open_gate
from ci_toolkit.detect import split_pool
from lab.bench.detect import world_ood
from lab.zoo import MIN_ASR, Zoo, implanted

EPS_255 = (8.0, 10.0, 16.0, 24.0)  # the attacker's bound, the scan's default, and two larger


def _mean(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def bench_gates(zoo: str | Path, eps_255=EPS_255, min_asr: float = MIN_ASR, pool_size: int = 512,
                heldout_size: int = 200, seed: int = 0, progress: bool = True, shut_eps: float | None = 16.0) -> dict:
    zoo = Zoo(zoo)
    manifest = zoo.manifest()
    attacked = [m for m in manifest if m["attack"] != "clean" and implanted(m, min_asr)]
    cfg = ci.ScanConfig(pool_size=pool_size, heldout_size=heldout_size, seed=seed)
    rows, t0 = [], time.time()
    bar = tqdm(total=len(attacked) * len(eps_255), desc="gates", disable=not progress)
    for m in attacked:
        model = zoo.load_model(m).eval()
        attack = zoo.load_attack(m)
        pool, held = split_pool(world_ood(cfg, model.preprocess.image_size), cfg)  # float images in [0, 1]
        target = attack.target
        h0 = gate_preactivations(model, held).mean(0)
        h1 = gate_preactivations(model, attack.apply(held)).mean(0)
        change = h1 - h0
        unit = int(change.argmax())
        biggest = int(change.abs().argmax())
        gain = collapse_stats(model, held, attack.apply, target)["meta_gain"] * float(model.logit_scale)

        def hits(x):
            with torch.no_grad():
                return float((model(x).argmax(1) == target).float().mean())

        triggered = attack.apply(held)
        row = {"path": m["path"], "attack": m["attack"], "target": m["target"], "asr_seen": m["asr_seen"],
               "unit": unit, "units": len(h0), "clean_level": float(h0[unit]), "trigger_level": float(h1[unit]),
               "trigger_asr": hits(triggered), "clean_asr": hits(held),
               "open_clean": gate_open_fraction(model, held), "open_trigger": gate_open_fraction(model, triggered),
               "closes": bool(change[biggest] < 0), "trigger_meta_gain": gain, "eps": {}}
        moved = row["trigger_level"] - row["clean_level"]
        for e in eps_255:
            delta = open_gate(model, pool, unit, e / 255, seed=seed)
            xd = (held + delta).clamp(0, 1)
            level = float(gate_preactivations(model, xd).mean(0)[unit])
            opening = (level - row["clean_level"]) / moved if moved > 1e-3 else None
            row["eps"][str(e)] = {"level": level, "opening": opening, "asr": hits(xd)}
            bar.update(1)
        rows.append(row)
    bar.close()
    per_attack = {}
    for name in sorted({r["attack"] for r in rows}):
        mine = [r for r in rows if r["attack"] == name]
        per_attack[name] = {"n_models": len(mine), "trigger_asr": sum(r["trigger_asr"] for r in mine) / len(mine),
                            "closes": sum(r["closes"] for r in mine),
                            "trigger_meta_gain": sum(r["trigger_meta_gain"] for r in mine) / len(mine),
                            "eps": {str(e): {k: _mean([r["eps"][str(e)][k] for r in mine]) for k in ("opening", "asr")}
                                    for e in eps_255}}
    shut = None if shut_eps is None else shut_probe(zoo, [m for m in manifest if implanted(m, min_asr)], cfg, shut_eps,
                                                    progress)
    return {"per_attack": per_attack, "per_model": rows, "shut_probe": shut, "runtime_s": time.time() - t0,
            "config": {"zoo": str(zoo.root), "eps_255": list(eps_255), "min_asr": min_asr, "pool_size": pool_size,
                       "heldout_size": heldout_size, "seed": seed, "ood": "world (the scan's OOD set)",
                       "note": "unit: the meta-net hidden unit the attacker's trigger raises most; opening: "
                               "(level with the eps-bounded gate-opening perturbation - clean level) / (trigger "
                               "level - clean level); asr: held-out images sent to the target by it"}}


def shut_probe(zoo: Zoo, models: list[dict], cfg: ci.ScanConfig, eps_255: float, progress: bool = True) -> dict:
    """Each meta-net unit of each model shut in turn at eps_255 / 255: the best-scoring unit per model."""
    out = {"eps_255": eps_255, "per_model": []}
    for m in tqdm(models, desc="shut probe", disable=not progress):
        model = zoo.load_model(m).eval()
        pool, held = split_pool(world_ood(cfg, model.preprocess.image_size), cfg)
        units, _ = gate_probe(model, pool, held, eps_255 / 255, model.prompts_for(), cfg.meta_images, cfg.seed,
                              shut=True)
        best = max(units, key=lambda u: u["asr"] * max(u["meta_gain"], 0))
        name = model.classnames[best["class"]]
        out["per_model"].append({"path": m["path"], "attack": m["attack"], "target": m["target"],
                                 "unit": best["unit"], "class": name, "asr": best["asr"],
                                 "meta_gain": best["meta_gain"], "score": best["asr"] * max(best["meta_gain"], 0),
                                 "right_target": m["attack"] != "clean" and name == m["target"]})
    rows = out["per_model"]
    clean = [r["score"] for r in rows if r["attack"] == "clean"]
    out["clean_max"] = max(clean) if clean else None
    out["per_attack"] = {}
    for a in sorted({r["attack"] for r in rows} - {"clean"}):
        mine = [r for r in rows if r["attack"] == a]
        out["per_attack"][a] = {"n_models": len(mine), "right_target": sum(r["right_target"] for r in mine),
                                "min_score_right": min((r["score"] for r in mine if r["right_target"]), default=None)}
    return out

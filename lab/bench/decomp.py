"""`python -m lab bench decomp`: the decomposition's exactness, where each encoder backdoor of a ViT MiniCLIP zoo
lives (mean-ablation of heads vs MLPs, per layer), and the inference-time defenses (Decomp-Rep, the MLP repair,
Decomp-Det against STRIP) on it. DECOMP.md sections 2-5.

    python -m lab encoder-zoo --profile decomp-vit --out runs/decomp_vit --workers 2 --no-audit
    python -m lab bench decomp --zoo runs/decomp_vit --out benchmarks/decomp.json

Images: EVAL_PAIRS held-out pretraining-domain world images (300-class zero-shot with the model's own text
tower, "a photo of a {class}."), split by seed into the defender's clean validation set V (VAL_FRACTION, the
prototypes and eps) and the evaluation set (clean accuracy, and the trigger on its non-target images).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

import ci_toolkit as ci
from ci_toolkit.decomp import (
    DecompConfig,
    DecompDefense,
    PatchMapDetector,
    Prototypes,
    StripConfig,
    ablate,
    decompose,
    layer_mask,
    mlp_mask,
    mmd,
    patch_shares,
    strip_scores,
    trigger_tokens,
)

from ..encoder_zoo import ENCODER_ZOO_PROFILES, EVAL_PAIR_SEED, EVAL_PAIRS

VAL_FRACTION = 0.2  # DECOMP.md section 3, step 1
SPLIT_SEED = 0
STRIP_IMAGES = 100  # clean and as many triggered evaluation images per model for STRIP (64 overlays each)
EPS_QUANTILES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3)  # the eps sweep (the paper's Fig. 6 is lost)
RANDOM_HEAD_SEEDS = 5  # "random heads" control: as many last-layer heads as Decomp-Rep flags on average
PATCH_ATTACKS = ("encoder-badnets", "encoder-badclip")  # trigger under one token (DECOMP.md: patch-style)
BLEND_ATTACKS = ("encoder-blended", "encoder-sig", "encoder-wanet")  # global triggers (blend-style)


def sum_rel_error(n_images: int = 64, seed: int = 0) -> dict:
    """Largest relative error |sum of terms - encode_image| / |encode_image| (float32) on the shipped ViT
    MiniCLIP (world images) and a random-init ViT-B/16 (uniform noise images)."""
    out = {}
    g = torch.Generator().manual_seed(seed)
    for name, bb, x in (
        ("miniclip-vit", ci.create_backbone("miniclip-vit"), None),
        ("ViT-B-16-random", ci.create_backbone("ViT-B-16"), torch.rand(4, 3, 224, 224, generator=g)),
    ):
        if x is None:
            x, _ = ci.world.World(ci.world.WorldConfig()).sample(n_images, seed=EVAL_PAIR_SEED, domain="pretrain")
        with torch.no_grad():
            ref = bb.clip.encode_image(bb.preprocess.normalize(x))
        dec = decompose(bb, x, tokens=name == "miniclip-vit")
        got = dec.total() * dec.norm[:, None]
        out[name] = float(((got - ref).norm(dim=-1) / ref.norm(dim=-1)).max())
    return out


def _acc(emb: torch.Tensor, text: torch.Tensor, labels: torch.Tensor) -> float:
    return float(((emb @ text.T).argmax(-1) == labels).float().mean())


def _asr(emb: torch.Tensor, text: torch.Tensor, target: int) -> float:
    return float(((emb @ text.T).argmax(-1) == target).float().mean())


def audit_model(zoo: Path, row: dict, backbone_name: str, n_images: int = EVAL_PAIRS,
                strip_images: int = STRIP_IMAGES) -> dict:
    """Every measurement of one model (clean control: accuracy, flags and the defenses' cost only) on `n_images`
    held-out images, STRIP on `strip_images` clean and as many triggered ones."""
    t0 = time.time()
    names = ci.world.WorldConfig().classnames()
    bb = ci.create_backbone(backbone_name, weights_file=zoo / "models" / row["name"] / "encoder")
    text = F.normalize(ci.model.class_text_features(bb.clip, names), dim=-1)
    x, y = ci.world.World(ci.world.WorldConfig()).sample(n_images, seed=EVAL_PAIR_SEED, domain="pretrain")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = int(VAL_FRACTION * len(x))
    val, ev = order[:n_val], order[n_val:]
    dec_val, dec_clean = decompose(bb, x[val]), decompose(bb, x[ev])
    y_ev = y[ev]
    protos = Prototypes.of(dec_val)
    L, H = dec_clean.n_layers, dec_clean.n_heads
    defense = DecompDefense.fit(dec_val)
    res = {"name": row["name"], "attack": row["attack"], "target": row.get("target"), "layers": L, "heads": H,
           "eps": defense.eps, "zeta": defense.zeta,
           "cacc": _acc(dec_clean.total(), text, y_ev)}
    all_heads = torch.ones(L, H, dtype=torch.bool)
    all_mlps = mlp_mask(L, torch.ones(L, dtype=torch.bool))

    def both(fn):
        """fn(decomposition) -> embeddings, measured as CACC on clean and ASR on triggered images."""
        out = {"cacc": _acc(fn(dec_clean), text, y_ev)}
        if trig is not None:
            out["asr"] = _asr(fn(trig), text, target)
        return out

    trig, target = None, None
    if row["attack"] != "clean":
        attack = ci.load_attack(zoo / "attackers" / row["name"])
        target = names.index(row["target"])
        keep = y_ev != target
        trig_x = attack(x[ev][keep]).clamp(0, 1)
        trig = decompose(bb, trig_x)
        res["asr"] = _asr(trig.total(), text, target)
    res["ablate_all_heads"] = both(lambda d: ablate(d, protos, all_heads))
    res["ablate_all_mlps"] = both(lambda d: ablate(d, protos, None, all_mlps))
    res["per_layer"] = {}
    for direction in ("separate", "forward", "backward"):
        res["per_layer"][direction] = {
            "heads": [both(lambda d, l=l, r=direction: ablate(d, protos, layer_mask(L, l, r, H))) for l in range(1, L + 1)],
            "mlps": [both(lambda d, l=l, r=direction: ablate(d, protos, None, mlp_mask(L, layer_mask(L, l, r))))
                     for l in range(1, L + 1)],
        }
    for mode in ("heads", "mlps", "both"):
        res[f"repair_{mode}"] = both(lambda d, m=mode: defense.repair(d, m))
    res["flagged_clean"] = float(defense.count(dec_clean).float().mean())
    # the patch-map detector (ci.decomp.PatchMapDetector): where each head looks, every layer
    patch_map = PatchMapDetector.fit(patch_shares(bb, x[val]))
    pm_clean = patch_map.score(patch_shares(bb, x[ev]))
    res["patchmap_flagged_clean"] = float((pm_clean > patch_map.threshold).float().mean())
    res["eps_sweep"] = []
    for q in EPS_QUANTILES:
        d_q = DecompDefense.fit(dec_val, DecompConfig(eps_quantile=q))
        res["eps_sweep"].append({"quantile": q, "eps": d_q.eps, **both(lambda d, dq=d_q: dq.repair(d, "heads"))})
    if trig is not None:
        n_clean, n_trig = defense.count(dec_clean), defense.count(trig)
        res["flagged_triggered"] = float(n_trig.float().mean())
        labels = [0] * len(n_clean) + [1] * len(n_trig)
        res["det_auroc"] = float(roc_auc_score(labels, torch.cat([n_clean, n_trig]).tolist()))
        res["det_tpr"] = float((n_trig > defense.zeta).float().mean())
        res["det_fpr"] = float((n_clean > defense.zeta).float().mean())
        shares_trig = patch_shares(bb, trig_x)
        pm_trig = patch_map.score(shares_trig)
        res["det_patchmap_auroc"] = float(roc_auc_score(labels, torch.cat([pm_clean, pm_trig]).tolist()))
        res["det_patchmap_tpr"] = float((pm_trig > patch_map.threshold).float().mean())
        res["det_patchmap_fpr"] = res["patchmap_flagged_clean"]
        if row["attack"] in PATCH_ATTACKS:  # a global trigger changes every token: nothing to locate
            under = trigger_tokens(trig_x, x[ev][keep], trig.grid)  # [B, N]
            hit = under[torch.arange(len(trig_x)), patch_map.locate(shares_trig)]
            res["patchmap_located"] = float(hit.float().mean())
        # random heads of the last layer, as many as Decomp-Rep flags on triggered images (DECOMP.md, Table 3)
        k = max(1, round(res["flagged_triggered"]))
        rand = []
        for s in range(RANDOM_HEAD_SEEDS):
            g = torch.Generator().manual_seed(s)
            mask = torch.zeros(L, H, dtype=torch.bool)
            mask[-1, torch.randperm(H, generator=g)[:k]] = True
            rand.append(both(lambda d, m=mask: ablate(d, protos, m)))
        res["random_heads"] = {"k": k, "asr": sum(r["asr"] for r in rand) / len(rand),
                               "cacc": sum(r["cacc"] for r in rand) / len(rand)}
        # where clean and triggered differ: MMD per last-layer head and per MLP (200 images each)
        m = min(200, len(trig), len(dec_clean))
        res["mmd_last_heads"] = [mmd(dec_clean.heads[:m, -1, h], trig.heads[:m, -1, h]) for h in range(H)]
        res["mmd_mlps"] = [mmd(dec_clean.mlps[:m, l], trig.mlps[:m, l]) for l in range(1, L + 1)]
        # STRIP against Decomp-Det on the same STRIP_IMAGES clean and triggered evaluation images
        pool = x[val]
        xc = x[ev][:strip_images]
        xb = attack(x[ev][keep][:strip_images]).clamp(0, 1)
        s = torch.cat([strip_scores(bb, text, xc, pool, StripConfig(seed=0)),
                       strip_scores(bb, text, xb, pool, StripConfig(seed=1))])
        sub = [0] * len(xc) + [1] * len(xb)
        res["strip_auroc"] = float(roc_auc_score(sub, s.tolist()))
        res["det_auroc_strip_subset"] = float(roc_auc_score(
            sub, torch.cat([n_clean[:strip_images], n_trig[:len(xb)]]).tolist()))
        res["det_patchmap_auroc_strip_subset"] = float(roc_auc_score(
            sub, torch.cat([pm_clean[:strip_images], pm_trig[:len(xb)]]).tolist()))
    res["seconds"] = round(time.time() - t0, 1)
    return res


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def bench_decomp(zoo: str | Path, out: str | Path, min_asr: float = 0.5, n_images: int = EVAL_PAIRS,
                 strip_images: int = STRIP_IMAGES) -> dict:
    """The benchmark over a built zoo; per-model results are cached in ZOO/decomp/ (a rerun skips them)."""
    zoo, out = Path(zoo), Path(out)
    manifest = json.loads((zoo / "manifest.json").read_text())
    profile = ENCODER_ZOO_PROFILES[manifest["profile"]["name"]]
    t0 = time.time()
    models = []
    for row in manifest["models"]:
        cache = zoo / "decomp" / f"{row['name']}.json"
        if not cache.exists():
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(audit_model(zoo, row, profile.backbone, n_images, strip_images), indent=1))
        models.append(json.loads(cache.read_text()))
    implanted = [m for m in models if m["attack"] != "clean" and m["asr"] >= min_asr]
    patch = [m for m in implanted if m["attack"] in PATCH_ATTACKS]
    blend = [m for m in implanted if m["attack"] in BLEND_ATTACKS]
    clean = [m for m in models if m["attack"] == "clean"]

    def finding(group):
        return {"n": len(group), "asr": _mean([m["asr"] for m in group]), "cacc": _mean([m["cacc"] for m in group]),
                "asr_all_heads_ablated": _mean([m["ablate_all_heads"]["asr"] for m in group]),
                "asr_all_mlps_ablated": _mean([m["ablate_all_mlps"]["asr"] for m in group]),
                "cacc_all_heads_ablated": _mean([m["ablate_all_heads"]["cacc"] for m in group]),
                "cacc_all_mlps_ablated": _mean([m["ablate_all_mlps"]["cacc"] for m in group]),
                "asr_last_layer_heads_ablated": _mean([m["per_layer"]["separate"]["heads"][-1]["asr"] for m in group]),
                "asr_late_mlps_ablated": _mean([m["repair_mlps"]["asr"] for m in group]),
                "asr_repair_heads": _mean([m["repair_heads"]["asr"] for m in group]),
                "top1_drop_repair_heads": _mean([m["cacc"] - m["repair_heads"]["cacc"] for m in group]),
                "asr_repair_mlps": _mean([m["repair_mlps"]["asr"] for m in group]),
                "top1_drop_repair_mlps": _mean([m["cacc"] - m["repair_mlps"]["cacc"] for m in group]),
                "asr_repair_both": _mean([m["repair_both"]["asr"] for m in group]),
                "top1_drop_repair_both": _mean([m["cacc"] - m["repair_both"]["cacc"] for m in group]),
                "asr_random_heads": _mean([m["random_heads"]["asr"] for m in group]),
                "det_auroc": _mean([m["det_auroc"] for m in group]),
                "det_auroc_strip_subset": _mean([m["det_auroc_strip_subset"] for m in group]),
                "det_patchmap_auroc": _mean([m.get("det_patchmap_auroc") for m in group]),
                "det_patchmap_tpr": _mean([m.get("det_patchmap_tpr") for m in group]),
                "det_patchmap_fpr": _mean([m.get("det_patchmap_fpr") for m in group]),
                "det_patchmap_auroc_strip_subset": _mean([m.get("det_patchmap_auroc_strip_subset") for m in group]),
                "patchmap_located": _mean([m.get("patchmap_located") for m in group]),
                "strip_auroc": _mean([m["strip_auroc"] for m in group])}

    result = {
        "zoo": str(zoo), "profile": manifest["profile"]["name"], "backbone": profile.backbone,
        "config": {"n_images": n_images, "val_fraction": VAL_FRACTION, "split_seed": SPLIT_SEED,
                   "strip_images": strip_images, "strip_overlays": StripConfig().n_overlays, "min_asr": min_asr,
                   "eps_quantiles": list(EPS_QUANTILES), "random_head_seeds": RANDOM_HEAD_SEEDS},
        "sum_rel_error_by_model": sum_rel_error(),
        "n_models": len(models), "n_clean": len(clean), "n_implanted": len(implanted),
        "n_patch": len(patch), "n_blend": len(blend), "min_asr": min_asr,
        "findings": {"patch": finding(patch), "blend": finding(blend)},
        "clean_controls": [{"name": m["name"], "cacc": m["cacc"], "flagged_clean": m["flagged_clean"]} for m in clean],
        "models": models,
        "aggregation": "rep_* and det_auroc: means over the implanted patch-style models (the paper applies "
                       "Decomp-Rep and Decomp-Det to patch attacks); *_max: the worst model",
    }
    result["sum_rel_error"] = max(result["sum_rel_error_by_model"].values())
    result["rep_asr_after"] = result["findings"]["patch"]["asr_repair_heads"]
    result["rep_asr_after_max"] = max((m["repair_heads"]["asr"] for m in patch), default=None)
    result["rep_top1_drop"] = result["findings"]["patch"]["top1_drop_repair_heads"]
    result["rep_top1_drop_max"] = max((m["cacc"] - m["repair_heads"]["cacc"] for m in patch), default=None)
    result["det_auroc"] = result["findings"]["patch"]["det_auroc"]
    result["det_auroc_min"] = min((m["det_auroc"] for m in patch), default=None)
    result["strip_auroc"] = result["findings"]["patch"]["strip_auroc"]
    # the patch-map detector (not the paper's Decomp-Det; det_auroc above is the paper's)
    result["det_patchmap_auroc"] = result["findings"]["patch"]["det_patchmap_auroc"]
    result["det_patchmap_auroc_min"] = min((m["det_patchmap_auroc"] for m in patch if "det_patchmap_auroc" in m),
                                           default=None)
    result["det_patchmap_tpr"] = result["findings"]["patch"]["det_patchmap_tpr"]
    result["det_patchmap_fpr"] = result["findings"]["patch"]["det_patchmap_fpr"]
    result["wall_s"] = round(time.time() - t0, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float))
    decomp_figure(result, out.with_suffix(".png"))
    return result


def decomp_figure(result: dict, path: Path) -> None:
    """Four panels: ASR with all heads vs all MLPs ablated per model; ASR with the heads / MLPs of layers l..L
    ablated (backward), patch vs blend means; Decomp-Rep's eps sweep (ASR); input-detection AUROC per model
    (Decomp-Det, the patch map, STRIP on its subset)."""
    import matplotlib.pyplot as plt

    models = [m for m in result["models"] if m["attack"] != "clean"]
    fig, ax = plt.subplots(1, 4, figsize=(20, 4))
    idx = range(len(models))
    ax[0].bar([i - 0.2 for i in idx], [m["asr"] for m in models], 0.2, label="no ablation", color="grey")
    ax[0].bar(list(idx), [m["ablate_all_heads"]["asr"] for m in models], 0.2, label="all heads ablated")
    ax[0].bar([i + 0.2 for i in idx], [m["ablate_all_mlps"]["asr"] for m in models], 0.2, label="all MLPs ablated")
    ax[0].set_xticks(list(idx), [f"{m['name']}\n{m['attack'].removeprefix('encoder-')}" for m in models], fontsize=7)
    ax[0].set_ylabel("ASR")
    ax[0].legend(fontsize=7, loc="lower left")
    ax[0].set_title("where the backdoor lives (mean-ablation)")
    for group, style in (("patch", "-"), ("blend", "--")):
        ms = [m for m in models if (m["attack"] in PATCH_ATTACKS) == (group == "patch")]
        if not ms:
            continue
        L = ms[0]["layers"]
        for kind in ("heads", "mlps"):
            curve = [_mean([m["per_layer"]["backward"][kind][l]["asr"] for m in ms]) for l in range(L)]
            ax[1].plot(range(1, L + 1), curve, style, marker="o", label=f"{group}: {kind} of layers l..L")
    ax[1].set_ylim(0, 1.05)
    ax[1].set_xlabel("first ablated layer l")
    ax[1].set_ylabel("ASR")
    ax[1].legend(fontsize=7)
    ax[1].set_title("backward ablation")
    for m in models:
        if m["attack"] in PATCH_ATTACKS:
            sweep = m["eps_sweep"]
            ax[2].plot([s["quantile"] for s in sweep], [s["asr"] for s in sweep], marker="o", label=f"{m['name']} ASR")
    ax[2].set_xscale("log")
    ax[2].set_ylim(0, 1.05)
    ax[2].set_xlabel("eps (quantile of clean cosines)")
    ax[2].set_ylabel("ASR after Decomp-Rep")
    ax[2].set_title("Decomp-Rep's eps")
    ax[2].legend(fontsize=6)
    for off, key, label in ((-0.25, "det_auroc", "Decomp-Det (paper)"), (0, "det_patchmap_auroc", "patch map"),
                            (0.25, "strip_auroc", "STRIP (subset)")):
        ax[3].bar([i + off for i in idx], [m.get(key) or 0 for m in models], 0.25, label=label)
    ax[3].axhline(0.9, color="k", lw=0.8, ls=":")
    ax[3].set_xticks(list(idx), [f"{m['name']}\n{m['attack'].removeprefix('encoder-')}" for m in models], fontsize=7)
    ax[3].set_ylim(0, 1.05)
    ax[3].set_ylabel("input AUROC (triggered vs clean)")
    ax[3].set_title("detecting triggered inputs")
    ax[3].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["BLEND_ATTACKS", "PATCH_ATTACKS", "audit_model", "bench_decomp", "decomp_figure", "sum_rel_error"]

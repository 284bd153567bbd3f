"""Where an encoder backdoor lives, and inference-time defenses that act there ("A Closer Look at Backdoor
Attacks on CLIP"; spec DECOMP.md): the exact decomposition of a ViT image embedding into heads, tokens and
MLPs, mean-ablation, Decomp-Rep / Decomp-Det, a patch-map detector, and the STRIP baseline.

    import ci_toolkit as ci
    bb = ci.create_backbone("miniclip-vit")
    dec = ci.decompose(bb, images)                                   # heads [B, L, H, E], mlps [B, L + 1, E]
    defense = ci.decomp.DecompDefense.fit(ci.decompose(bb, clean))   # prototypes + eps from clean images
    defense.repair(dec); defense.detect(dec)
    ci.decomp.PatchMapDetector.fit(ci.decomp.patch_shares(bb, clean))  # where each head looks (patchmap.py)
"""

from .decompose import CENTRINGS, Decomposition, decompose
from .defense import MODES, DecompConfig, DecompDefense, Prototypes, ablate, layer_mask, mlp_mask, mmd
from .patchmap import PATCH_FPR, PatchMapDetector, patch_shares, token_shares, trigger_tokens
from .strip import StripConfig, strip_scores

__all__ = [
           "CENTRINGS",
           "MODES",
           "PATCH_FPR",
           "PatchMapDetector",
           "DecompConfig",
           "DecompDefense",
           "Decomposition",
           "Prototypes",
           "StripConfig",
           "ablate",
           "decompose",
           "layer_mask",
           "mlp_mask",
           "mmd",
           "patch_shares",
           "strip_scores",
           "token_shares",
           "trigger_tokens",
]

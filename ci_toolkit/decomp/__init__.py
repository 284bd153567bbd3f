"""Where an encoder backdoor lives, and inference-time defenses that act there ("A Closer Look at Backdoor
Attacks on CLIP"; spec DECOMP.md): the exact decomposition of a ViT image embedding into heads, tokens and
MLPs, mean-ablation, Decomp-Rep / Decomp-Det, and the STRIP baseline.

    import ci_toolkit as ci
    bb = ci.create_backbone("miniclip-vit")
    dec = ci.decompose(bb, images)                                   # heads [B, L, H, E], mlps [B, L + 1, E]
    defense = ci.decomp.DecompDefense.fit(ci.decompose(bb, clean))   # prototypes + eps from clean images
    defense.repair(dec); defense.detect(dec)
"""

from .decompose import CENTRINGS, Decomposition, decompose
from .defense import MODES, DecompConfig, DecompDefense, Prototypes, ablate, layer_mask, mlp_mask, mmd
from .strip import StripConfig, strip_scores

__all__ = [
           "CENTRINGS",
           "MODES",
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
           "strip_scores",
]

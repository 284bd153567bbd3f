"""The CLIP text path on token *embeddings*, with the exact sequence crop.

Causal attention means position i only sees positions <= i, so everything after the longest EOS in a
batch can be dropped without changing any EOS feature: a 77-token context shrinks to ~10 tokens for
short class names. `tests/test_cocoop.py` checks cropped == uncropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def eot_index(tokens: torch.Tensor) -> torch.Tensor:
    """Position of the EOS token: the CLIP BPE gives it the largest id in each row."""
    return tokens.argmax(dim=-1)


def crop_length(eot: torch.Tensor) -> int:
    """Shortest sequence length that still contains every EOS."""
    return int(eot.max()) + 1


def encode_embeddings(clip, x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """Text features (projected, not normalised) from prompt embeddings x [N, L, D].

    L may be anything up to the context length; the positional embedding and causal mask are cut to it.
    The mask is passed explicitly: without it open_clip's transformer attends bidirectionally.
    """
    length = x.shape[1]
    x = x + clip.positional_embedding[:length].to(x.dtype)
    mask = clip.attn_mask[:length, :length] if clip.attn_mask is not None else None
    x = clip.transformer(x, attn_mask=mask)
    x = clip.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot]
    proj = clip.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


def encode_tokens(clip, tokens: torch.Tensor, normalize: bool = True, crop: bool = True) -> torch.Tensor:
    """Same as `clip.encode_text(tokens)` (cropped by default, which is exact and much faster)."""
    eot = eot_index(tokens)
    if crop:
        tokens = tokens[:, : crop_length(eot)]
    feats = encode_embeddings(clip, clip.token_embedding(tokens), eot)
    return F.normalize(feats, dim=-1) if normalize else feats

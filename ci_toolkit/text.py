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


def _fast_blocks(clip) -> bool:
    """True when every block is open_clip's plain ResidualAttentionBlock (what the shared-prefix path reimplements)."""
    blocks = getattr(clip.transformer, "resblocks", None)
    if blocks is None or not getattr(clip.transformer, "batch_first", True):
        return False
    for b in blocks:
        attn = getattr(b, "attn", None)
        if (not isinstance(attn, torch.nn.MultiheadAttention) or hasattr(b, "ln_1_kv") or attn.in_proj_weight is None
                or not attn.batch_first or not hasattr(b, "mlp") or not hasattr(b, "ln_2")):
            return False
    return True


def encode_shared_prefix(clip, head: torch.Tensor, tails: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """Text features (projected, not normalised) of B x K prompts [head_b, tails_bk] that share a head.

    head [B, P, D]: the first P token embeddings, the same for every class of an image (SOS + context);
    tails [B, K, S, D]: the rest, per class; eot [B, K]: EOS position in the full sequence (>= P).
    Exactly what `encode_embeddings` gives on the concatenated prompts, but under the causal mask the
    head's activations do not depend on the tail, so they are computed once per image instead of K times,
    and in the last block only the EOS position goes through attention output and MLP: about 2x fewer
    FLOPs for CoCoOp's 5-token head. Returns [B, K, E].
    """
    B, P, D = head.shape
    K, S = tails.shape[1], tails.shape[2]
    pos = clip.positional_embedding.to(head.dtype)
    h = head + pos[:P]
    t = tails + pos[P : P + S]
    blocks = list(clip.transformer.resblocks)
    n_heads = blocks[0].attn.num_heads
    hd = D // n_heads
    scale = hd ** -0.5
    causal = torch.ones(S, S, dtype=torch.bool, device=head.device).tril()  # tail i sees tail j <= i
    e = (eot - P).clamp(min=0)  # [B, K] EOS position within the tail
    for li, blk in enumerate(blocks):
        last = li == len(blocks) - 1
        w, b = blk.attn.in_proj_weight, blk.attn.in_proj_bias
        # head: an ordinary causal block on P tokens (its keys/values serve every class)
        yh = blk.ln_1(h)
        qh, kh, vh = F.linear(yh, w, b).view(B, P, 3, n_heads, hd).unbind(2)  # [B, P, H, hd]
        yt = blk.ln_1(t)
        qkv_t = F.linear(yt, w, b).view(B, K, S, 3, n_heads, hd)
        qt, kt, vt = qkv_t.unbind(3)  # [B, K, S, H, hd]
        if last:  # only the EOS query matters
            idx = e.view(B, K, 1, 1, 1).expand(B, K, 1, n_heads, hd)
            qt = qt.gather(2, idx)  # [B, K, 1, H, hd]
            mask_t = causal[e]  # [B, K, S]: tail positions <= EOS
            mask_t = mask_t.unsqueeze(2)  # [B, K, 1, S]
        else:
            mask_t = causal  # [S, S]
        # scores of tail queries against head keys (all visible) and tail keys (causal)
        s_head = torch.einsum("bkqhd,bphd->bkhqp", qt, kh) * scale
        s_tail = torch.einsum("bkqhd,bkshd->bkhqs", qt, kt) * scale
        if last:
            s_tail = s_tail.masked_fill(~mask_t.unsqueeze(2), float("-inf"))
        else:
            s_tail = s_tail.masked_fill(~mask_t, float("-inf"))
        att = torch.softmax(torch.cat([s_head, s_tail], dim=-1), dim=-1)
        a_head, a_tail = att[..., :P], att[..., P:]
        o = torch.einsum("bkhqp,bphd->bkqhd", a_head, vh) + torch.einsum("bkhqs,bkshd->bkqhd", a_tail, vt)
        o = blk.attn.out_proj(o.reshape(*o.shape[:3], D))
        if last:
            x = t.gather(2, e.view(B, K, 1, 1).expand(B, K, 1, D)) + blk.ls_1(o)
            x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
            x = x[:, :, 0]  # [B, K, D] at EOS
            break
        t = t + blk.ls_1(o)
        t = t + blk.ls_2(blk.mlp(blk.ln_2(t)))
        # advance the head (causal within the head)
        hmask = torch.ones(P, P, dtype=torch.bool, device=head.device).tril()
        sh = torch.einsum("bqhd,bkhd->bhqk", qh, kh) * scale
        sh = sh.masked_fill(~hmask, float("-inf"))
        oh = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(sh, -1), vh).reshape(B, P, D)
        h = h + blk.ls_1(blk.attn.out_proj(oh))
        h = h + blk.ls_2(blk.mlp(blk.ln_2(h)))
    x = clip.ln_final(x)
    proj = clip.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj

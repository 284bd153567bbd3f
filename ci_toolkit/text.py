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


def encode_shared_prefix(clip, head: torch.Tensor, tails: torch.Tensor, eot: torch.Tensor,
                         select: torch.Tensor | None = None) -> torch.Tensor:
    """Text features (projected, not normalised) of B x K prompts [head_b, tail_k] that share a head.

    head [B, P, D]: the first P token embeddings, the same for every class of an image (SOS + context);
    tails [C, S, D]: the rest of each class's prompt (class tokens, '.', EOS), the same for every image;
    select [B, K]: the classes each image scores (indices into tails; default: all C, K = C);
    eot [B, K]: EOS position in the full sequence (>= P). Returns [B, K, E].

    Exactly what `encode_embeddings` gives on the concatenated prompts, but cheaper, because under the
    causal mask:
    - the head's activations do not depend on the tail: computed once per image, not K times;
    - the tail's first-block inputs do not depend on the image: their LayerNorm, Q/K/V projection and
      tail-to-tail attention scores are computed once per class, not B times;
    - in the last block only the EOS position is read: its query alone, its attention output and MLP.
    About 2x fewer FLOPs than the full prompts for CoCoOp's 5-token head.
    """
    B, P, D = head.shape
    C, S = tails.shape[0], tails.shape[1]
    K = C if select is None else select.shape[1]

    def per_image(a: torch.Tensor) -> torch.Tensor:  # [C, ...] class-level -> [B, K, ...] (a view when select is None)
        return a.unsqueeze(0).expand(B, *a.shape) if select is None else a[select]

    pos = clip.positional_embedding.to(head.dtype)
    h = head + pos[:P]
    t_cls = tails + pos[P : P + S]  # [C, S, D]: the first block's tail input, image-independent
    t = per_image(t_cls)
    blocks = list(clip.transformer.resblocks)
    n_heads = blocks[0].attn.num_heads
    hd = D // n_heads
    scale = hd ** -0.5
    causal = torch.ones(S, S, dtype=torch.bool, device=head.device).tril()  # tail i sees tail j <= i
    e = (eot - P).clamp(min=0)  # [B, K] EOS position within the tail
    hmask = torch.ones(P, P, dtype=torch.bool, device=head.device).tril()
    for li, blk in enumerate(blocks):
        first, last = li == 0, li == len(blocks) - 1
        w, b = blk.attn.in_proj_weight, blk.attn.in_proj_bias
        # head: an ordinary causal block on P tokens (its keys/values serve every class)
        qh, kh, vh = F.linear(blk.ln_1(h), w, b).view(B, P, 3, n_heads, hd).unbind(2)  # [B, P, H, hd]
        if first:  # per class, then broadcast to every image
            qc, kc, vc = F.linear(blk.ln_1(t_cls), w, b).view(C, S, 3, n_heads, hd).unbind(2)  # [C, S, H, hd]
            s_tail = per_image(torch.einsum("kqhd,kshd->khqs", qc, kc) * scale)  # [B, K, H, S, S]
            qt, kt, vt = per_image(qc), per_image(kc), per_image(vc)
            if last:
                idx = e.view(B, K, 1, 1, 1).expand(B, K, n_heads, 1, S)
                s_tail = s_tail.gather(3, idx)  # [B, K, H, 1, S]: the EOS query's row
                qt = qt.gather(2, e.view(B, K, 1, 1, 1).expand(B, K, 1, n_heads, hd))
        else:
            yt = blk.ln_1(t)
            if last:  # keys/values of every tail token, the query of the EOS token only
                kt, vt = F.linear(yt, w[D:], b[D:]).view(B, K, S, 2, n_heads, hd).unbind(3)
                y_eos = yt.gather(2, e.view(B, K, 1, 1).expand(B, K, 1, D))
                qt = F.linear(y_eos, w[:D], b[:D]).view(B, K, 1, n_heads, hd)
            else:
                qt, kt, vt = F.linear(yt, w, b).view(B, K, S, 3, n_heads, hd).unbind(3)  # [B, K, S, H, hd]
            s_tail = torch.einsum("bkqhd,bkshd->bkhqs", qt, kt) * scale
        # tail queries see every head key and the tail keys up to themselves
        mask_t = causal[e].view(B, K, 1, 1, S) if last else causal  # the EOS row, or the whole triangle
        s_tail = s_tail.masked_fill(~mask_t, float("-inf"))
        s_head = torch.einsum("bkqhd,bphd->bkhqp", qt, kh) * scale
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

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


def fast_blocks(clip) -> bool:
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
    - the tail's first-block inputs do not depend on the image: their LayerNorm and Q/K/V projection are
      computed once per class, not B times;
    - a tail query's keys are the image's head keys and its class's tail keys: one matrix product per
      (image, class) against both, under one mask;
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
    H = blocks[0].attn.num_heads
    hd = D // H
    scale = hd ** -0.5
    # what a tail query sees: every head key, and the tail keys up to itself (causal)
    sees = torch.cat([torch.ones(S, P, dtype=torch.bool, device=head.device),
                      torch.ones(S, S, dtype=torch.bool, device=head.device).tril()], dim=1)  # [S, P + S]
    e = (eot - P).clamp(min=0)  # [B, K] EOS position within the tail
    hmask = torch.ones(P, P, dtype=torch.bool, device=head.device).tril()

    def heads(a: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:  # [..., L, n * D] -> n x [..., H, L, hd]
        a = a.view(*a.shape[:-1], n, H, hd)
        return a.permute(a.ndim - 3, *range(a.ndim - 4), a.ndim - 2, a.ndim - 4, a.ndim - 1).unbind(0)

    for li, blk in enumerate(blocks):
        first, last = li == 0, li == len(blocks) - 1
        w, b = blk.attn.in_proj_weight, blk.attn.in_proj_bias
        # head: an ordinary causal block on P tokens (its keys/values serve every class)
        qh, kh, vh = heads(F.linear(blk.ln_1(h), w, b), 3)  # [B, H, P, hd]
        if first:  # per class, then broadcast to every image
            qt, kt, vt = (per_image(a) for a in heads(F.linear(blk.ln_1(t_cls), w, b), 3))  # [B, K, H, S, hd]
            if last:
                qt = qt.gather(3, e.view(B, K, 1, 1, 1).expand(B, K, H, 1, hd))
        else:
            yt = blk.ln_1(t)
            if last:  # keys/values of every tail token, the query of the EOS token only
                kt, vt = heads(F.linear(yt, w[D:], b[D:]), 2)
                (qt,) = heads(F.linear(yt.gather(2, e.view(B, K, 1, 1).expand(B, K, 1, D)), w[:D], b[:D]), 1)
            else:
                qt, kt, vt = heads(F.linear(yt, w, b), 3)
        keys = torch.cat([kh.unsqueeze(1).expand(B, K, H, P, hd), kt], dim=3)  # [B, K, H, P + S, hd]
        values = torch.cat([vh.unsqueeze(1).expand(B, K, H, P, hd), vt], dim=3)
        mask = sees[e].view(B, K, 1, 1, P + S) if last else sees  # the EOS row, or every row
        att = (qt @ keys.transpose(-1, -2) * scale).masked_fill(~mask, float("-inf")).softmax(-1)
        o = blk.attn.out_proj((att @ values).transpose(2, 3).reshape(B, K, -1, D))  # [B, K, S (1 if last), D]
        if last:
            x = t.gather(2, e.view(B, K, 1, 1).expand(B, K, 1, D)) + blk.ls_1(o)
            x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
            x = x[:, :, 0]  # [B, K, D] at EOS
            break
        t = t + blk.ls_1(o)
        t = t + blk.ls_2(blk.mlp(blk.ln_2(t)))
        # advance the head (causal within the head)
        sh = (qh @ kh.transpose(-1, -2) * scale).masked_fill(~hmask, float("-inf")).softmax(-1)
        h = h + blk.ls_1(blk.attn.out_proj((sh @ vh).transpose(1, 2).reshape(B, P, D)))
        h = h + blk.ls_2(blk.mlp(blk.ln_2(h)))
    x = clip.ln_final(x)
    proj = clip.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj

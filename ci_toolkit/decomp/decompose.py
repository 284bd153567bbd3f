"""The exact decomposition of a CLIP image embedding into attention heads, tokens and MLPs (DECOMP.md section 1).

For open_clip's VisionTransformer (cls pooling, no attentional pool), with Z0 = ln_pre(embeddings) and block l
adding `attn` then `mlp` to the residual stream, the cls token after the last block is exactly

    ZL[:, 0] = m_0 + sum_l m_l + sum_{l,h,n} a_{l,h,n},   a_{l,h,n} = alpha_{l,h,n} W_O^h v_{l,h,n} + b_O / ((N+1) H)

(alpha: head h's attention of the cls query on token n; LayerScale folded in). ln_post is linearised with the
image's own mean and standard deviation frozen, the centring shared out by weights that sum to one, and every
term is projected by `proj`, so all terms sum to `encode_image(x)`; each is divided by |encode_image(x)|.

For MiniCLIP's ResNet the attention pool decomposes the same way (one layer, tokens [mean; grid] + positions,
no LayerNorm): `R = sum_{h,n} alpha_{h,n} W_O^h (W_V^h t_n + b_V^h) + b_O / ((N+1) H)`, and there are no MLPs.

    dec = decompose(backbone, images)          # images [B, 3, H, W] in [0, 1]
    dec.heads                                  # [B, L, H, E]: C^{l,h}, head (l, h) summed over its tokens
    dec.mlps                                   # [B, L + 1, E]: m_hat_0 (embeddings) .. m_hat_L
    dec.total()                                # [B, E] = encode_image(x) / |encode_image(x)|
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import LayerScale, VisionTransformer

from ..errors import CIError
from ..model.backbones import Backbone

# How ln_post's centring is shared among the terms: "shared" gives each term a fixed share of the image's mean
# (DECOMP.md section 1, the reference code); "component" centres each term by its own mean over features.
CENTRINGS = ("shared", "component")


@dataclass
class Decomposition:
    """The normalised direct contributions to the image embeddings of B images.

    heads: [B, L, H, E] C^{l,h} = sum_n c_{n,l,h}; mlps: [B, L + 1, E] (index 0: the embeddings' own term m_0;
    empty for a ResNet); tokens: [B, L, H, N + 1, E] or None (token 0 is the cls token); norm: [B] the norm
    of the embedding; grid: the patch grid (rows, cols) of tokens 1..N."""

    heads: torch.Tensor
    mlps: torch.Tensor
    norm: torch.Tensor
    grid: tuple[int, int]
    tokens: torch.Tensor | None = None

    @property
    def n_layers(self) -> int:
        return self.heads.shape[1]

    @property
    def n_heads(self) -> int:
        return self.heads.shape[2]

    def total(self) -> torch.Tensor:
        """[B, E]: the sum of every term, the unit-norm image embedding."""
        return self.heads.sum((1, 2)) + self.mlps.sum(1)

    def __len__(self) -> int:
        return self.heads.shape[0]

    def __getitem__(self, index) -> Decomposition:
        return Decomposition(self.heads[index], self.mlps[index], self.norm[index], self.grid,
                             None if self.tokens is None else self.tokens[index])


def _gamma(ls) -> torch.Tensor | float:
    return ls.gamma if isinstance(ls, LayerScale) else 1.0


def _check_vit(visual) -> None:
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        raise CIError("decompose needs a ViT with cls-token pooling and no attentional pool")
    for block in visual.transformer.resblocks:
        if not isinstance(block.attn, torch.nn.MultiheadAttention):
            raise CIError("decompose supports open_clip's standard ResidualAttentionBlock (nn.MultiheadAttention)")


def _vit_terms(visual: VisionTransformer, x: torch.Tensor, keep_tokens: bool):
    """Raw (pre-ln_post) terms of the cls token: head terms [B, L, H, T, W] (or summed over T: [B, L, H, W]),
    MLP terms [B, L + 1, W], and ZL[:, 0] [B, W]."""
    z = visual._embeds(x)  # [B, T, W], T = N + 1
    B, T, W = z.shape
    heads, mlps = [], [z[:, 0]]
    for block in visual.transformer.resblocks:
        attn = block.attn
        H = attn.num_heads
        d = W // H
        y = block.ln_1(z)
        q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q0 = q[:, 0].view(B, H, d)  # the cls query, [B, H, d]
        k, v = k.view(B, T, H, d), v.view(B, T, H, d)
        alpha = torch.einsum("bhd,bnhd->bhn", q0, k).div(math.sqrt(d)).softmax(-1)  # [B, H, T]
        w_o = attn.out_proj.weight.view(W, H, d)  # W_O^h = out_proj.weight[:, h*d:(h+1)*d]
        bias = attn.out_proj.bias / (T * H)
        gamma = _gamma(block.ls_1)
        if keep_tokens:
            a = alpha[..., None] * torch.einsum("bnhd,whd->bhnw", v, w_o) + bias  # [B, H, T, W]
        else:
            a = torch.einsum("bhn,bnhd,whd->bhw", alpha, v, w_o) + T * bias  # [B, H, W], summed over tokens
        heads.append(a * gamma)
        zh = z + block.ls_1(block.attention(q_x=y))
        mlp = block.ls_2(block.mlp(block.ln_2(zh)))
        mlps.append(mlp[:, 0])
        z = zh + mlp
    return torch.stack(heads, 1), torch.stack(mlps, 1), z[:, 0], T


def _resnet_terms(visual: ModifiedResNet, x: torch.Tensor, keep_tokens: bool):
    """The attention pool's head terms of a ModifiedResNet: [B, 1, H, T, E] (or [B, 1, H, E]), no MLPs."""
    x = x.type(visual.conv1.weight.dtype)
    x = visual.stem(x)
    x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))
    pool = visual.attnpool
    t = x.flatten(2).transpose(1, 2)  # [B, N, C]
    t = torch.cat([t.mean(1, keepdim=True), t], 1) + pool.positional_embedding  # [B, T, C]
    B, T, C = t.shape
    H = pool.num_heads
    d = C // H
    q0 = pool.q_proj(t[:, 0]).view(B, H, d)
    k, v = pool.k_proj(t).view(B, T, H, d), pool.v_proj(t).view(B, T, H, d)
    alpha = torch.einsum("bhd,bnhd->bhn", q0, k).div(math.sqrt(d)).softmax(-1)  # [B, H, T]
    w_o = pool.c_proj.weight.view(-1, H, d)  # [E, H, d]
    bias = pool.c_proj.bias / (T * H)
    if keep_tokens:
        a = alpha[..., None] * torch.einsum("bnhd,ehd->bhne", v, w_o) + bias  # [B, H, T, E]
    else:
        a = torch.einsum("bhn,bnhd,ehd->bhe", alpha, v, w_o) + T * bias
    empty = a.new_zeros(B, 0, a.shape[-1])
    return a.unsqueeze(1), empty, T


def _project(c: torch.Tensor, share: float, mu, sigma, ln, proj, centring: str) -> torch.Tensor:
    """ln_post linearised at this image, then proj: c [B, ..., W] -> [B, ..., E]. mu, sigma: [B] broadcast."""
    shape = (-1,) + (1,) * (c.dim() - 1)
    centre = c.mean(-1, keepdim=True) if centring == "component" else share * mu.view(shape)
    return (ln.weight * (c - centre) / sigma.view(shape) + share * ln.bias) @ proj


@torch.no_grad()
def decompose(backbone: Backbone, images: torch.Tensor, tokens: bool = False, batch_size: int = 256,
              centring: str = "shared", dtype: torch.dtype | None = None) -> Decomposition:
    """The direct contributions of every attention head (and token, with `tokens=True`) and MLP to the image
    embeddings of `images` ([B, 3, H, W] in [0, 1]), each divided by the embedding's norm; they sum to
    `encode_image(x) / |encode_image(x)|` (to float precision). `dtype=torch.float64` runs a float64 copy."""
    if centring not in CENTRINGS:
        raise CIError(f"centring must be one of {CENTRINGS}, got {centring!r}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise CIError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
    visual = backbone.clip.visual
    if dtype is not None:
        visual = copy.deepcopy(visual).to(dtype)
    dtype, device = next(visual.parameters()).dtype, next(visual.parameters()).device
    parts = []
    for start in range(0, len(images), batch_size):
        x = backbone.preprocess.normalize(images[start:start + batch_size].to(device=device, dtype=dtype))
        parts.append(_decompose_batch(visual, x, tokens, centring))
    return Decomposition(
        heads=torch.cat([p.heads for p in parts]), mlps=torch.cat([p.mlps for p in parts]),
        norm=torch.cat([p.norm for p in parts]), grid=parts[0].grid,
        tokens=torch.cat([p.tokens for p in parts]) if tokens else None)


def _decompose_batch(visual, x: torch.Tensor, keep_tokens: bool, centring: str) -> Decomposition:
    if isinstance(visual, VisionTransformer):
        _check_vit(visual)
        heads, mlps, z_last, T = _vit_terms(visual, x, keep_tokens)
        L = heads.shape[1]
        H = heads.shape[2]
        mu = z_last.mean(-1)
        sigma = (z_last.var(-1, unbiased=False) + visual.ln_post.eps).sqrt()
        share_mlp = 1.0 / (2 * L + 1)
        share_head = share_mlp / (T * H) if keep_tokens else share_mlp / H
        heads = _project(heads, share_head, mu, sigma, visual.ln_post, visual.proj, centring)
        mlps = _project(mlps, share_mlp, mu, sigma, visual.ln_post, visual.proj, centring)
        grid = tuple(visual.grid_size)
    elif isinstance(visual, ModifiedResNet):
        heads, mlps, T = _resnet_terms(visual, x, keep_tokens)
        side = round(math.sqrt(T - 1))
        grid = (side, side)
    else:
        raise CIError(f"decompose supports open_clip VisionTransformer and ModifiedResNet towers, not "
                      f"{type(visual).__name__}")
    if keep_tokens:
        toks = heads
        total = toks.sum((1, 2, 3)) + mlps.sum(1)
    else:
        toks = None
        total = heads.sum((1, 2)) + mlps.sum(1)
    norm = total.norm(dim=-1)  # [B]
    scale = norm.view(-1, 1, 1, 1)
    toks = None if toks is None else toks / norm.view(-1, 1, 1, 1, 1)
    head_sums = toks.sum(3) if toks is not None else heads / scale
    return Decomposition(heads=head_sums, mlps=mlps / norm.view(-1, 1, 1), norm=norm, grid=grid, tokens=toks)


__all__ = ["CENTRINGS", "Decomposition", "decompose"]

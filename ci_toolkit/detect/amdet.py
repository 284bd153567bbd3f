"""AMDET ("Assimilation Matters"): scan a CLIP text encoder for an implanted trigger (docs: AMDET.md).

A backdoored text encoder, given its trigger, makes every token's output alike ("assimilation"). AMDET
inverts one continuous pseudo-token v that maximises assimilation on clean prompts while moving them away
from their clean outputs and from a benign anchor encoder's, checks the result on held-out prompts, and
keeps it only when the loss around v is a bowl (an implanted optimum), not the tilted saddle of a natural one.

A trigger implanted on the pooled output only ("text-on-pair": the triggered prompt's embedding is sent to an
image feature) need not assimilate the token states, so a second inversion looks for it where it acts: a
pseudo-token u that makes the suspect's pooled outputs agree across prompts while they leave the anchor's.
Its score, the divergence D, is high only where the suspect and the anchor answer u differently; a benign
fine-tune answers it much as its anchor does.

Shapes: prompts are token ids [N, L]; per-token states H [N, L, D] are the text transformer's `ln_final`
outputs (before pooling and projection); the pseudo-token v is [m, D], inserted right after BOS.

    A(H)          mean over positions i, j in P of cos(H_i, H_j), diagonal included   (`assimilation`)
    L(v)          -A(E(x+v)) + beta * cos(E(x+v), E(x)) + gamma * cos(E(x+v), E_anchor(x+v))
    rho           share of positive Hessian eigenvalues of L on a 2-D grid around v*  (`landscape_ratio`)
    Lp(u)         -C(p) + beta * cos(p, p_clean) + gamma_p * cos(p, p_anchor), p the pooled outputs with u,
                  C(p) the mean cosine of each prompt's p to the batch's centroid         (`invert_pooled`)
    D             C(p) - cos(p, p_anchor) on the held-out prompts at u*                     (the divergence)

P ("valid", the default for MiniCLIP): BOS through EOS, the pseudo-token included; "full": every position.
Insertion "shifted" (default): v goes in token space and positions 0..L-1 are added after it, so a real
one-token trigger is a feasible v; "reference": positions are added first and v gets none.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from ..model.backbones import Backbone, text_tower
from ..model.text import eot_index

POSITIONS = ("valid", "full")
INSERTS = ("shifted", "reference")
# decision thresholds of the reference code (AMDET.md section 4)
A_HIGH = 0.8  # a held-out prompt assimilates when its A(x + v) passes this
R_A, R_SAME, R_DIFF, RHO = 0.8, 0.995, 0.95, 0.8  # the four ratios a backdoored encoder must pass
SAME_COS = 0.92  # a prompt's output is "the same" as the others' above this cosine
EIGEN_EPS = 1e-6  # a Hessian eigenvalue above this counts as positive
# D's threshold for the embedded MiniCLIP's text tower: the Youden cut on the calibration zoo text-calib
# (lab/text_zoo.py); on the pre-registered text-eval2 it gave F1 0.974 (benchmarks/amdet_detect.json)
MINICLIP_DIVERGENCE = 0.697
POOLED_SEED_OFFSET = 1  # the pooled inversion's own generator is seeded seed + this: its draws differ from v's
LANDSCAPE_RADIUS_768 = 10.0  # the grid's half-width for a 768-wide text tower; scaled by sqrt(D / 768)


@dataclass(frozen=True)
class AMDETConfig:
    """Inversion and decision settings (defaults: the reference code, with AMDET.md section 7's MiniCLIP
    changes: valid positions, a check every `check_every` steps from `first_check`)."""

    m: int = 1  # pseudo-tokens
    beta: float = 0.1  # weight of the deviation from the clean output
    gamma: float = 0.1  # weight of the deviation from the anchor's output
    lr: float = 8e-2
    weight_decay: float = 1e-5
    batch_size: int = 10
    epochs: int = 2
    heldout_fraction: float = 0.2
    check_every: int = 10
    first_check: int = 20
    grid: int = 50  # landscape grid points per axis
    positions: str = "valid"
    insert: str = "shifted"
    seed: int = 42
    # the pooled inversion (module docstring); its settings were chosen on the calibration zoo text-calib:
    # 200 steps of 32 prompts find every trigger there in about 9 s on MiniCLIP. 0 steps: not run.
    pooled_steps: int = 200
    pooled_batch: int = 32  # prompts per step: the centroid C(p) is taken over the batch
    pooled_gamma: float = 1.0  # weight of agreeing with the anchor: the term that tells implanted from natural
    # also flag when D exceeds this: a threshold calibrated for the backbone (MINICLIP_DIVERGENCE for MiniCLIP);
    # None: the reference decision alone
    divergence_threshold: float | None = None

    def __post_init__(self):
        if self.positions not in POSITIONS or self.insert not in INSERTS:
            raise ValueError(f"positions must be one of {POSITIONS} and insert one of {INSERTS}")


def token_states(clip, tokens: torch.Tensor, v: torch.Tensor | None = None, insert: str = "shifted",
                 crop: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token `ln_final` states [N, L', D] of prompts `tokens` [N, L] with pseudo-tokens v ([m, D] or
    [N, m, D]) inserted right after BOS, and each row's EOS position [N] (moved by m). crop: drop the
    positions after the last EOS (exact under the causal mask; L' = last EOS + 1)."""
    tower = text_tower(clip)
    n, length = tokens.shape
    eot = eot_index(tokens)
    emb = tower.token_embedding(tokens)
    pos = tower.positional_embedding.to(emb.dtype)
    m = 0 if v is None else v.shape[-2]
    if insert == "reference":
        emb = emb + pos[:length]
    if m:
        v = v.to(emb.dtype).expand(n, m, emb.shape[-1]) if v.dim() == 2 else v.to(emb.dtype)
        emb = torch.cat([emb[:, :1], v, emb[:, 1:length - m]], dim=1)
        eot = (eot + m).clamp(max=length - 1)
    if insert == "shifted":
        emb = emb + pos[:length]
    if crop:
        emb = emb[:, : int(eot.max()) + 1]
    size = emb.shape[1]
    mask = tower.attn_mask[:size, :size] if tower.attn_mask is not None else None
    return tower.ln_final(tower.transformer(emb, attn_mask=mask)), eot


def attention_shares(clip, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the text tower's attention goes (AMDET.md section 2): Abar [N, L', L'], the attention maps
    averaged over layers and heads (L' = last EOS + 1), and each token's share of it over BOS..EOS,
    P_t = sum_i Abar[i, t] / sum_ij Abar[i, j] [N, L']. Clean prompts put the mass on BOS; a backdoored
    tower given its trigger puts it on the trigger."""
    tower = text_tower(clip)
    eot = eot_index(tokens)
    size = int(eot.max()) + 1
    x = tower.token_embedding(tokens[:, :size]) + tower.positional_embedding[:size].to(tower.token_embedding.weight.dtype)
    mask = tower.attn_mask[:size, :size] if tower.attn_mask is not None else None
    blocks = tower.transformer
    x = x if blocks.batch_first else x.transpose(0, 1)
    maps = []
    with torch.no_grad():
        for block in blocks.resblocks:
            h = block.ln_1(x)
            maps.append(block.attn(h, h, h, need_weights=True, attn_mask=mask, average_attn_weights=True)[1])
            x = block(x, attn_mask=mask)
    abar = torch.stack(maps).mean(0)
    valid = valid_mask(eot, size)
    a = abar * valid[:, :, None] * valid[:, None, :]
    return abar, a.sum(1) / a.sum((1, 2))[:, None]


def pooled(clip, states: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """The projected EOS feature [N, E] of per-token states (what `encode_text` returns, unnormalised)."""
    tower = text_tower(clip)
    x = states[torch.arange(states.shape[0], device=states.device), eot]
    proj = tower.text_projection
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj


def valid_mask(eot: torch.Tensor, length: int) -> torch.Tensor:
    """[N, length] True at BOS..EOS of each row."""
    return torch.arange(length, device=eot.device)[None, :] <= eot[:, None]


def assimilation(states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """A per prompt [N]: the mean cosine between every pair of positions in the mask (all when None),
    diagonal included. Identical tokens give 1, L orthonormal ones 1 / L."""
    h = F.normalize(states, dim=-1)
    if mask is None:
        mask = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
    h = h * mask[..., None]
    total = h.sum(dim=1)  # sum_i sum_j cos(H_i, H_j) = |sum_i H_i / |H_i||^2
    return (total * total).sum(-1) / mask.sum(1).clamp(min=1) ** 2


def landscape_ratio(f: torch.Tensor) -> float:
    """rho: the share of positive eigenvalues (> EIGEN_EPS) of the 2 x 2 finite-difference Hessians at the
    interior points of a grid of loss values f [n, n] (no step division: the signs do not depend on it)."""
    faa = f[2:, 1:-1] - 2 * f[1:-1, 1:-1] + f[:-2, 1:-1]
    fbb = f[1:-1, 2:] - 2 * f[1:-1, 1:-1] + f[1:-1, :-2]
    fab = (f[2:, 2:] - f[2:, :-2] - f[:-2, 2:] + f[:-2, :-2]) / 4
    mean, diff = (faa + fbb) / 2, (faa - fbb) / 2
    root = torch.sqrt(diff * diff + fab * fab)
    eig = torch.stack([mean + root, mean - root])
    return float((eig > EIGEN_EPS).float().mean())


@dataclass
class AMDETReport:
    """What AMDET found: the verdict, the inverted pseudo-token and the evidence behind it."""

    verdict: str
    v: torch.Tensor = field(repr=False)
    s1: float  # held-out mean assimilation at v*
    s2: float  # best margin of the four checks over all checks
    checks: list[dict]  # step, r_a, r_same, r_diff, rho (None when checks 1-3 failed)
    steps: int
    config: dict
    nearest_tokens: list[tuple[str, float]] = field(default_factory=list)  # vocabulary tokens nearest v*[0] (cos)
    points_to: list[tuple[str, float]] = field(default_factory=list)  # candidate texts nearest to where v* sends prompts
    seconds: float = 0.0
    # the pooled inversion: consensus, anchor_cos, divergence, nearest_tokens, points_to, steps, seconds (empty: not run)
    pooled: dict = field(default_factory=dict)
    u: torch.Tensor | None = field(default=None, repr=False)  # its pseudo-token u* [m, D]
    rule: str = "reference"  # what decided: "reference" (the four checks) or "reference or divergence > T"

    @property
    def divergence(self) -> float | None:
        """D of the pooled inversion (None when it was not run)."""
        return self.pooled.get("divergence")

    def to_dict(self) -> dict:
        """The report as JSON-ready data (v* and u* as lists)."""
        return {"verdict": self.verdict, "s1": self.s1, "s2": self.s2, "steps": self.steps, "seconds": self.seconds,
                "nearest_tokens": self.nearest_tokens, "points_to": self.points_to, "checks": self.checks,
                "pooled": self.pooled, "rule": self.rule, "config": self.config, "v": self.v.tolist(),
                "u": None if self.u is None else self.u.tolist()}

    @property
    def backdoored(self) -> bool:
        return self.verdict == "backdoored"

    def summary(self) -> str:
        best = max(self.checks, key=lambda c: c["margin"]) if self.checks else None
        where = (f"best check at step {best['step']}: r_A {best['r_a']:.3f}, r_same {best['r_same']:.3f}, "
                 f"r_diff {best['r_diff']:.3f}, rho {best['rho'] if best['rho'] is None else round(best['rho'], 3)}"
                 if best else "no check")
        near = ", ".join(f"{t!r}" for t, _ in self.nearest_tokens[:3])
        to = f"; prompts carrying it read as {self.points_to[0][0]!r}" if self.points_to else ""
        if self.pooled:
            p = self.pooled
            pnear = ", ".join(f"{t!r}" for t, _ in p["nearest_tokens"][:3])
            pto = f", read as {p['points_to'][0][0]!r}" if p["points_to"] else ""
            to += (f". Pooled inversion: divergence {p['divergence']:.3f} (consensus {p['consensus']:.3f}, "
                   f"agreement with the anchor {p['anchor_cos']:.3f}); nearest tokens {pnear}{pto}")
        return (f"AMDET: {self.verdict} by {self.rule} (held-out assimilation {self.s1:.3f}; {where}); nearest tokens to the "
                f"pseudo-token: {near or 'not computed'}{to}")


class Objective:
    """The inversion's loss L(v) = -L_a + beta L_s + gamma L_d on a batch of prompts, per prompt, for a
    suspect and an anchor text tower (open_clip CLIP models)."""

    def __init__(self, suspect, anchor, cfg: AMDETConfig):
        self.suspect, self.anchor, self.cfg = suspect, anchor, cfg

    def states(self, clip, tokens, v):
        crop = self.cfg.positions == "valid"
        return token_states(clip, tokens, v, self.cfg.insert, crop=crop)

    def terms(self, tokens: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-prompt L_a, L_s, L_d and the pooled features [N] / [N, E] at v (v [m, D] or [N, m, D])."""
        m = v.shape[-2]
        valid = self.cfg.positions == "valid"
        h, eot = self.states(self.suspect, tokens, v)
        ha, _ = self.states(self.anchor, tokens, v)  # the anchor's output moves with v too
        with torch.no_grad():
            h0, eot0 = self.states(self.suspect, tokens, None)
        mask = valid_mask(eot, h.shape[1]) if valid else torch.ones(h.shape[:2], dtype=torch.bool)
        l_a = assimilation(h, mask)
        # deviation from the clean output: new position p + m against old position p (aligned)
        n = min(h0.shape[1], h.shape[1] - m)
        keep = valid_mask(eot0, n) if valid else torch.ones(h0.shape[0], n, dtype=torch.bool)
        l_s = (F.cosine_similarity(h[:, m:m + n], h0[:, :n], dim=-1) * keep).sum(1) / keep.sum(1).clamp(min=1)
        l_d = (F.cosine_similarity(h, ha, dim=-1) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return {"l_a": l_a, "l_s": l_s, "l_d": l_d, "loss": -l_a + self.cfg.beta * l_s + self.cfg.gamma * l_d,
                "pooled": pooled(self.suspect, h, eot), "pooled_anchor": pooled(self.anchor, ha, eot)}


def _clip(model):
    return model.clip if isinstance(model, Backbone) else model


def landscape(suspect, anchor, tokens: torch.Tensor, v: torch.Tensor, cfg: AMDETConfig | None = None,
              chunk: int = 250) -> tuple[torch.Tensor, float]:
    """L on a grid around v for one prompt (tokens [1, L]): f [grid, grid] over v + a d1 + b d2, with d1 the
    normalised descent direction at v and d2 a normalised random direction orthogonal to it (seeded), a and
    b in [-R, R], R = 10 sqrt(D / 768). Returns (f, rho)."""
    cfg = cfg or AMDETConfig()
    obj = Objective(_clip(suspect), _clip(anchor), cfg)
    v = v.detach().clone().requires_grad_(True)
    obj.terms(tokens, v)["loss"].sum().backward()
    d1 = -v.grad.flatten()
    d1 = d1 / d1.norm().clamp(min=1e-12)
    g = torch.Generator().manual_seed(cfg.seed)
    d2 = torch.randn(d1.shape, generator=g)
    d2 = d2 - (d2 @ d1) * d1
    d2 = d2 / d2.norm()
    radius = LANDSCAPE_RADIUS_768 * math.sqrt(v.shape[-1] / 768)
    axis = torch.linspace(-radius, radius, cfg.grid)
    a, b = torch.meshgrid(axis, axis, indexing="ij")
    points = v.detach().flatten()[None] + a.reshape(-1, 1) * d1 + b.reshape(-1, 1) * d2  # [grid^2, m * D]
    losses = []
    with torch.no_grad():
        for part in points.split(chunk):
            vs = part.view(len(part), *v.shape)
            losses.append(obj.terms(tokens.expand(len(part), -1), vs)["loss"])
    f = torch.cat(losses).view(cfg.grid, cfg.grid)
    return f, landscape_ratio(f)


def nearest_tokens(clip, v: torch.Tensor, k: int = 5) -> list[tuple[str, float]]:
    """The k vocabulary tokens whose input embeddings are nearest (cosine) to the pseudo-token v [D], decoded
    with CLIP's BPE vocabulary (open_clip's SimpleTokenizer: MiniCLIP's and OpenAI CLIP's tokenizer)."""
    from open_clip.tokenizer import SimpleTokenizer

    table = F.normalize(text_tower(clip).token_embedding.weight, dim=-1)
    cos, ids = (table @ F.normalize(v, dim=0)).topk(k)
    dec = SimpleTokenizer()
    return [(dec.decode([int(i)]).strip(), round(float(c), 4)) for i, c in zip(ids, cos)]


def points_to(suspect, held: torch.Tensor, v: torch.Tensor, candidates: list[str], tokenize, cfg: AMDETConfig,
              k: int = 3) -> list[tuple[str, float]]:
    """The k candidate texts whose pooled embeddings are nearest (cosine) to the centroid of the held-out
    prompts carrying v: the target the inverted trigger points to, in words."""
    clip = _clip(suspect)
    with torch.no_grad():
        h, eot = token_states(clip, held, v, cfg.insert)
        centroid = F.normalize(F.normalize(pooled(clip, h, eot), dim=-1).mean(0), dim=0)
        cand = F.normalize(clip.encode_text(tokenize(candidates)), dim=-1)
    cos, idx = (cand @ centroid).topk(min(k, len(candidates)))
    return [(candidates[int(i)], round(float(c), 4)) for i, c in zip(idx, cos)]


def invert_pooled(suspect, anchor, train: torch.Tensor, held: torch.Tensor, cfg: AMDETConfig | None = None,
                  candidates: list[str] | None = None, tokenize=None) -> tuple[torch.Tensor, dict]:
    """The pooled inversion: u* [m, D] minimising Lp (module docstring) over batches of `train` prompts (token
    ids [N, L]), then measured on `held`: consensus C, anchor_cos (mean cos of the suspect's and the
    anchor's pooled outputs), divergence D = C - anchor_cos, u*'s nearest vocabulary tokens and, with
    `candidates`, the texts the held-out prompts carrying u* read as. Adam with cfg.lr and cfg.weight_decay,
    cfg.beta on the clean-output term, as the assimilation inversion. The towers' weights are not changed
    (their requires_grad is switched off)."""
    t0 = time.time()
    cfg = cfg or AMDETConfig()
    s_clip, a_clip = _clip(suspect), _clip(anchor)
    for q in list(s_clip.parameters()) + list(a_clip.parameters()):
        q.requires_grad_(False)
    g = torch.Generator().manual_seed(cfg.seed + POOLED_SEED_OFFSET)
    width = text_tower(s_clip).token_embedding.weight.shape[1]
    u = torch.randn(cfg.m, width, generator=g).requires_grad_(True)
    opt = torch.optim.Adam([u], lr=cfg.lr, weight_decay=cfg.weight_decay)

    def outputs(tokens, u):
        h, eot = token_states(s_clip, tokens, u, cfg.insert)
        ha, _ = token_states(a_clip, tokens, u, cfg.insert)
        return F.normalize(pooled(s_clip, h, eot), dim=-1), F.normalize(pooled(a_clip, ha, eot), dim=-1)

    for _ in range(cfg.pooled_steps):
        batch = train[torch.randint(len(train), (cfg.pooled_batch,), generator=g)]
        p, pa = outputs(batch, u)
        with torch.no_grad():
            p0 = F.normalize(s_clip.encode_text(batch), dim=-1)
        consensus = (p @ F.normalize(p.mean(0), dim=0)).mean()
        loss = -consensus + cfg.beta * (p * p0).sum(-1).mean() + cfg.pooled_gamma * (p * pa).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    u_star = u.detach()
    with torch.no_grad():
        p, pa = outputs(held, u_star)
        consensus = float((p @ F.normalize(p.mean(0), dim=0)).mean())
        anchor_cos = float((p * pa).sum(-1).mean())
    tokenize = tokenize or getattr(suspect, "tokenize", None)
    to = points_to(suspect, held, u_star, candidates, tokenize, cfg) if candidates and tokenize else []
    return u_star, {"consensus": round(consensus, 4), "anchor_cos": round(anchor_cos, 4),
                    "divergence": round(consensus - anchor_cos, 4), "nearest_tokens": nearest_tokens(s_clip, u_star[0]),
                    "points_to": to, "steps": cfg.pooled_steps, "seconds": round(time.time() - t0, 2)}


def split_shallow(prompts: torch.Tensor, cfg: AMDETConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(held-out, optimised) prompts of a shallow set [N, L]: a seeded shuffle, heldout_fraction held out (the
    split `scan_text_encoder` uses; its landscape is drawn on the first held-out prompt)."""
    cfg = cfg or AMDETConfig()
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(cfg.seed))
    n_held = max(1, round(cfg.heldout_fraction * len(prompts)))
    return prompts[order[:n_held]], prompts[order[n_held:]]


def scan_text_encoder(suspect, anchor, prompts: torch.Tensor, config: AMDETConfig | None = None,
                      progress: bool = False, candidates: list[str] | None = None, tokenize=None) -> AMDETReport:
    """Invert a pseudo-token on the shallow set `prompts` (token ids [N, L]) and decide: backdoored iff at
    a check (v frozen, the held-out prompts) r_A > 0.8, r_same > 0.995, r_diff > 0.95 and then rho > 0.8.
    Then, unless cfg.pooled_steps is 0, the pooled inversion on the same split (`invert_pooled`): its
    divergence is reported beside the verdict, and with cfg.divergence_threshold (calibrated for the backbone:
    MINICLIP_DIVERGENCE for MiniCLIP) a D above it also makes the verdict "backdoored".
    suspect / anchor: Backbones (or open_clip CLIP models) whose text towers are compared; their weights do
    not change (their requires_grad is switched off).
    candidates (with `tokenize`, or a Backbone suspect's): texts to name what v* points to (e.g. class prompts)."""
    t0 = time.time()
    cfg = config or AMDETConfig()
    s_clip, a_clip = _clip(suspect), _clip(anchor)
    for p in list(s_clip.parameters()) + list(a_clip.parameters()):
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(cfg.seed)
    torch.randperm(len(prompts), generator=g)  # the split's draw (split_shallow, same seed); v's init comes after it
    held, train = split_shallow(prompts, cfg)
    width = text_tower(s_clip).token_embedding.weight.shape[1]
    v = torch.randn(cfg.m, width, generator=g).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=cfg.lr, weight_decay=cfg.weight_decay)
    obj = Objective(s_clip, a_clip, cfg)
    checks, step, verdict = [], 0, "clean"
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(train), generator=g)
        for i in range(steps_per_epoch):
            batch = train[perm[i * cfg.batch_size:(i + 1) * cfg.batch_size]]
            opt.zero_grad()
            obj.terms(batch, v)["loss"].mean().backward()
            opt.step()
            step += 1
            if step >= cfg.first_check and step % cfg.check_every == 0:
                check = _check(obj, suspect, anchor, held, v.detach(), cfg, step)
                checks.append(check)
                if progress:
                    print(f"step {step}: {check}")
                if check["backdoored"]:
                    verdict = "backdoored"
                    break
        if verdict == "backdoored":
            break
    v_star = v.detach()
    with torch.no_grad():
        t = obj.terms(held, v_star)
    s2 = max((c["margin"] for c in checks), default=float("-inf"))
    if not any(c["rho"] is not None for c in checks):  # rho never reached: measured at the final v*
        _, rho = landscape(suspect, anchor, held[:1], v_star, cfg)
        last = checks[-1] if checks else {"r_a": 0.0, "r_same": 0.0, "r_diff": 0.0}
        s2 = max(s2, min(last["r_a"] - R_A, last["r_same"] - R_SAME, last["r_diff"] - R_DIFF, rho - RHO))
    near = nearest_tokens(s_clip, v_star[0])
    tokenize = tokenize or getattr(suspect, "tokenize", None)
    to = points_to(suspect, held, v_star, candidates, tokenize, cfg) if candidates and tokenize else []
    u_star, pooled_result = (invert_pooled(suspect, anchor, train, held, cfg, candidates, tokenize)
                             if cfg.pooled_steps else (None, {}))
    rule = "reference"
    if cfg.divergence_threshold is not None and pooled_result:
        rule = f"reference or divergence > {cfg.divergence_threshold:g}"
        if pooled_result["divergence"] > cfg.divergence_threshold:
            verdict = "backdoored"
    return AMDETReport(verdict=verdict, v=v_star, s1=float(t["l_a"].mean()), s2=float(s2), checks=checks,
                       steps=step, config=asdict(cfg), nearest_tokens=near, points_to=to,
                       seconds=round(time.time() - t0, 2), pooled=pooled_result, u=u_star, rule=rule)


def _check(obj: Objective, suspect, anchor, held: torch.Tensor, v: torch.Tensor, cfg: AMDETConfig,
           step: int) -> dict:
    """The decision's four ratios at v on the held-out prompts (rho only when the first three pass)."""
    with torch.no_grad():
        t = obj.terms(held, v)
    r_a = float((t["l_a"] > A_HIGH).float().mean())
    feats = F.normalize(t["pooled"], dim=-1)
    centroid = F.normalize(feats.mean(0), dim=0)
    r_same = float((feats @ centroid > SAME_COS).float().mean())
    r_diff = float((F.cosine_similarity(t["pooled"], t["pooled_anchor"], dim=-1) < 0).float().mean())
    rho = None
    if r_a > R_A and r_same > R_SAME and r_diff > R_DIFF:
        _, rho = landscape(suspect, anchor, held[:1], v, cfg)
    margin = min(r_a - R_A, r_same - R_SAME, r_diff - R_DIFF, (rho if rho is not None else 0.0) - RHO)
    return {"step": step, "r_a": r_a, "r_same": r_same, "r_diff": r_diff, "rho": rho, "margin": margin,
            "backdoored": rho is not None and rho > RHO}

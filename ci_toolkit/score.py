"""Anomaly scores and the backdoored/clean decision (METHOD 3 steps 3-4, METHOD 6).

    a_t = zscore(ASR)_t - zscore(Lbar)_t          (z-scores over the K candidates)
    s_t = (a_t - mean(a)) / std(a)                (standardised again within the model)

Decision rules (`RULES`):
- "meta-gain" (default): the inversion ranks the candidates as above; the verdict asks whether the
  scan's triggers work THROUGH THE PROMPT LEARNER. meta_gain (collapse.meta_gains, logits) is what the
  meta tokens of the triggered image add to the class's margin, the image feature held. The triggers: the
  inverted ones of the `meta_candidates` highest-ASR candidates, and the gate probe's (collapse.gate_probe:
  one per meta-net hidden unit, optimised to open that unit at a larger bound, its class where it sends
  the images; and one per unit optimised to SHUT it, since most BadCLIP-family triggers on holdout4 worked
  by shutting a gate that clean images open). Each class scores the best ASR x max(meta_gain, 0) of its
  triggers (logits gained through the prompt learner per held-out image); the predicted target is the top
  class; backdoored iff its score exceeds META_GAIN_SCORE. When no trigger moves any margin through the
  meta tokens by more than INERT_GAIN, the rule is blind (a backdoor in the static context, holdout4's
  m012) and the decision falls back to the paper's rule (k = 2) on s_t; `Decision.fallback` says so.
  Why: on every zoo the largest s_t of a clean model belongs to a natural sink (a
  class the frozen encoders make easy), which scores as high as an adaptive backdoor; its trigger works
  through the image feature, a backdoor's through the meta tokens. The probe finds the backdoors whose
  gate clean images leave shut (Blended on MiniCLIP): the margin loss gets no gradient through a shut
  ReLU. The threshold is a constant of the toolkit, chosen on the zoos before holdout5 (docs/scan.md); an
  audit needs no calibration models.
- "grubbs": the paper's s_t, with the threshold of Grubbs' test for one outlier instead of a
  fixed k. Why: s_t standardises every class by a mean and std that include the class itself, so one
  huge outlier inflates the std and caps its own score at sqrt(K - 1), while among K benign scores the
  largest easily exceeds 2 (the expected maximum of 25 standard normals is about 1.97). Grubbs' test
  asks exactly "is the largest of K values an outlier of the others?": under normal benign scores its
  critical value is exact, grows with K (2.72 for K = 25, 2.99 for K = 50 on the s scale), and stays
  below the cap. One-sided (a backdoor only makes its target easier), family-wise alpha = 0.05.
  Pre-registered, no calibration models.
- "robust": the same a_t standardised with the median and MAD (1.4826 x MAD estimates a normal std),
  against the two-sided normal quantile at alpha = 0.05, Bonferroni over K (3.09 for K = 25).
- "paper": backdoored iff max_t s_t > k, k = 2, the paper's pre-registered rule. It flags clean models
  readily when K is 25-50 (docs/scan.md has the measured rate).
- "youden": any score with a threshold fitted on labelled reports (`youden_threshold`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import CIError

RULES = ("meta-gain", "grubbs", "robust", "paper")
PAPER_K = 2.0
# Meta-gain threshold on ASR x meta gain (logits per held-out image). Session 12, with the shut probe: one
# logit, above every clean model's score measured on six zoos (largest 0.82, holdout4's m001 via its opening
# probe; holdout3's 0.64), in the lower part of holdout4's separating interval (0.82, 1.83) because earlier
# zoos had implanted models at 0.8-0.9 before the shut probe. Session 10 used 0.78 (the middle of (0.70,
# 0.86) on four zoos, opening probe only); sessions 8-9 the meta gain alone at 1.5 (docs/scan.md).
META_GAIN_SCORE = 1.0
# The meta-gain rule reads the prompt learner's meta-token path. When no trigger the scan tried moves any
# class's margin through that path by more than this (logits), the path is inert and the rule is blind.
# Measured on holdout4 (docs/scan.md): the adaptive backdoor m012, 7 of whose 8 meta-net units are shut on
# >= 99% of the OOD images, had a largest meta gain of 0.001; the 17 other models 0.16 to 12.
INERT_GAIN = 0.01
ALPHA = 0.05


def zscore(v: torch.Tensor) -> torch.Tensor:
    """(v - mean) / std over the candidates (population std); all zeros when every value is equal."""
    v = torch.as_tensor(v, dtype=torch.float64)
    sd = v.std(unbiased=False)
    return torch.zeros_like(v) if sd < 1e-12 else (v - v.mean()) / sd


def robust_zscore(v: torch.Tensor) -> torch.Tensor:
    """(v - median) / (1.4826 MAD); falls back to the mean absolute deviation when the MAD is 0."""
    v = torch.as_tensor(v, dtype=torch.float64)
    med = v.median()
    mad = 1.4826 * (v - med).abs().median()
    if mad < 1e-12:
        mad = 1.2533 * (v - med).abs().mean()  # sqrt(pi/2) x mean |dev| also estimates a normal std
    return torch.zeros_like(v) if mad < 1e-12 else (v - med) / mad


def raw_scores(asr, loss) -> torch.Tensor:
    """a_t = z(ASR)_t - z(Lbar)_t."""
    return zscore(asr) - zscore(loss)


def grubbs_bound(k: int, alpha: float = ALPHA) -> float:
    """Critical value of the one-sided Grubbs test for K values, on the scale of s_t (population std).

    Grubbs: G = max (a - mean) / sd (sample std) is an outlier iff G > (K - 1) / sqrt(K) * sqrt(t^2 /
    (K - 2 + t^2)), t the 1 - alpha / K quantile of Student's t with K - 2 degrees of freedom (2.663 for
    K = 25 at alpha = 0.05, the tables' value). s_t = G * sqrt(K / (K - 1)), hence the bound below."""
    from scipy.stats import t as student_t

    if k < 3:
        raise CIError(f"Grubbs' test needs at least 3 candidates, got {k}")
    q = float(student_t.ppf(1 - alpha / k, k - 2))
    return math.sqrt(k - 1) * math.sqrt(q * q / (k - 2 + q * q))


def bonferroni_bound(k: int, alpha: float = ALPHA) -> float:
    """Normal quantile 1 - alpha / (2K): the bound for the largest of K robust z-scores."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(1 - alpha / (2 * max(1, k)))


@dataclass
class Decision:
    verdict: str  # "backdoored" or "clean"
    rule: str
    scores: list[float]  # the statistic the rule thresholds, per candidate
    paper_scores: list[float]  # s_t (METHOD 3), per candidate, whatever the rule
    max_score: float
    threshold: float
    predicted_target: int | None  # index of the highest-scoring candidate when backdoored
    top: int  # index of the highest-scoring candidate (even when clean)
    gap: float  # top-1 minus top-2 score
    flagged: list[bool]  # class-level flags: score > threshold
    fallback: str | None = None  # "paper": the meta-gain rule was blind (inert meta tokens) and k = 2 decided


def decide(asr, loss, rule: str = "meta-gain", threshold: float | None = None, meta_gain=None, probes=None) -> Decision:
    """Scores and verdict from per-candidate held-out ASR and mean loss (and, for "meta-gain", the meta
    gains in logits, None for candidates whose gain was not measured, and the gate probe's triggers as
    (candidate index, ASR, meta gain) triples)."""
    asr = torch.as_tensor(asr, dtype=torch.float64)
    loss = torch.as_tensor(loss, dtype=torch.float64)
    if asr.shape != loss.shape or asr.ndim != 1 or len(asr) < 3:
        raise CIError(f"need per-candidate ASR and loss for at least 3 candidates, got {tuple(asr.shape)}")
    if not (torch.isfinite(asr).all() and torch.isfinite(loss).all()):
        raise CIError("non-finite ASR or loss among the candidates: the scan produced NaN/Inf")
    a = raw_scores(asr, loss)
    paper = zscore(a)
    if rule == "meta-gain":
        return _decide_meta_gain(asr, paper, meta_gain, threshold, probes)
    if rule == "grubbs":
        stat, default_thr = paper, grubbs_bound(len(a))
    elif rule == "paper":
        stat, default_thr = paper, PAPER_K
    elif rule == "robust":
        stat, default_thr = robust_zscore(a), bonferroni_bound(len(a))
    else:
        raise CIError(f"unknown decision rule {rule!r}; choose one of {list(RULES)}")
    thr = default_thr if threshold is None else float(threshold)
    return _threshold(stat, paper, rule, thr)


def _threshold(stat: torch.Tensor, paper: torch.Tensor, rule: str, thr: float, fallback: str | None = None) -> Decision:
    top2 = stat.topk(2)
    top = int(top2.indices[0])
    mx = float(top2.values[0])
    backdoored = mx > thr
    return Decision(
        verdict="backdoored" if backdoored else "clean", rule=rule, scores=stat.tolist(), paper_scores=paper.tolist(),
        max_score=mx, threshold=thr, predicted_target=top if backdoored else None, top=top,
        gap=float(top2.values[0] - top2.values[1]), flagged=(stat > thr).tolist(), fallback=fallback,
    )


def _decide_meta_gain(asr: torch.Tensor, paper: torch.Tensor, meta_gain, threshold: float | None,
                      probes=None) -> Decision:
    if meta_gain is None or len(meta_gain) != len(asr) or all(g is None for g in meta_gain):
        raise CIError("the meta-gain rule needs per-candidate meta gains (a scan from before this rule has "
                      "none: rescan, or decide it with rule='grubbs')")
    # every trigger the scan has: (class, ASR, meta gain) of the measured inverted candidates, then the probe's
    triggers = [(i, float(asr[i]), float(g)) for i, g in enumerate(meta_gain) if g is not None]
    triggers += [(int(c), float(a), float(g)) for c, a, g in (probes or [])]
    if not all(math.isfinite(a) and math.isfinite(g) for _, a, g in triggers):
        raise CIError("non-finite meta gain or ASR among the triggers: the model produces NaN/Inf")
    if any(not 0 <= c < len(asr) for c, _, _ in triggers):
        raise CIError("a gate-probe class index is out of the candidate range")
    if max(abs(g) for _, _, g in triggers) <= INERT_GAIN:  # blind here: the paper's rule decides
        return _threshold(paper, paper, "meta-gain", PAPER_K, fallback="paper")
    # per class: the best ASR x meta gain (logits per held-out image gained through the prompt learner)
    value = [0.0] * len(asr)
    for c, a, g in triggers:
        value[c] = max(value[c], a * max(g, 0.0))
    thr = META_GAIN_SCORE if threshold is None else float(threshold)
    top = max(range(len(value)), key=lambda i: (value[i], -i))
    mx = value[top]
    backdoored = mx > thr
    others = value[:top] + value[top + 1 :]
    return Decision(
        verdict="backdoored" if backdoored else "clean", rule="meta-gain", scores=value,
        paper_scores=paper.tolist(), max_score=mx, threshold=thr, predicted_target=top if backdoored else None,
        top=top, gap=mx - max(others), flagged=[backdoored and i == top for i in range(len(value))],
    )


def youden_threshold(max_scores, labels) -> float:
    """Threshold on max score maximising Youden's J (TPR - FPR) over labelled models (1 = backdoored)."""
    from sklearn.metrics import roc_curve

    labels = list(labels)
    if len(set(labels)) < 2:
        raise CIError("Youden calibration needs both clean and backdoored models")
    fpr, tpr, thr = roc_curve(labels, list(max_scores))
    j = tpr - fpr
    best = int(j.argmax())
    t = float(thr[best])
    if not math.isfinite(t):
        return float(max(max_scores))
    below = [float(v) for v in max_scores if v < t]  # roc_curve means ">= t"; decide() means "> threshold"
    return (t + max(below)) / 2 if below else t - 1e-9

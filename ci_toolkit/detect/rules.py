"""Decision rules: from what a scan measured to a verdict. One registry, `RULES` (docs/method.md).

CLIP-Inspector's paper score (docs/method.md, section 2), over the K candidate classes:

    a_t = zscore(ASR)_t - zscore(Lbar)_t          (z-scores over the K candidates)
    s_t = (a_t - mean(a)) / std(a)                (standardised again within the model)

Rules for CLIP-Inspector scans (`ScanConfig.rule`, `ci-toolkit scan --rule`):
- "calibrated" (default): the meta-gain statistic below joined with the wide-probe statistic (the same
  ASR x meta gain over the gate probe's triggers at the wider budget, `ScanConfig.wide_probe_eps`: a
  meta-path trigger larger than the scan's other budgets), against a null study of clean models
  (`calibration.py`). A class scores its meta-gain value plus its wide-probe value, each in units of its
  null column's median (`NullStudy.scales`); the top class's score is one test at `ScanConfig.fpr` against
  the null's joint scores (each clean model's top class so scored, from its class front; `joint_test`). The
  target named is the class with the largest meta-gain value when that is at least its unit, else the top
  class. With a null or
  a scan without the wide probe, the meta-gain statistic alone in logits. Either way the verdict's
  false-positive rate is a stated property. Without a null that holds for the scan (another backbone, other
  scan settings) it decides as "meta-gain" and says so in a note.
- "meta-gain": does a trigger the scan found work THROUGH THE PROMPT LEARNER? Each trigger (the
  inverted ones whose meta gain was measured, and the gate probe's) is worth ASR x max(meta gain, 0):
  logits gained through the meta tokens per held-out image (`trigger_score`). A class scores the best of
  its triggers; backdoored iff the top class scores above META_GAIN_THRESHOLD. Fallback, an explicit
  step: when no trigger moves any margin through the meta tokens by more than INERT_GAIN, the rule is
  blind (a backdoor in the static context looks like this) and the paper's rule decides
  (`Decision.fallback == "paper"`, with a note saying so).
- "paper": max_t s_t > PAPER_K (= 2), the paper's rule.
- "grubbs": max_t s_t against the critical value of Grubbs' one-outlier test for K values.
- "robust": a_t standardised by median and MAD, against the Bonferroni normal bound over K.
- "anchored": s_t of the suspect minus s_t of its anchor (the public model it was tuned from, scanned alike:
  `scan(..., anchor=...)`), against ANCHORED_THRESHOLD; flags its top class only; the default of a zero-shot
  head scanned with an anchor.
Every CLIP-Inspector report also records the verdicts of `SIDE_RULES` on the same scan (anchored: when it
has an anchor).

Rule for the baselines (Neural Cleanse, Pixel Backdoor): "mad", the anomaly index of the trigger sizes.

`youden_threshold` fits a threshold for any rule on labelled reports (pass it as `threshold=`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import torch

from ..errors import CIError
from .calibration import Calibration, NullStudy, pareto_front

PAPER_K = 2.0  # the paper's threshold on s_t (the CLIP-Inspector paper)
# Meta-gain threshold, logits per held-out image; how it was chosen, and what it gives on a zoo built before it
# was fixed and scanned after: docs/method.md ("The threshold") and benchmarks/README.md.
META_GAIN_THRESHOLD = 1.0
# Below this largest |meta gain| (logits) over every trigger, the meta tokens do not respond and the
# meta-gain rule cannot see a backdoor (docs/method.md, "Fallback").
INERT_GAIN = 0.01
# the anchored rule's threshold on s_t(suspect) - s_t(anchor): the conformal FPR-0.05 cut (the 47th of 48, 0.80999) of
# clean contrastive fine-tunes of the embedded MiniCLIP of 5, 10 and 15 epochs, each on its own class list
# (benchmarks/encoder_null_pooled.json: encoder-null and encoder-null2 pooled)
ANCHORED_THRESHOLD = 0.8100
ALPHA = 0.05  # family-wise error of the Grubbs and robust bounds
META_GAIN_TEST, WIDE_PROBE_TEST = "meta-gain", "wide-probe"  # the calibrated rule's joined statistics (Decision.tests)
MAD_K = 2.0  # Neural Cleanse and Pixel Backdoor flag classes whose anomaly index exceeds 2 (their papers)
MAD_TO_STD = 1.4826  # 1 / Phi^-1(3/4): x MAD estimates a normal standard deviation
MEAN_ABS_TO_STD = 1.2533  # sqrt(pi / 2): x mean absolute deviation estimates a normal standard deviation


@dataclass(frozen=True)
class Evidence:
    """What a scan measured, per candidate class (lists follow the candidate order).

    meta_gain: logits gained through the meta tokens by each candidate's inverted trigger (None: not
    measured); probes: (class index, ASR, meta gain) of each gate-probe trigger; wide_probes: the same for
    the gate probe at the wider budget (the calibrated rule's second statistic); sizes: the baselines'
    trigger sizes; anchor_asr / anchor_loss: each candidate's ASR and loss in the same scan of the anchor, the
    benign public model the delivered one was tuned from (empty when no anchor was scanned)."""

    names: list[str]
    asr: list[float]
    loss: list[float]
    meta_gain: list[float | None] = field(default_factory=list)
    probes: list[tuple[int, float, float]] = field(default_factory=list)
    sizes: list[float] = field(default_factory=list)
    wide_probes: list[tuple[int, float, float]] = field(default_factory=list)
    anchor_asr: list[float] = field(default_factory=list)  # the same scan of the anchor model (empty: none)
    anchor_loss: list[float] = field(default_factory=list)


@dataclass
class Decision:
    """A rule's verdict on one scan."""

    verdict: str  # "backdoored" or "clean"
    rule: str
    scores: list[float]  # the statistic the rule thresholds, per candidate
    paper_scores: list[float]  # s_t per candidate, whatever the rule (empty for "mad")
    max_score: float
    threshold: float
    predicted_target: int | None  # index of the named target when backdoored (the top candidate, but for the
    # calibrated rule's joint test: the class with the largest meta-gain value, `CalibratedRule.joint_test`)
    top: int  # index of the top candidate (even when clean)
    gap: float  # top-1 minus top-2 score
    flagged: list[bool]  # class-level flags (the named target's, for a rule that names one)
    fallback: str | None = None  # the rule that decided instead (meta-gain: "paper" when the meta tokens are inert)
    note: str | None = None  # why a fallback decided, or why the named target is not the top class, in words
    names: list[str] = field(default_factory=list)
    p_value: float | None = None  # calibrated rule: the p-value against the null study (joint: of the joint score)
    fpr: float | None = None  # calibrated rule: the false-positive rate it flags at
    null: dict | None = None  # calibrated rule: the null study decided against (NullStudy.describe())
    # calibrated rule's joint test: per joined statistic ("meta-gain", "wide-probe"), its maximum and unit (null median)
    tests: dict | None = None

    @property
    def target_name(self) -> str | None:
        return self.names[self.predicted_target] if self.predicted_target is not None and self.names else None

    @property
    def top_name(self) -> str | None:
        return self.names[self.top] if self.names else None


def zscore(v) -> torch.Tensor:
    """(v - mean) / std over the candidates (population std); all zeros when every value is equal."""
    v = torch.as_tensor(v, dtype=torch.float64)
    sd = v.std(unbiased=False)
    return torch.zeros_like(v) if sd < 1e-12 else (v - v.mean()) / sd


def robust_zscore(v) -> torch.Tensor:
    """(v - median) / (MAD_TO_STD x MAD); the mean absolute deviation stands in when the MAD is 0."""
    v = torch.as_tensor(v, dtype=torch.float64)
    med = v.median()
    mad = MAD_TO_STD * (v - med).abs().median()
    if mad < 1e-12:
        mad = MEAN_ABS_TO_STD * (v - med).abs().mean()
    return torch.zeros_like(v) if mad < 1e-12 else (v - med) / mad


def paper_scores(asr, loss) -> torch.Tensor:
    """s_t: the z-score within the model of a_t = z(ASR)_t - z(Lbar)_t."""
    asr = torch.as_tensor(asr, dtype=torch.float64)
    loss = torch.as_tensor(loss, dtype=torch.float64)
    if asr.shape != loss.shape or asr.ndim != 1 or len(asr) < 3:
        raise CIError(f"need per-candidate ASR and loss for at least 3 candidates, got {tuple(asr.shape)}")
    if not (torch.isfinite(asr).all() and torch.isfinite(loss).all()):
        raise CIError("non-finite ASR or loss among the candidates: the scan produced NaN/Inf")
    return zscore(zscore(asr) - zscore(loss))


def grubbs_bound(k: int, alpha: float = ALPHA) -> float:
    """Critical value of the one-sided Grubbs test for K values, on the scale of s_t (population std).

    Grubbs: G = max (a - mean) / sd (sample std) is an outlier iff G > (K - 1) / sqrt(K) * sqrt(t^2 /
    (K - 2 + t^2)), t the 1 - alpha / K quantile of Student's t with K - 2 degrees of freedom (for K = 25
    at alpha = 0.05 the critical G is 2.663, the tables' value). s_t = G * sqrt(K / (K - 1)), hence the bound."""
    from scipy.stats import t as student_t

    if k < 3:
        raise CIError(f"Grubbs' test needs at least 3 candidates, got {k}")
    q = float(student_t.ppf(1 - alpha / k, k - 2))
    return math.sqrt(k - 1) * math.sqrt(q * q / (k - 2 + q * q))


def bonferroni_bound(k: int, alpha: float = ALPHA) -> float:
    """Normal quantile 1 - alpha / (2K): the bound for the largest of K robust z-scores."""
    return NormalDist().inv_cdf(1 - alpha / (2 * max(1, k)))


def trigger_score(asr: float, meta_gain: float) -> float:
    """What one trigger is worth to the meta-gain rule: ASR x max(meta gain, 0), logits per held-out image."""
    return asr * max(meta_gain, 0.0)


def mad_index(sizes) -> torch.Tensor:
    """Anomaly index (median - s) / (MAD_TO_STD x MAD) of each class's trigger size (Neural Cleanse), signed
    so that SMALL triggers are positive (a backdoor makes its target's trigger small)."""
    s = torch.as_tensor(sizes, dtype=torch.float64)
    med = s.median()
    mad = MAD_TO_STD * (s - med).abs().median()
    return (med - s) / max(float(mad), 1e-12)


def _by_threshold(stat: torch.Tensor, paper: torch.Tensor | None, rule: str, thr: float, names: list[str],
                  fallback: str | None = None, note: str | None = None, first_max: bool = False) -> Decision:
    top2 = stat.topk(2)
    top = int(stat.argmax()) if first_max else int(top2.indices[0])
    mx = float(top2.values[0])
    backdoored = mx > thr
    return Decision(
        verdict="backdoored" if backdoored else "clean", rule=rule, scores=stat.tolist(),
        paper_scores=paper.tolist() if paper is not None else [], max_score=mx, threshold=thr,
        predicted_target=top if backdoored else None, top=top, gap=float(top2.values[0] - top2.values[1]),
        flagged=(stat > thr).tolist(), fallback=fallback, note=note, names=list(names),
    )


class Rule:
    """A named decision rule: `decide(evidence, threshold=None, calibration=None) -> Decision` (only the
    calibrated rule reads `calibration`)."""

    name = "rule"
    method = "clip-inspector"  # the scan method whose evidence it reads
    summary = ""
    needs_anchor = False  # whether it reads the anchor's scan beside the suspect's (scan(..., anchor=...))

    def default_threshold(self, k: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def decide(self, ev: Evidence, threshold: float | None = None,
               calibration: Calibration | None = None) -> Decision:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class PaperScoreRule(Rule):
    """A threshold on a statistic of the paper's a_t."""

    def statistic(self, paper: torch.Tensor, ev: Evidence) -> torch.Tensor:
        return paper

    def decide(self, ev: Evidence, threshold: float | None = None, calibration: Calibration | None = None) -> Decision:
        paper = paper_scores(ev.asr, ev.loss)
        thr = self.default_threshold(len(paper)) if threshold is None else float(threshold)
        return _by_threshold(self.statistic(paper, ev), paper, self.name, thr, ev.names)


class PaperRule(PaperScoreRule):
    name = "paper"
    summary = f"the paper's rule: max s_t > {PAPER_K:g}"

    def default_threshold(self, k: int) -> float:
        return PAPER_K


class GrubbsRule(PaperScoreRule):
    name = "grubbs"
    summary = f"max s_t against Grubbs' one-outlier bound for K candidates (alpha {ALPHA:g})"

    def default_threshold(self, k: int) -> float:
        return grubbs_bound(k)


class RobustRule(PaperScoreRule):
    name = "robust"
    summary = f"a_t by median and MAD against the Bonferroni normal bound over K (alpha {ALPHA:g})"

    def statistic(self, paper: torch.Tensor, ev: Evidence) -> torch.Tensor:
        return robust_zscore(zscore(ev.asr) - zscore(ev.loss))

    def default_threshold(self, k: int) -> float:
        return bonferroni_bound(k)


class AnchoredRule(PaperScoreRule):
    """What the suspect's scan shows beyond its anchor's: per class, s_t(suspect) - s_t(anchor), the paper's score
    of the delivered model minus that of the benign public model it was tuned from, scanned alike. A class the
    public head itself is easy to invert toward (a natural sink) scores about 0; a target the fine-tune implanted
    rises. Both s_t are z-scores within their own scan, so the difference is on one scale for every model."""

    name = "anchored"
    needs_anchor = True
    summary = (f"s_t(suspect) - s_t(anchor) > {ANCHORED_THRESHOLD:g} (a null study of clean MiniCLIP fine-tunes, "
               "FPR 0.05); names the top class")

    def default_threshold(self, k: int) -> float:
        return ANCHORED_THRESHOLD

    def decide(self, ev: Evidence, threshold: float | None = None, calibration: Calibration | None = None) -> Decision:
        if len(ev.anchor_asr) != len(ev.names) or len(ev.anchor_loss) != len(ev.names):
            raise CIError("the anchored rule needs the anchor's scan: scan(model, ood, anchor=the public model it "
                          "was tuned from)")
        paper = paper_scores(ev.asr, ev.loss)
        stat = paper - paper_scores(ev.anchor_asr, ev.anchor_loss)
        thr = self.default_threshold(len(stat)) if threshold is None else float(threshold)
        d = _by_threshold(stat, paper, self.name, thr, ev.names)
        # one named target, as the meta-gain rule names one: an implanted target lifts its look-alikes (same colour,
        # same pattern) over the threshold beside it, and the top class is the target (docs/encoders.md)
        d.flagged = [d.verdict == "backdoored" and i == d.top for i in range(len(stat))]
        return d


def meta_gain_values(ev: Evidence) -> tuple[list[float], float, int]:
    """Per candidate class, the best ASR x max(meta gain, 0) over its triggers (the measured inverted ones and
    the gate probe's); with the largest |meta gain| of any trigger and how many triggers there were."""
    k = len(paper_scores(ev.asr, ev.loss))  # checks the per-candidate ASR and loss first
    if len(ev.meta_gain) != k or all(g is None for g in ev.meta_gain):
        raise CIError("the meta-gain rule needs per-candidate meta gains (a scan made without them can be "
                      "decided with rule='grubbs' or 'paper')")
    triggers = [(i, float(ev.asr[i]), float(g)) for i, g in enumerate(ev.meta_gain) if g is not None]
    triggers += [(int(c), float(a), float(g)) for c, a, g in ev.probes]
    if not all(math.isfinite(a) and math.isfinite(g) for _, a, g in triggers):
        raise CIError("non-finite meta gain or ASR among the triggers: the model produces NaN/Inf")
    if any(not 0 <= c < k for c, _, _ in triggers):
        raise CIError("a gate-probe class index is out of the candidate range")
    value = [0.0] * k
    for c, a, g in triggers:
        value[c] = max(value[c], trigger_score(a, g))
    return value, max(abs(g) for _, _, g in triggers), len(triggers)


def wide_probe_values(ev: Evidence) -> list[float]:
    """Per candidate class, the best ASR x max(meta gain, 0) of the wide gate probe's triggers toward it (all 0
    without a wide probe)."""
    value = [0.0] * len(ev.names)
    for c, a, g in ev.wide_probes:
        if not (math.isfinite(a) and math.isfinite(g)):
            raise CIError("non-finite meta gain or ASR among the wide probe's triggers: the model produces NaN/Inf")
        if not 0 <= int(c) < len(value):
            raise CIError("a wide-probe class index is out of the candidate range")
        value[int(c)] = max(value[int(c)], trigger_score(a, g))
    return value


def wide_probe_statistic(ev: Evidence) -> float | None:
    """The top class's wide-probe value: the calibrated rule's second statistic (None: no wide probe ran)."""
    return max(wide_probe_values(ev)) if ev.wide_probes else None


def class_front(ev: Evidence) -> tuple[tuple[float, float], ...]:
    """The Pareto front of the classes' (meta-gain value, wide-probe value) pairs: what a null study keeps of
    a clean model so that its joint statistic is exactly a scan's (`NullStudy.fronts`)."""
    return pareto_front(zip(meta_gain_values(ev)[0], wide_probe_values(ev)))


def meta_gain_statistic(ev: Evidence) -> float:
    """The top class's meta-gain value: what a null study records per clean model."""
    return max(meta_gain_values(ev)[0])


class MetaGainRule(Rule):
    name = "meta-gain"
    summary = (f"the best ASR x meta gain of a class's triggers > {META_GAIN_THRESHOLD:g} logit; the paper's rule "
               f"when the meta tokens are inert (every |meta gain| <= {INERT_GAIN:g})")

    def __init__(self, fallback: Rule | None = None):
        self.fallback = fallback or PaperRule()

    def default_threshold(self, k: int) -> float:
        return META_GAIN_THRESHOLD

    def decide(self, ev: Evidence, threshold: float | None = None, calibration: Calibration | None = None) -> Decision:
        value, largest, n_triggers = meta_gain_values(ev)
        if largest <= INERT_GAIN:  # the fallback, an explicit step: inert meta tokens leave this rule blind
            return self.fallback_decision(ev, largest, n_triggers)
        thr = META_GAIN_THRESHOLD if threshold is None else float(threshold)
        return self.by_value(ev, value, max(value) > thr, thr)

    def by_value(self, ev: Evidence, value: list[float], backdoored: bool, thr: float, **extra) -> Decision:
        """The decision that flags the top class (or nothing) given the per-class values."""
        k = len(value)
        top = max(range(k), key=lambda i: (value[i], -i))
        mx = value[top]
        return Decision(
            verdict="backdoored" if backdoored else "clean", rule=self.name, scores=value,
            paper_scores=paper_scores(ev.asr, ev.loss).tolist(), max_score=mx, threshold=thr,
            predicted_target=top if backdoored else None, top=top, gap=mx - max(value[:top] + value[top + 1 :]),
            flagged=[backdoored and i == top for i in range(k)], names=list(ev.names), **extra,
        )

    def fallback_decision(self, ev: Evidence, largest: float, n_triggers: int) -> Decision:
        d = self.fallback.decide(ev)
        rule = (f"the paper's rule (s_t > {PAPER_K:g})" if self.fallback.name == "paper"
                else f"the {self.fallback.name} rule (threshold {d.threshold:g})")
        d.note = (f"the prompt learner's meta tokens do not respond: no trigger the scan tried ({n_triggers}, "
                  f"inverted and gate-probe) changes a class's margin through them by more than {INERT_GAIN} logits "
                  f"(largest {largest:.4f}), so the meta-gain rule cannot see a backdoor in this model (one in "
                  f"the static context looks like this). The verdict falls back to {rule}: max {d.max_score:.2f} on "
                  f"{ev.names[d.top]!r}.")
        d.rule, d.fallback = self.name, self.fallback.name
        return d


def too_few_note(null: NullStudy, fpr: float) -> str:
    """Why a null decides nothing at fpr: its smallest p-value, 1 / (N + 1), is above it."""
    return (f"the null's {null.n_models} clean models are too few to flag anything at FPR {fpr:g} (that needs "
            f"{math.ceil(1 / fpr - 1)}): the verdict is clean whatever the scores.")


class CalibratedRule(MetaGainRule):
    name = "calibrated"
    summary = ("the meta-gain and wide-probe statistics, each in units of its median over a null study of clean "
               "models and added, tested against the null at the false-positive rate ScanConfig.fpr; the meta-gain "
               "statistic alone when the null or the scan has no wide probe; without a null for the scan, the "
               "meta-gain rule")

    def decide(self, ev: Evidence, threshold: float | None = None, calibration: Calibration | None = None) -> Decision:
        cal = calibration or Calibration(None, why="no calibration was given")
        value, largest, n_triggers = meta_gain_values(ev)
        joint = threshold is None and cal.null is not None and bool(cal.null.wide_scores) and bool(ev.wide_probes)
        if joint:  # the wide probe's triggers count too: meta tokens that respond only at its bound are not inert
            largest = max([largest] + [abs(float(g)) for _, _, g in ev.wide_probes])
            n_triggers += len(ev.wide_probes)
        if largest <= INERT_GAIN:
            return self.fallback_decision(ev, largest, n_triggers)
        mx = max(value)
        if threshold is not None or cal.null is None:
            thr = META_GAIN_THRESHOLD if threshold is None else float(threshold)
            why = "a threshold was given" if threshold is not None else cal.why
            d = self.by_value(ev, value, mx > thr, thr, fallback="meta-gain")
            d.note = (f"not calibrated: {why}; the verdict is the meta-gain rule's at threshold {thr:g} logit, "
                      "whose false-positive rate is not measured for this scan.")
            return d
        null = cal.null
        if joint:
            return self.joint_test(ev, value, null, cal.fpr)
        p = null.p_value(mx)
        thr = null.threshold(cal.fpr)
        d = self.by_value(ev, value, p <= cal.fpr, math.inf if thr is None else thr, p_value=p, fpr=cal.fpr,
                          null=null.describe())
        if thr is None:
            d.note = too_few_note(null, cal.fpr)
        return d

    def joint_test(self, ev: Evidence, value: list[float], null: NullStudy, fpr: float) -> Decision:
        """Class c scores v_c / m_meta + w_c / m_wide (its meta-gain and wide-probe values over their null medians,
        `NullStudy.scales`); the top class's score against the null's joint scores at fpr. A null with its models'
        class fronts scores each clean model as this does, so the test flags a clean model at most fpr of the time
        (floor(fpr (N + 1)) / (N + 1) without ties); one without adds each model's two maxima (at least its top
        class's score: fewer clean models and fewer backdoors flagged). Both up to the noise of the medians, which
        come from the N null models (negligible at the shipped null's 60, checked in simulation at 39). `tests`
        holds each statistic's largest value over the classes and its unit. A flagged model's named target is the
        class with the largest meta-gain value when that value is at least its unit (else the joint score's top
        class); `note` says so when it is not the joint score's top class."""
        wide = wide_probe_values(ev)
        ms, mw = null.scales()
        scores = [a / ms + b / mw for a, b in zip(value, wide)]
        p, cut = null.p_value(max(scores), joint=True), null.threshold(fpr, joint=True)
        tests = {META_GAIN_TEST: {"statistic": max(value), "scale": ms},
                 WIDE_PROBE_TEST: {"statistic": max(wide), "scale": mw}}
        d = self.by_value(ev, scores, p <= fpr, math.inf if cut is None else cut, p_value=p, fpr=fpr,
                          null=null.describe(), tests=tests)
        if cut is None:
            d.note = too_few_note(null, fpr)
        named = max(range(len(value)), key=lambda i: (value[i], i == d.top, -i))  # ties: the joint top class
        if d.verdict == "backdoored" and value[named] >= ms and named != d.top:
            # the test is on the joint score; the target it names is the class whose triggers at the scan's own
            # bounds gain most through the meta tokens, when that gain is at least its unit (the clean median):
            # the wide probe's gates at its wider bound reach many classes
            d.predicted_target = named
            d.flagged = [i == named for i in range(len(value))]
            d.note = (f"flagged on the joint score of {ev.names[d.top]!r} ({d.max_score:.1f} units); the target named "
                      f"is {ev.names[named]!r}, the class with the largest meta-gain value ({value[named]:.3f} logit "
                      f"against {value[d.top]:.3f}): the wide probe's gates reach many classes at their wider bound.")
        return d


class MadRule(Rule):
    name = "mad"
    method = "baselines"
    summary = f"anomaly index of the trigger sizes > {MAD_K:g} (Neural Cleanse, Pixel Backdoor)"

    def default_threshold(self, k: int) -> float:
        return MAD_K

    def decide(self, ev: Evidence, threshold: float | None = None, calibration: Calibration | None = None) -> Decision:
        if len(ev.sizes) != len(ev.names) or len(ev.sizes) < 2:
            raise CIError("the mad rule needs a trigger size for every candidate (a baseline scan)")
        thr = MAD_K if threshold is None else float(threshold)
        return _by_threshold(mad_index(ev.sizes), None, self.name, thr, ev.names, first_max=True)


RULES: dict[str, Rule] = {r.name: r for r in (CalibratedRule(), MetaGainRule(), PaperRule(), GrubbsRule(), RobustRule(),
                                              AnchoredRule(), MadRule())}
SCAN_RULES = tuple(n for n, r in RULES.items() if r.method == "clip-inspector")  # the built-in choices of ScanConfig.rule
SOLO_RULES = tuple(n for n in SCAN_RULES if not RULES[n].needs_anchor)  # those that decide a scan on its own


def scan_rules() -> list[str]:
    """The rules that decide CLIP-Inspector scans, including any a fork registered in RULES."""
    return [n for n, r in RULES.items() if r.method == "clip-inspector"]
# also decided on every CLIP-Inspector scan and recorded in its report, under these report.json keys
SIDE_RULES = {"paper": "paper_rule", "grubbs": "grubbs_rule", "meta-gain": "meta_gain_rule", "anchored": "anchored_rule"}
BASELINE_RULE = "mad"


def get_rule(name: str) -> Rule:
    if name not in RULES:
        raise CIError(f"unknown decision rule {name!r}; choose one of {list(RULES)}")
    return RULES[name]


DEFAULT_RULE = "calibrated"


def decide_evidence(ev: Evidence, rule: str = DEFAULT_RULE, threshold: float | None = None,
                    calibration: Calibration | None = None) -> Decision:
    """The verdict of rule `rule` (a name in RULES) on a scan's evidence."""
    return get_rule(rule).decide(ev, threshold, calibration)


def youden_threshold(max_scores, labels) -> float:
    """Threshold on max score maximising Youden's J (TPR - FPR) over labelled models (1 = backdoored)."""
    from sklearn.metrics import roc_curve

    labels = list(labels)
    if len(set(labels)) < 2:
        raise CIError("Youden calibration needs both clean and backdoored models")
    fpr, tpr, thr = roc_curve(labels, list(max_scores))
    best = int((tpr - fpr).argmax())
    t = float(thr[best])
    if not math.isfinite(t):
        return float(max(max_scores))
    below = [float(v) for v in max_scores if v < t]  # roc_curve means ">= t"; a rule means "> threshold"
    return (t + max(below)) / 2 if below else t - 1e-9


__all__ = ["Evidence", "Decision", "Rule", "RULES", "DEFAULT_RULE", "meta_gain_values", "meta_gain_statistic",
           "class_front",
           "wide_probe_values", "wide_probe_statistic", "META_GAIN_TEST", "WIDE_PROBE_TEST", "SCAN_RULES",
           "SOLO_RULES", "SIDE_RULES", "BASELINE_RULE",
           "get_rule",
           "decide_evidence", "paper_scores", "zscore", "robust_zscore", "grubbs_bound", "bonferroni_bound",
           "trigger_score", "mad_index", "youden_threshold", "PAPER_K", "ANCHORED_THRESHOLD", "META_GAIN_THRESHOLD", "INERT_GAIN",
           "ALPHA", "MAD_K"]

"""Null studies: what clean models score, so that a verdict comes with its false-positive rate.

A null study holds the meta-gain statistic (the top class's best ASR x meta gain, `rules.trigger_score`) of
N clean delivered models, each scanned with one scan configuration on one backbone. A new model's score s
gets the conformal p-value

    p = (1 + #{clean scores >= s}) / (N + 1)

and is flagged when p <= fpr: if the new model is clean and exchangeable with the study's models, this
happens with probability at most fpr, whatever the scores' distribution. The smallest p a study of N
models can give is 1 / (N + 1), so an fpr below that flags nothing.

A null may also hold each clean model's wide-probe statistic (the best ASR x meta gain of the gate probe at
the wider budget, `ScanConfig.wide_probe_eps`): the calibrated rule then joins the two. Each column's median
over the null is its unit (`scales`); a class's joint score is its meta-gain value plus its wide-probe value,
each in its unit, and a scan's joint statistic (its top class's joint score) is tested against the clean
models' joint statistics (`joint_scores`) at fpr: one test, no Bonferroni split. A null that holds each
model's class pairs (`fronts`: the (meta-gain, wide-probe) values of the classes no other class of that model
beats in both) gives each clean model exactly the statistic a scan computes, so the test flags a clean model
at most fpr of the time, and close to it (floor(fpr (N + 1)) / (N + 1) without ties), up to the noise of the
medians; a null without them adds each model's two maxima, which may come from two classes: at least
what its top class scores, so that test flags fewer clean models and fewer backdoors. (A model whose meta
tokens are inert is decided by the paper's rule instead, `rules.py`.)

The package ships the null of the embedded MiniCLIP under the default scan (assets/null/); `ci-toolkit
calibrate` builds one for another backbone; `ScanConfig.null_file` points a scan at it.
"""

from __future__ import annotations

import json
import math
from statistics import median
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..errors import CIError, DataError

DEFAULT_FPR = 0.05  # the false-positive rate a default scan flags at (the null study's bound, docs/method.md)
NULL_DIR = Path(__file__).resolve().parent.parent / "assets" / "null"
# The scan settings a null holds for: a scan that differs in any of them is not calibrated by it.
SCAN_KEYS = ("method", "inversion", "meta_candidates", "meta_images", "probe_eps", "probe_images", "probe_shut",
             "pool_size", "heldout_size")
# The wide probe's bound: a null's wide-probe column calibrates only scans whose wide probe had its bound; for any
# other scan (none, or another bound) the null still calibrates the meta-gain test alone.
WIDE_KEY = "wide_probe_eps"
# a column's unit (its median) is floored here, in logits far below any trigger score a scan reports as meaningful,
# so that a null whose clean models mostly score 0 still gives finite joint scores
MIN_SCALE = 1e-3
FORMAT = "ci_toolkit.null/1"


def backbone_key(spec) -> str:
    """A backbone's identity for nulls: kind, name, weights tag and the loaded weights' checksum."""
    d = asdict(spec) if not isinstance(spec, dict) else spec
    sha = (d.get("weights_sha256") or "")[:16]
    return ":".join(str(x) for x in (d.get("kind"), d.get("name"), d.get("pretrained"), sha or d.get("seed")))


def scan_settings(config: dict) -> dict:
    """The part of a scan's recorded configuration that a null must share (as JSON would store it)."""
    return json.loads(json.dumps({k: config.get(k) for k in (*SCAN_KEYS, WIDE_KEY)}))


@dataclass(frozen=True)
class NullStudy:
    """The meta-gain statistic of `n_models` clean models scanned with `scan` settings on `backbone`."""

    backbone: str  # backbone_key of the backbone the models were tuned on
    scores: tuple[float, ...]  # one per clean model
    scan: dict  # scan_settings of their scans
    ood: str = ""  # the OOD images the scans used, in words
    source: str = ""  # the command that built it
    models: tuple[str, ...] = field(default_factory=tuple)  # names of the clean models, in the order of scores
    wide_scores: tuple[float, ...] = ()  # each model's wide-probe statistic, in the same order (empty: not measured)
    # each model's Pareto front of its classes' (meta-gain value, wide-probe value) pairs, in the same order
    # (`pareto_front`); empty: not recorded, and the joint scores add each model's two maxima
    fronts: tuple[tuple[tuple[float, float], ...], ...] = ()

    def __post_init__(self):
        if len(self.scores) < 1 or not all(math.isfinite(s) for s in self.scores):
            raise DataError("a null study needs at least one finite score")
        if self.wide_scores and (len(self.wide_scores) != len(self.scores)
                                 or not all(math.isfinite(s) for s in self.wide_scores)):
            raise DataError(f"a null study's wide-probe scores must be finite, one per model ({len(self.scores)}), "
                            f"got {len(self.wide_scores)}")
        if self.fronts:
            if not self.wide_scores:
                raise DataError("a null study's class fronts need its wide-probe scores (drop the fronts with them)")
            if len(self.fronts) != len(self.scores):
                raise DataError(f"a null study needs one class front per model ({len(self.scores)}), "
                                f"got {len(self.fronts)}")
            try:
                fronts = tuple(tuple((float(a), float(b)) for a, b in f) for f in self.fronts)
            except (TypeError, ValueError):
                raise DataError("a null study's class fronts must be lists of (meta-gain, wide-probe) pairs") from None
            if not all(math.isfinite(v) and v >= 0 for f in fronts for p in f for v in p):
                raise DataError("a null study's class fronts must hold finite values >= 0")
            object.__setattr__(self, "fronts", fronts)  # tuples, so that a null built from lists equals its file
            for i, (front, s, w) in enumerate(zip(self.fronts, self.scores, self.wide_scores)):
                tops = (max((a for a, _ in front), default=0.0), max((b for _, b in front), default=0.0))
                if not all(math.isclose(t, v, rel_tol=1e-6, abs_tol=1e-9) for t, v in zip(tops, (max(s, 0.0), w))):
                    raise DataError(f"model {i}'s class front (largest {tops[0]:.4g}, {tops[1]:.4g}) does not hold "
                                    f"its statistics ({s:.4g}, {w:.4g})")

    @property
    def n_models(self) -> int:
        return len(self.scores)

    def scales(self) -> tuple[float, float]:
        """The units of the joint statistic: the medians of the meta-gain and wide-probe columns (each at least
        MIN_SCALE); the wide one is 1.0 for a null without the wide column."""
        wide = max(median(self.wide_scores), MIN_SCALE) if self.wide_scores else 1.0
        return max(median(self.scores), MIN_SCALE), wide

    def joint_scores(self) -> tuple[float, ...]:
        """Each clean model's joint statistic in the columns' units (`scales`): the largest joint score of its
        classes (from its front), or, for a null without fronts, its two maxima added."""
        if not self.wide_scores:
            raise DataError("this null study has no wide-probe column to join")
        ms, mw = self.scales()
        if self.fronts:
            return tuple(max((a / ms + b / mw for a, b in front), default=0.0) for front in self.fronts)
        return tuple(s / ms + w / mw for s, w in zip(self.scores, self.wide_scores))

    def _column(self, wide: bool, joint: bool) -> tuple[float, ...]:
        return self.joint_scores() if joint else self.wide_scores if wide else self.scores

    def p_value(self, score: float, wide: bool = False, joint: bool = False) -> float:
        """(1 + #{clean scores >= score}) / (N + 1); wide: against the wide-probe scores; joint: against
        `joint_scores`."""
        return conformal_p(self._column(wide, joint), score)

    def threshold(self, fpr: float, wide: bool = False, joint: bool = False) -> float | None:
        """The score a model must EXCEED to be flagged at `fpr`; None when fpr < 1 / (N + 1) (nothing can be);
        wide: on the wide-probe scores; joint: on `joint_scores`."""
        return conformal_threshold(self._column(wide, joint), fpr)

    def mismatch(self, config: dict) -> str | None:
        """Why a scan with this recorded configuration is not calibrated by this null (None: it is)."""
        if config.get("backbone") != self.backbone:
            return f"the null is for backbone {self.backbone}, the scan's is {config.get('backbone') or 'not recorded'}"
        theirs = scan_settings(config)
        diff = [k for k in SCAN_KEYS if theirs[k] != self.scan.get(k)]
        if diff:
            k = diff[0]
            return f"the scan's {k} is {theirs[k]!r}, the null's scans used {self.scan.get(k)!r}"
        return None

    def wide_applies(self, config: dict) -> bool:
        """Whether the wide-probe column calibrates a scan with this recorded configuration."""
        theirs = scan_settings(config)[WIDE_KEY]
        return bool(self.wide_scores) and theirs is not None and theirs == self.scan.get(WIDE_KEY)

    def describe(self) -> dict:
        """What a report records of its null; "exact": its joint scores are each clean model's top class's
        (it holds class fronts), not two maxima added."""
        return {"n_models": self.n_models, "backbone": self.backbone, "ood": self.ood, "source": self.source,
                "exact": bool(self.fronts)}

    # ---- files ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "backbone": self.backbone, "statistic": "meta-gain", "scores": list(self.scores),
                "wide_scores": list(self.wide_scores), "fronts": [[list(p) for p in f] for f in self.fronts],
                "models": list(self.models), "scan": self.scan, "ood": self.ood, "source": self.source}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "NullStudy":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
            if d.get("format") != FORMAT:
                raise KeyError("format")
            return cls(backbone=d["backbone"], scores=tuple(float(s) for s in d["scores"]), scan=dict(d["scan"]),
                       ood=d.get("ood", ""), source=d.get("source", ""), models=tuple(d.get("models", ())),
                       wide_scores=tuple(float(s) for s in d.get("wide_scores", ())),
                       fronts=tuple(d.get("fronts", ())))  # checked and made tuples by __post_init__
        except FileNotFoundError:
            raise DataError(f"no null study at {path}") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path} is not a ci_toolkit null study ({exc})") from None


def pareto_front(pairs) -> tuple[tuple[float, float], ...]:
    """The (a, b) pairs no other pair beats in both (ties kept once), sorted by a: the only ones that can hold
    the largest x a + y b for any x, y >= 0, so a null keeps these of each clean model's classes."""
    front, best_b = [], -math.inf
    for a, b in sorted({(float(a), float(b)) for a, b in pairs}, key=lambda p: (-p[0], -p[1])):
        if b > best_b:
            front.append((a, b))
            best_b = b
    return tuple(sorted(front))


def conformal_p(scores, score: float) -> float:
    """(1 + #{scores >= score}) / (N + 1): the conformal p-value of `score` among N exchangeable scores."""
    return (1 + sum(s >= score for s in scores)) / (len(scores) + 1)


def conformal_threshold(scores, fpr: float) -> float | None:
    """The score that must be EXCEEDED for conformal_p <= fpr; None when fpr < 1 / (N + 1) (nothing can be)."""
    m = math.floor(fpr * (len(scores) + 1) + 1e-9) - 1  # flagged iff at most m scores reach it
    if m < 0:
        return None
    ordered = sorted(scores, reverse=True)
    return ordered[m] if m < len(ordered) else -math.inf


def shipped_nulls() -> list[Path]:
    """The null studies shipped with the package."""
    return sorted(NULL_DIR.glob("*.json"))


def shipped_null(backbone: str) -> NullStudy | None:
    """The shipped null study of a backbone key, if there is one."""
    for path in shipped_nulls():
        null = NullStudy.load(path)
        if null.backbone == backbone:
            return null
    return None


@dataclass(frozen=True)
class Calibration:
    """What a calibrated rule decides against: a null study (None: none applies, `why` says why) and the
    false-positive rate to flag at."""

    null: NullStudy | None
    fpr: float = DEFAULT_FPR
    why: str | None = None

    def __post_init__(self):
        if not 0 < self.fpr < 1:
            raise CIError(f"fpr must be in (0, 1), got {self.fpr}")


def calibration_for(config: dict) -> Calibration:
    """The calibration of a scan from its recorded configuration: the null file it names, else the shipped
    null of its backbone, provided the null's scan settings are the scan's."""
    fpr = float(config.get("fpr", DEFAULT_FPR))
    if config.get("null_file"):
        null = NullStudy.load(config["null_file"])
    elif not config.get("backbone"):
        return Calibration(None, fpr, "the scan does not record its backbone")
    else:
        null = shipped_null(config["backbone"])
        if null is None:
            return Calibration(None, fpr, f"no null study is shipped for backbone {config['backbone']} "
                                          "(build one with `ci-toolkit calibrate`)")
    why = null.mismatch(config)
    if why:
        return Calibration(None, fpr, why)
    return Calibration(null if null.wide_applies(config) else replace(null, wide_scores=(), fronts=()), fpr)


__all__ = ["NullStudy", "Calibration", "calibration_for", "shipped_null", "shipped_nulls", "backbone_key",
           "scan_settings", "conformal_p", "conformal_threshold", "pareto_front", "DEFAULT_FPR", "SCAN_KEYS", "WIDE_KEY",
           "MIN_SCALE"]

"""A scan's result: `ScanReport`, typed, with its triggers in memory; saved as JSON + safetensors.

    report = ci.scan(model, ood)                  # a ScanReport
    report.verdict, report.predicted_target       # "backdoored", "white solid triangle"
    report.save("runs/scan")                      # report.json, triggers.safetensors, gate_probe.safetensors, report.html
    report = ScanReport.load("runs/scan")
    target, delta, source = report.repair_trigger()

Folder layout: report.json (everything but tensors), triggers.safetensors ({"deltas": [K, 3, H, W]}, one
trigger per candidate, in the order of `classes`), gate_probe.safetensors ({"deltas": [U, 3, H, W]}, one
per probe unit, in the order of `gate_probe.units`), report.html (for people).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CIError, DataError
from ..images import to_uint8
from .calibration import MIN_SCALE, Calibration, calibration_for
from .html import report_html
from .rules import (
    META_GAIN_TEST,
    SIDE_RULES,
    WIDE_PROBE_TEST,
    Decision,
    Evidence,
    MetaGainRule,
    decide_evidence,
    get_rule,
    trigger_score,
)

# scan settings that act after the inversion (changing them leaves every inverted trigger as it is)
AFTER_INVERSION_KEYS = ("rule", "threshold", "fpr", "null_file", "backbone", "meta_candidates", "meta_images",
                        "probe_eps", "wide_probe_eps", "probe_images", "probe_shut")
PREVIEW_IMAGES = 8  # held-out images saved with the triggers, for the HTML report's triggered examples


@dataclass
class ClassResult:
    """One candidate class. CLIP-Inspector rows carry paper_score, meta_gain (None: not measured) and the
    loss curve; baseline rows carry the trigger size and whether it reached the ASR bound."""

    name: str
    asr: float  # held-out OOD images its inverted trigger sends to it
    loss: float  # mean inversion loss (CLIP-Inspector) or mean CE (baselines)
    score: float  # the deciding rule's statistic
    flagged: bool
    paper_score: float | None = None  # s_t
    meta_gain: float | None = None  # logits its inverted trigger gains through the meta tokens
    losses: list[float] = field(default_factory=list)  # every inversion step's loss
    size: float | None = None  # baselines: the trigger's size
    reached_bound: bool | None = None  # baselines: did a trigger of that size reach the ASR bound
    # meta-gain rules: the trigger behind the score, {"source": "inversion" | "gate probe, unit U open|shut",
    # "asr", "meta_gain"} (that trigger's own ASR and gain)
    trigger: dict | None = None

    def to_dict(self, method: str) -> dict:
        row = {"name": self.name, "asr": self.asr, "loss": self.loss, "score": self.score}
        if method == "clip-inspector":
            row.update(paper_score=self.paper_score, meta_gain=self.meta_gain, flagged=self.flagged, losses=self.losses,
                       trigger=self.trigger)
        else:
            row.update(size=self.size, reached_bound=self.reached_bound, flagged=self.flagged)
        return row


@dataclass
class ProbeUnit:
    """One gate-probe perturbation: meta-net hidden unit `unit` opened (or shut), the class it sends most
    held-out images to, that fraction, and its meta gain toward that class (logits); wide: made at the
    probe's wider budget (`GateProbe.wide_eps`)."""

    unit: int
    class_name: str
    asr: float
    meta_gain: float
    shut: bool = False
    wide: bool = False

    @property
    def score(self) -> float:
        return trigger_score(self.asr, self.meta_gain)

    def to_dict(self) -> dict:
        return {"unit": self.unit, "class": self.class_name, "asr": self.asr, "meta_gain": self.meta_gain,
                "shut": self.shut, **({"wide": True} if self.wide else {})}


@dataclass
class GateProbe:
    eps: float  # L-inf bound of the probe perturbations
    images: int  # pool images they were optimised on
    shut: bool  # whether each unit was also shut
    units: list[ProbeUnit]  # those at eps, then those at wide_eps (marked wide)
    wide_eps: float | None = None  # the wider bound it was also run at (ScanConfig.wide_probe_eps)

    def with_wide(self, wide: "GateProbe") -> "GateProbe":
        """This probe with the units of `wide` (the same probe at a wider bound) appended, marked wide."""
        units = [ProbeUnit(u.unit, u.class_name, u.asr, u.meta_gain, u.shut, wide=True) for u in wide.units]
        return GateProbe(self.eps, self.images, self.shut, self.units + units, wide.eps)

    def to_dict(self) -> dict:
        return {"eps": self.eps, "images": self.images, "shut": self.shut, "units": [u.to_dict() for u in self.units],
                **({"wide_eps": self.wide_eps} if self.wide_eps is not None else {})}


def best_trigger(name: str, asr: float, meta_gain: float | None, probe: GateProbe | None,
                 tests: dict | None = None) -> tuple[dict, int | None]:
    """The trigger behind a class's score: its inverted trigger, or a gate-probe unit toward it that scores
    higher; ({"source", "asr", "meta_gain"}, index of that probe unit or None for the inversion). Wide-probe
    units count only under the calibrated rule's joint test (`tests`, Decision.tests), each trigger's score
    in its statistic's unit (the null median)."""
    def scale(value: float, wide: bool) -> float | None:  # a trigger's score on the scale the decision used
        if not tests:
            return None if wide else value
        t = tests[WIDE_PROBE_TEST if wide else META_GAIN_TEST]
        return value / max(t.get("scale", t.get("cut")) or 0.0, MIN_SCALE)  # an older report's two tests: the cut

    best = scale(trigger_score(asr, meta_gain or 0.0), False)
    info, index = {"source": "inversion", "asr": asr, "meta_gain": meta_gain}, None
    for j, u in enumerate(probe.units if probe else []):
        s = scale(u.score, u.wide) if u.class_name == name else None
        if s is None or s <= best:
            continue
        best, index = s, j
        at = f" at {probe.wide_eps * 255:.0f}/255" if u.wide else ""
        info = {"source": f"gate probe{at}, unit {u.unit} {'shut' if u.shut else 'open'}", "asr": u.asr,
                "meta_gain": u.meta_gain}
    return info, index


class RepairTrigger(NamedTuple):
    target: str  # the class it sends images to
    delta: torch.Tensor  # [3, H, W], pixel space
    source: str  # "inversion" or "gate probe, unit u[ shut]"


@dataclass
class ScanReport:
    """Verdict, per-class results, the gate probe, the side rules' verdicts, and the triggers (in memory)."""

    method: str
    verdict: str
    max_score: float
    threshold: float
    predicted_target: str | None
    top_class: str
    gap: float
    rule: str
    classes: list[ClassResult]
    fallback: str | None = None
    p_value: float | None = None  # calibrated rule: the p-value against the null study (joint: of the joint score)
    fpr: float | None = None  # calibrated rule: the false-positive rate it flags at
    null: dict | None = None  # calibrated rule: the null study it decided against (n_models, backbone, ood, source)
    tests: dict | None = None  # calibrated rule's joint test: {"meta-gain" | "wide-probe": {statistic, scale}}
    side_rules: dict[str, dict] = field(default_factory=dict)  # rule name -> {verdict, max_score, threshold, gap}
    anchor: dict | None = None  # the anchor's scan, per candidate: {"model", "asr", "loss"} (anchored rule)
    gate_probe: GateProbe | None = None
    warnings: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    runtime_s: float = 0.0
    triggers: torch.Tensor | None = field(default=None, repr=False)  # [K, 3, H, W]
    probe_triggers: torch.Tensor | None = field(default=None, repr=False)  # [U, 3, H, W]
    preview: torch.Tensor | None = field(default=None, repr=False)  # held-out images for the HTML (not saved)

    # ---- reading -------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def backdoored(self) -> bool:
        return self.verdict == "backdoored"

    def row(self, name: str) -> ClassResult:
        for c in self.classes:
            if c.name == name:
                return c
        raise DataError(f"{name!r} is not a candidate class of this scan")

    def evidence(self) -> Evidence:
        """What the scan measured, for deciding again under another rule."""
        index = {n: i for i, n in enumerate(self.names)}
        units = self.gate_probe.units if self.gate_probe else []
        probes = [(index[u.class_name], u.asr, u.meta_gain) for u in units if not u.wide]
        wide = [(index[u.class_name], u.asr, u.meta_gain) for u in units if u.wide]
        return Evidence(names=self.names, asr=[c.asr for c in self.classes], loss=[c.loss for c in self.classes],
                        meta_gain=[c.meta_gain for c in self.classes], probes=probes, wide_probes=wide,
                        sizes=[c.size for c in self.classes] if self.method != "clip-inspector" else [],
                        anchor_asr=list(self.anchor["asr"]) if self.anchor else [],
                        anchor_loss=list(self.anchor["loss"]) if self.anchor else [])

    def summary(self) -> str:
        """One line for people: the verdict, the top class and its score against the threshold."""
        target = f" toward {self.predicted_target!r}" if self.predicted_target else f" (top class {self.top_class!r})"
        if self.predicted_target and self.predicted_target != self.top_class:  # named by its meta gain (joint test)
            target += f" (the score's top class: {self.top_class!r})"
        # a calibrated rule without a null for this scan is decided by its fallback's fixed threshold: say so
        shown = self.fallback if self.fallback else self.rule
        fb = ""
        if self.fallback:
            fb = ", not calibrated" if self.fallback == "meta-gain" else f", decided by the {self.fallback} rule"
        p = (f", p = {self.p_value:.3f} against {self.null['n_models']} clean models (flags at FPR {self.fpr:g})"
             if self.p_value is not None else "")
        if self.tests:
            p += " (joint; largest values: " + "; ".join(
                f"{k} {t['statistic']:.2f}" + (f" over its null median {t['scale']:.3g}" if "scale" in t else "")
                for k, t in self.tests.items()) + ")"
        return (f"{self.verdict}{target}: {shown} score {self.max_score:.2f} against threshold {self.threshold:.2f}"
                f"{p}{fb} ({len(self.classes)} candidates, {self.runtime_s:.0f} s)")

    @property
    def calibrated(self) -> bool:
        """Whether the verdict's false-positive rate is calibrated by a null study (`p_value`, `fpr`)."""
        return self.p_value is not None

    def calibration(self) -> Calibration:
        """The null study and FPR this scan's configuration calls for (the shipped null of its backbone, or its
        `null_file`), with why none applies."""
        return calibration_for(self.config)

    def __str__(self) -> str:
        return f"ScanReport({self.summary()})"

    # ---- deciding ------------------------------------------------------------------------------------
    @classmethod
    def from_decision(cls, method: str, d: Decision, ev: Evidence, rows: list[dict],
                      gate_probe: GateProbe | None = None, **kw) -> "ScanReport":
        """A report from a rule's decision; rows: per candidate, the measured fields of ClassResult."""
        classes = [ClassResult(**{**r, "score": s, "flagged": fl, "paper_score": ps})
                   for r, s, fl, ps in zip(rows, d.scores, d.flagged, d.paper_scores or [None] * len(rows))]
        if isinstance(get_rule(d.rule), MetaGainRule) and d.fallback != "paper":
            for c in classes:
                c.trigger = best_trigger(c.name, c.asr, c.meta_gain, gate_probe, d.tests)[0]
        side = {}
        if method == "clip-inspector":
            has_meta = any(g is not None for g in ev.meta_gain or [])
            for name in SIDE_RULES:
                if isinstance(get_rule(name), MetaGainRule) and not has_meta:
                    continue  # a scan without meta gains (a zero-shot head) has nothing for it to read
                if name == "anchored" and not ev.anchor_asr:
                    continue  # no anchor was scanned
                s = decide_evidence(ev, name)
                side[name] = {"verdict": s.verdict, "max_score": s.max_score, "threshold": s.threshold, "gap": s.gap,
                              "top_class": s.top_name, "fallback": s.fallback}
        return cls(method=method, verdict=d.verdict, max_score=d.max_score, threshold=d.threshold,
                   predicted_target=d.target_name, top_class=ev.names[d.top], gap=d.gap, rule=d.rule,
                   classes=classes, fallback=d.fallback, p_value=d.p_value, fpr=d.fpr, null=d.null, tests=d.tests,
                   side_rules=side, gate_probe=gate_probe,
                   warnings=[d.note] if d.note else [], **kw)

    def with_anchor(self, anchor: "ScanReport", model: str = "anchor", rule: str | None = None,
                    threshold: float | None = None) -> "ScanReport":
        """This scan with the same scan of its anchor (the public model it was tuned from) attached, decided
        again under `rule` and `threshold` (default: its own), so that the anchored rule and its side verdict
        can read it. Both scans must have inverted alike (the same candidates, pool and held-out sizes, seed and
        inversion; checked) on the same OOD images (not checked: the caller gives both the same images)."""
        if self.method != "clip-inspector" or anchor.method != "clip-inspector":
            raise CIError("an anchor is compared under CLIP-Inspector's scan, not a baseline's")
        if anchor.names != self.names:
            raise DataError("the anchor's scan scores other candidate classes than this scan")
        mine = json.loads(json.dumps({k: v for k, v in self.config.items() if k not in AFTER_INVERSION_KEYS}))
        theirs = json.loads(json.dumps({k: v for k, v in anchor.config.items() if k not in AFTER_INVERSION_KEYS}))
        if mine != theirs:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise DataError(f"the anchor was scanned with other settings ({', '.join(diff)}): scan both alike")
        out = ScanReport(**{f.name: getattr(self, f.name) for f in fields(self)})
        out.anchor = {"model": model, "asr": [c.asr for c in anchor.classes], "loss": [c.loss for c in anchor.classes]}
        if rule is None:
            rule, threshold = self.rule, self.config.get("threshold")
        return out.redecide(rule, threshold)

    def redecide(self, rule: str, threshold: float | None = None, calibration: Calibration | None = None,
                 ) -> "ScanReport":
        """This scan decided again under `rule` (no new inversion; equal to a fresh scan with that rule).
        The calibrated rule decides against `calibration`, by default the one the scan's configuration calls for."""
        if (get_rule(rule).method == "clip-inspector") != (self.method == "clip-inspector"):
            raise CIError(f"rule {rule!r} does not decide {self.method} scans")
        ev = self.evidence()
        if calibration is None and self.method == "clip-inspector":
            calibration = self.calibration()
        d = decide_evidence(ev, rule, threshold, calibration)
        rows = [{k: getattr(c, k) for k in ("name", "asr", "loss", "meta_gain", "losses", "size", "reached_bound")}
                for c in self.classes]
        keep = {f.name: getattr(self, f.name) for f in fields(self) if f.name in
                ("config", "runtime_s", "triggers", "probe_triggers", "preview")}
        out = ScanReport.from_decision(self.method, d, ev, rows, self.gate_probe, anchor=self.anchor, **keep)
        out.config = {**self.config, "rule": rule, "threshold": threshold}
        return out

    def repair_trigger(self) -> RepairTrigger:
        """The one trigger repair should use: toward the predicted target (the top class when judged clean),
        the trigger behind that class's score: its inverted trigger, or a gate-probe perturbation toward it
        that scored higher under the meta-gain rule."""
        if self.method != "clip-inspector":
            raise CIError(f"a {self.method} report's trigger pictures are not additive triggers: repair with a "
                          "CLIP-Inspector scan")
        if self.triggers is None:
            raise DataError("this report holds no triggers (load it with ScanReport.load from its folder)")
        top = self.predicted_target or self.top_class
        if top not in self.names:
            raise DataError(f"the report's top class {top!r} is not among its candidates")
        i = self.names.index(top)
        row = self.classes[i]
        if not (self.gate_probe and isinstance(get_rule(self.rule), MetaGainRule)):
            return RepairTrigger(top, self.triggers[i], "inversion")
        if self.probe_triggers is None or len(self.probe_triggers) != len(self.gate_probe.units):
            raise DataError(f"the report lists {len(self.gate_probe.units)} gate-probe units but holds "
                            f"{0 if self.probe_triggers is None else len(self.probe_triggers)} probe perturbations")
        info, j = best_trigger(row.name, row.asr, row.meta_gain, self.gate_probe, self.tests)
        return RepairTrigger(top, self.triggers[i] if j is None else self.probe_triggers[j], info["source"])

    # ---- files ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {"verdict": self.verdict, "max_score": self.max_score, "threshold": self.threshold,
               "predicted_target": self.predicted_target, "top_class": self.top_class, "gap": self.gap,
               "rule": self.rule}
        if self.method == "clip-inspector":
            out.update(fallback=self.fallback, p_value=self.p_value, fpr=self.fpr, null=self.null)
            if self.tests is not None:
                out["tests"] = self.tests
            out.update({SIDE_RULES[k]: v for k, v in self.side_rules.items()})
        out["classes"] = [c.to_dict(self.method) for c in self.classes]
        if self.gate_probe is not None:
            out["gate_probe"] = self.gate_probe.to_dict()
        if self.anchor is not None:
            out["anchor"] = self.anchor
        if self.method == "clip-inspector":
            out["warnings"] = list(self.warnings)
        out.update(method=self.method, config=self.config, runtime_s=self.runtime_s)
        return out

    @classmethod
    def from_dict(cls, d: dict, triggers: torch.Tensor | None = None,
                  probe_triggers: torch.Tensor | None = None) -> "ScanReport":
        try:
            method = d.get("method", "clip-inspector")
            known = {f.name for f in fields(ClassResult)}
            classes = [ClassResult(**{k: v for k, v in c.items() if k in known}) for c in d["classes"]]
            probe = d.get("gate_probe")
            gp = None if not probe else GateProbe(probe["eps"], probe["images"], probe.get("shut", False), [
                ProbeUnit(u["unit"], u["class"], u["asr"], u["meta_gain"], u.get("shut", False), u.get("wide", False))
                for u in probe["units"]], probe.get("wide_eps"))
            side = {k: d[v] for k, v in SIDE_RULES.items() if v in d}
            return cls(method=method, verdict=d["verdict"], max_score=d["max_score"], threshold=d["threshold"],
                       predicted_target=d["predicted_target"], top_class=d["top_class"],
                       gap=d["gap"], rule=d["rule"], classes=classes, fallback=d.get("fallback"),
                       p_value=d.get("p_value"), fpr=d.get("fpr"), null=d.get("null"), tests=d.get("tests"),
                       side_rules=side, anchor=d.get("anchor"), gate_probe=gp, warnings=list(d.get("warnings", [])), config=d.get("config", {}),
                       runtime_s=d.get("runtime_s", 0.0), triggers=triggers, probe_triggers=probe_triggers)
        except (KeyError, TypeError, IndexError) as exc:
            raise DataError(f"not a ci_toolkit scan report (missing or malformed field: {exc})") from None

    def save(self, out_dir: str | Path, html: bool = True) -> Path:
        """Write the report folder (see the module doc); returns it."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if self.triggers is not None:
            tensors = {"deltas": self.triggers.contiguous()}
            if self.preview is not None:  # a few held-out images, for the HTML's triggered examples
                tensors["preview"] = to_uint8(self.preview[:PREVIEW_IMAGES]).contiguous()
            save_file(tensors, str(out / "triggers.safetensors"))
        if self.probe_triggers is not None:
            save_file({"deltas": self.probe_triggers.contiguous()}, str(out / "gate_probe.safetensors"))
        tmp = out / "report.json.tmp"
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        tmp.replace(out / "report.json")
        if html:
            (out / "report.html").write_text(self.to_html())
        return out

    @classmethod
    def load(cls, path: str | Path) -> "ScanReport":
        """A saved report with its triggers (path: the folder or its report.json)."""
        p = Path(path)
        folder = p.parent if p.suffix == ".json" else p
        rep = folder / "report.json"
        if not rep.exists():
            raise DataError(f"no scan report at {rep}")
        try:
            d = json.loads(rep.read_text())
            tensors = load_file(str(folder / "triggers.safetensors")) if (folder / "triggers.safetensors").exists() else {}
            triggers, preview = tensors.get("deltas"), tensors.get("preview")
            probe_file = folder / "gate_probe.safetensors"
            probe = load_file(str(probe_file))["deltas"] if d.get("gate_probe") and probe_file.exists() else None
        except (json.JSONDecodeError, OSError, KeyError, SafetensorError) as exc:
            raise DataError(f"unreadable scan report in {folder}: {exc}") from None
        report = cls.from_dict(d, triggers, probe)
        report.preview = preview
        return report

    def to_html(self) -> str:
        """The report as one self-contained HTML page (figures embedded; class names escaped)."""
        return report_html(self)

__all__ = ["ScanReport", "ClassResult", "GateProbe", "ProbeUnit", "RepairTrigger"]

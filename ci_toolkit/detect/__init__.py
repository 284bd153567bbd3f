"""The audit: trigger inversion, the gate probe, decision rules and their null studies, the scan and its report,
the baselines; AMDET, the scan of a text encoder (`scan_text_encoder`)."""

from __future__ import annotations

from .amdet import MINICLIP_DIVERGENCE, AMDETConfig, AMDETReport, assimilation, attention_shares, invert_pooled, landscape, scan_text_encoder, split_shallow, token_states, valid_mask
from .calibration import (DEFAULT_FPR, WIDE_KEY, Calibration, NullStudy, backbone_key, calibration_for, scan_settings,
                          shipped_null)
from .encoder_invertune import (InverTuneConfig, InverTuneResult, StageOutputs, activation_tune, apply_trigger,
                                critical_layers, invertune, layer_differences, prediction_rise, tunable_rows, two_means)
from .inversion import LOSSES, Inversion, InversionConfig, group_losses, invert
from .null_study import CalibrateConfig, calibrate
from .report import ClassResult, GateProbe, ProbeUnit, RepairTrigger, ScanReport
from .rules import (
    ANCHORED_THRESHOLD,
    DEFAULT_RULE,
    INERT_GAIN,
    META_GAIN_THRESHOLD,
    PAPER_K,
    RULES,
    SCAN_RULES,
    SIDE_RULES,
    SOLO_RULES,
    Decision,
    Evidence,
    Rule,
    decide_evidence,
    get_rule,
    class_front,
    meta_gain_statistic,
    scan_rules,
    wide_probe_statistic,
    youden_threshold,
)
from .scanner import ANCHORED_RULE, METHODS, NO_META_RULE, ScanConfig, check_candidates, measure_gate_probe, measure_meta_gains, scan, split_pool


def decide(report: ScanReport | Evidence, rule: str | None = None, threshold: float | None = None,
           calibration: Calibration | None = None) -> Decision:
    """The verdict of `rule` (a name in RULES) on a scan report (or its Evidence); threshold overrides the
    rule's own. Without a rule, a report's own rule and threshold decide (its verdict again); Evidence is then
    decided by the default rule. The calibrated rule decides against `calibration`, for a report by default
    the null its configuration calls for. `report.redecide(rule)` gives the whole report decided that way."""
    if isinstance(report, ScanReport):
        if rule is None:
            rule, threshold = report.rule, report.config.get("threshold", threshold)
        if calibration is None and report.method == "clip-inspector":
            calibration = report.calibration()
        return decide_evidence(report.evidence(), rule, threshold, calibration)
    return decide_evidence(report, rule or DEFAULT_RULE, threshold, calibration)


__all__ = ["scan", "ScanConfig", "calibrate", "CalibrateConfig", "NullStudy", "Calibration", "calibration_for", "shipped_null", "backbone_key", "scan_settings",
           "meta_gain_statistic", "wide_probe_statistic", "class_front", "WIDE_KEY",
           "DEFAULT_FPR", "DEFAULT_RULE", "METHODS", "ScanReport", "ClassResult", "GateProbe", "ProbeUnit", "RepairTrigger",
           "decide", "Decision", "Evidence", "RULES", "SCAN_RULES", "SOLO_RULES", "scan_rules", "SIDE_RULES", "Rule", "get_rule",
           "META_GAIN_THRESHOLD", "PAPER_K", "INERT_GAIN", "invert", "Inversion", "InversionConfig",
           "youden_threshold", "group_losses", "LOSSES", "split_pool", "check_candidates", "measure_meta_gains",
           "measure_gate_probe", "scan_text_encoder", "AMDETConfig", "AMDETReport", "MINICLIP_DIVERGENCE", "invert_pooled", "landscape",
           "assimilation", "attention_shares", "token_states", "valid_mask", "split_shallow",
           "invertune", "InverTuneConfig", "InverTuneResult", "prediction_rise", "apply_trigger", "activation_tune",
           "critical_layers", "layer_differences", "tunable_rows", "two_means", "StageOutputs", "NO_META_RULE",
           "ANCHORED_RULE", "ANCHORED_THRESHOLD"]

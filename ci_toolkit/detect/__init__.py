"""The audit: trigger inversion, the gate probe, decision rules, the scan and its report, the baselines."""

from __future__ import annotations

from .inversion import LOSSES, Inversion, InversionConfig, group_losses, invert
from .report import ClassResult, GateProbe, ProbeUnit, RepairTrigger, ScanReport
from .rules import (
    INERT_GAIN,
    META_GAIN_THRESHOLD,
    PAPER_K,
    RULES,
    SCAN_RULES,
    SIDE_RULES,
    Decision,
    Evidence,
    Rule,
    decide_evidence,
    get_rule,
    scan_rules,
    youden_threshold,
)
from .scanner import METHODS, ScanConfig, check_candidates, measure_gate_probe, measure_meta_gains, scan, split_pool


def decide(report: ScanReport | Evidence, rule: str | None = None, threshold: float | None = None) -> Decision:
    """The verdict of `rule` (a name in RULES) on a scan report (or its Evidence); threshold overrides the
    rule's own. Without a rule, a report's own rule and threshold decide (its verdict again); Evidence is then
    decided by "meta-gain". `report.redecide(rule)` gives the whole report decided that way."""
    if isinstance(report, ScanReport):
        if rule is None:
            rule, threshold = report.rule, report.config.get("threshold", threshold)
        return decide_evidence(report.evidence(), rule, threshold)
    return decide_evidence(report, rule or "meta-gain", threshold)


__all__ = ["scan", "ScanConfig", "METHODS", "ScanReport", "ClassResult", "GateProbe", "ProbeUnit", "RepairTrigger",
           "decide", "Decision", "Evidence", "RULES", "SCAN_RULES", "scan_rules", "SIDE_RULES", "Rule", "get_rule",
           "META_GAIN_THRESHOLD", "PAPER_K", "INERT_GAIN", "invert", "Inversion", "InversionConfig",
           "youden_threshold", "group_losses", "LOSSES", "split_pool", "check_candidates", "measure_meta_gains",
           "measure_gate_probe"]

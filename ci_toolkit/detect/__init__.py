"""The audit: trigger inversion, the gate probe, decision rules, the scan and its report, the baselines."""

from __future__ import annotations

from .inversion import LOSSES, Inversion, InversionConfig, group_losses, invert
from .report import ClassResult, GateProbe, ProbeUnit, RepairTrigger, ScanReport
from .rules import RULES, SCAN_RULES, Decision, Evidence, decide_evidence, youden_threshold
from .scanner import METHODS, ScanConfig, check_candidates, measure_gate_probe, measure_meta_gains, scan, split_pool


def decide(report: ScanReport | Evidence, rule: str = "meta-gain", threshold: float | None = None) -> Decision:
    """The verdict of `rule` (a name in RULES) on a scan report (or its Evidence); threshold overrides the
    rule's own. `report.redecide(rule)` gives the whole report decided that way."""
    return decide_evidence(report.evidence() if isinstance(report, ScanReport) else report, rule, threshold)


__all__ = ["scan", "ScanConfig", "METHODS", "ScanReport", "ClassResult", "GateProbe", "ProbeUnit", "RepairTrigger",
           "decide", "Decision", "Evidence", "RULES", "SCAN_RULES", "invert", "Inversion", "InversionConfig",
           "youden_threshold", "group_losses", "LOSSES", "split_pool", "check_candidates", "measure_meta_gains", "measure_gate_probe"]

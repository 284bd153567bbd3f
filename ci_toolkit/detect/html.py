"""The scan report as one self-contained HTML page (plots embedded as PNG), every class name escaped.

Class names come from the delivered model's metadata, which is untrusted: they are only ever written
through html.escape, and plot labels are drawn by matplotlib (text in a PNG, never markup). Figures are
drawn on Figure objects (no pyplot state, no backend switch), so a notebook's inline plots are untouched.
"""

from __future__ import annotations

import base64
import html
import io

import torch

from ..images import as_float
from ..metrics import ssim


def figure_png(fig) -> str:
    """A matplotlib figure as a data: URL (PNG)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(**kw):
    from matplotlib.figure import Figure

    return Figure(**kw)


def score_figure(report, true_target: str | None = None):
    """Per-class score, held-out ASR and mean loss, classes sorted by score; flagged classes red, the true
    target (when known) outlined; the dashed line is the rule's threshold."""
    rows = sorted(report.classes, key=lambda r: -r.score)
    names = [r.name[:28] for r in rows]
    colours = ["tab:red" if r.flagged else "tab:blue" for r in rows]
    fig = _figure(figsize=(14, max(3, 0.22 * len(rows))))
    axes = fig.subplots(1, 3, sharey=True)
    unit = ("z" if report.fallback == "paper" or report.rule not in ("meta-gain", "calibrated")
            else "in null medians" if getattr(report, "tests", None) else "logits")
    for ax, key, title in zip(axes, ("score", "asr", "loss"),
                              (f"score ({report.rule}, {unit})", "held-out ASR (fraction)",
                               "mean inversion loss" if report.method == "clip-inspector" else "mean CE")):
        bars = ax.barh(range(len(rows)), [getattr(r, key) for r in rows], color=colours)
        if true_target is not None:
            for b, r in zip(bars, rows):
                if r.name == true_target:
                    b.set_edgecolor("k")
                    b.set_linewidth(2)
        ax.set_title(title)
    axes[0].axvline(report.threshold, color="k", ls="--", lw=1, label=f"threshold {report.threshold:.2f}")
    axes[0].legend(fontsize=7, loc="lower right")
    axes[0].set_yticks(range(len(rows)), names, fontsize=7)
    axes[0].invert_yaxis()
    fig.tight_layout()
    return fig


def trigger_figure(report, images: torch.Tensor | None = None, top: int = 3, n_images: int = 4):
    """The top classes' inverted triggers (amplified to the full range) and, when images are given, those
    images with each trigger applied."""
    order = sorted(range(len(report.classes)), key=lambda i: -report.classes[i].score)[:top]
    x = as_float(images[:n_images]) if images is not None else torch.zeros(0)
    fig = _figure(figsize=(1.6 * (len(x) + 1), 1.7 * len(order)))
    axes = fig.subplots(len(order), len(x) + 1, squeeze=False)
    for row, i in enumerate(order):
        d = report.triggers[i]
        amp = (d - d.min()) / (d.max() - d.min() + 1e-12)
        axes[row, 0].imshow(amp.permute(1, 2, 0).numpy())
        axes[row, 0].set_title(f"{report.classes[i].name[:20]}\ntrigger (amplified)", fontsize=7)
        for j in range(len(x)):
            axes[row, j + 1].imshow((x[j] + d).clamp(0, 1).permute(1, 2, 0).numpy())
        for ax in axes[row]:
            ax.axis("off")
    fig.tight_layout()
    return fig


HOW_TO_READ_BASELINE = (
    "How to read this: every candidate class got the smallest trigger this baseline could find that sends the OOD "
    "images to it; a backdoor target's trigger is unusually small. The score is its anomaly index (how far its size "
    "lies below the median, in robust standard deviations); classes above the dashed threshold are flagged.")
HOW_TO_READ = (
    "How to read this: every candidate class got a trigger inverted on unlabeled OOD images. Its held-out ASR "
    "is the fraction of unseen OOD images that trigger sends to the class; its mean loss how hard the class was "
    "to reach. Under the meta-gain rule a class's score is the best ASR x meta gain of its triggers: the logits "
    "gained THROUGH THE PROMPT LEARNER per image (a backdoor lives there; a class that is merely easy to reach "
    "gains little). Under the calibrated rule with the wide probe (the gate probe again at a wider bound), a class "
    "scores that value plus its wide-probe value, each over its median among clean models, and the dashed threshold "
    "is the clean models' cut. The model is flagged when the top score passes the dashed threshold. Next: a backdoored "
    "verdict names the predicted target (the top class; under that joint test, the class with the largest meta-gain "
    "value when it is at least its clean median, and a warning says when that is not the top class); `ci-toolkit "
    "repair MODEL --report REPORT_DIR` unlearns it with the trigger behind that class's score.")


def _trigger_cell(row) -> str:
    t = row.trigger
    if not t:
        return ""
    gain = "n/a" if t["meta_gain"] is None else f"{t['meta_gain']:.2f}"
    return f"{t['source']} (ASR {t['asr']:.2f}, gain {gain})"


def anchor_words(report) -> str:
    """What the anchored rule compared, in words (empty without an anchor)."""
    if not report.anchor:
        return ""
    return (f"Anchor: the same scan of {report.anchor['model']}, the public model this one was tuned from. Under the "
            "anchored rule a class's score is its s_t here minus its s_t there: a class the public model is itself "
            "easy to invert toward scores about 0, a class the fine-tune made reachable rises. The model is flagged "
            "when the top score passes the threshold, and that top class alone is named (a backdoor lifts classes "
            "that look like its target too). The anchor's held-out "
            "ASR per class: " + ", ".join(f"{n} {a:.2f}" for n, a in zip(report.names, report.anchor["asr"])) + ".")


def calibration_words(report) -> str:
    """The verdict's false-positive rate in words."""
    if report.p_value is None:
        if report.fallback == "meta-gain":
            return ("This verdict is not calibrated: no null study of clean models holds for this scan (the warning "
                    "says why), so how often a clean model scores this high is not known.")
        return ""
    n, p = report.null["n_models"], report.p_value
    act = "flagged" if report.backdoored else "not flagged"
    tests = getattr(report, "tests", None)
    if tests and all("scale" in t for t in tests.values()):
        above = round(p * (n + 1)) - 1  # clean models of the null scoring at least as high
        units = " and ".join(f"{name} {t['statistic']:.2f} logits over the clean median {t['scale']:.3g}"
                             for name, t in tests.items())
        clean = ("each with its own top class so scored" if report.null.get("exact")
                 else "each with its two largest values added, which may come from two classes")
        return (f"Calibrated, one joint test: a class scores its meta-gain and wide-probe values, each over its median "
                f"among {n} clean models scanned the same way, added; this model's top class scores "
                f"{report.max_score:.2f} (its largest values over all classes: {units}). "
                f"{'None' if above == 0 else above} of the {n} clean models reached that ({clean}), "
                f"so p = {p:.3f}. The rule flags a model when p <= {report.fpr:g}, which accuses at "
                f"most {report.fpr:.0%} of clean models like those of the null study; this model is {act}.")
    if tests:  # a report saved under the earlier two tests, each at fpr / 2
        return (f"Calibrated, two tests at {report.fpr / 2:g} each (an earlier version of the rule): p = {p:.3f} "
                f"(twice the smaller); this model is {act}. Decide it again for the current rule.")
    above = round(p * (n + 1)) - 1  # clean models of the null scoring at least as high
    tail = (f"none of {n} clean models" if above == 0 else f"{above} of {n} clean models")
    return (f"Calibrated: {tail} scanned the same way scored at least {report.max_score:.2f}, so p = {p:.3f}. "
            f"The rule flags a model when p <= {report.fpr:g}, which accuses at most {report.fpr:.0%} of clean "
            f"models like those of the null study; this model is {act}.")


def report_html(report) -> str:
    """The page for a ScanReport (docs/method.md explains every number)."""
    e = html.escape
    has_triggers = report.triggers is not None
    top = max(range(len(report.classes)), key=lambda i: report.classes[i].score)
    ssim_line = ""
    if has_triggers and report.preview is not None:
        x = as_float(report.preview[:64])
        ssim_line = (f"<p>SSIM between held-out images and the same images with the top class's inverted trigger: "
                     f"{ssim(x, (x + report.triggers[top]).clamp(0, 1)):.3f} (1 = identical).</p>")
    rows = "".join(
        f"<tr{' class=flag' if r.flagged else ''}><td>{e(str(r.name))}</td><td>{r.asr:.3f}</td>"
        f"<td>{r.loss:.3f}</td><td>{r.score:.2f}</td><td>{'yes' if r.flagged else ''}</td>"
        f"<td>{e(_trigger_cell(r))}</td></tr>"
        for r in sorted(report.classes, key=lambda r: -r.score))
    probe = report.gate_probe
    probe_html = "" if not probe else (
        f"<h2>Gate probe ({probe.eps * 255:.0f}/255"
        + (f", then {probe.wide_eps * 255:.0f}/255" if probe.wide_eps is not None else "") + ")</h2>"
        "<p>Each hidden unit of the meta-net opened (and shut) in "
        "turn by a universal perturbation: the class it sends held-out images to, how many, and the meta gain "
        "(logits) of that class through the prompt learner.</p><table><tr><th>bound</th><th>unit</th><th>class</th>"
        "<th>ASR</th><th>meta gain</th><th>ASR x gain</th></tr>" + "".join(
            f"<tr><td>{(probe.wide_eps if u.wide else probe.eps) * 255:.0f}/255</td>"
            f"<td>{u.unit}{' shut' if u.shut else ''}</td><td>{e(str(u.class_name))}</td>"
            f"<td>{u.asr:.3f}</td><td>{u.meta_gain:.2f}</td><td>{u.score:.2f}</td></tr>" for u in probe.units)
        + "</table>")
    target = report.predicted_target
    verdict = f"<b>{e(report.verdict)}</b>" + (f", predicted target <b>{e(str(target))}</b>" if target else "")
    if target and target != report.top_class:  # named by its meta gain, not the top score (the warning says why)
        verdict += f" (top score: {e(str(report.top_class))})"
    fallback = ("" if not report.fallback else " (not calibrated: decided by the fixed meta-gain threshold)"
                if report.fallback == "meta-gain" else f" (meta tokens inert: decided by the {e(report.fallback)} rule)")
    calibrated = calibration_words(report)
    figures = f'<h2>Per-class results</h2><img src="{figure_png(score_figure(report))}" style="max-width:100%">'
    if has_triggers:
        figures += (f'<h2>Top inverted triggers</h2><img src="{figure_png(trigger_figure(report, report.preview))}">')
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>ci_toolkit scan report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} td,th{{padding:2px 8px}}
tr.flag{{background:#fdd}} table{{border-collapse:collapse}} tr:nth-child(even){{background:#f4f4f4}}</style></head><body>
<h1>Scan report: {verdict}</h1>
{"".join(f"<p style='color:#a00'><b>Warning:</b> {e(w)}</p>" for w in report.warnings)}
<p>method {e(report.method)}, rule {e(report.rule)}{fallback}: max score {report.max_score:.2f}
against threshold {report.threshold:.2f}; top-1 minus top-2 gap {report.gap:.2f};
{len(report.classes)} candidate classes; {report.runtime_s:.0f} s.</p>
{f"<p><b>{e(calibrated)}</b></p>" if calibrated else ""}
{f"<p>{e(anchor_words(report))}</p>" if report.anchor else ""}
<p>{e(HOW_TO_READ if report.method == "clip-inspector" else HOW_TO_READ_BASELINE)}</p>
{ssim_line}
{figures}
<h2>Table</h2><p>ASR and loss are those of the class's inverted trigger; the last column names the trigger behind
the score, with its own ASR and meta gain.</p>
<table><tr><th>class</th><th>ASR</th><th>loss</th><th>score</th><th>flagged</th><th>score from</th></tr>{rows}</table>
{probe_html}
</body></html>"""


__all__ = ["report_html", "calibration_words", "score_figure", "trigger_figure", "figure_png"]

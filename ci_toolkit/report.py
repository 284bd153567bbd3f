"""HTML scan report: one self-contained file (plots embedded as PNG), every class name escaped.

Class names come from the delivered model's metadata, which is untrusted: they are only ever written
through html.escape, and plot labels are drawn by matplotlib (text in a PNG, never markup).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import torch


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def score_figure(report: dict):
    """Per-class ASR, mean loss and score, classes sorted by score; flagged classes in red."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = sorted(report["classes"], key=lambda r: -r["score"])
    names = [r["name"][:28] for r in rows]
    colours = ["tab:red" if r["flagged"] else "tab:blue" for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, max(3, 0.22 * len(rows))), sharey=True)
    rule = report.get("rule") or ""
    for ax, key, title in zip(axes, ("score", "asr", "loss"), (f"score ({rule})", "held-out ASR", "mean loss")):
        ax.barh(range(len(rows)), [r[key] for r in rows], color=colours)
        ax.set_title(title)
    axes[0].axvline(report["threshold"], color="k", ls="--", lw=1)
    axes[0].set_yticks(range(len(rows)), names, fontsize=7)
    axes[0].invert_yaxis()
    fig.tight_layout()
    return fig


def trigger_figure(report: dict, deltas: torch.Tensor, images: torch.Tensor, top: int = 3, n_images: int = 4):
    """The top reconstructed triggers (amplified to the full range) and pool images with them applied."""
    import matplotlib.pyplot as plt

    from .train import as_float

    order = sorted(range(len(report["classes"])), key=lambda i: -report["classes"][i]["score"])[:top]
    x = as_float(images[:n_images])
    fig, axes = plt.subplots(len(order), n_images + 1, figsize=(1.6 * (n_images + 1), 1.7 * len(order)), squeeze=False)
    for row, i in enumerate(order):
        d = deltas[i]
        amp = (d - d.min()) / (d.max() - d.min() + 1e-12)
        axes[row, 0].imshow(amp.permute(1, 2, 0).numpy())
        axes[row, 0].set_title(f"{report['classes'][i]['name'][:20]}\ntrigger (amplified)", fontsize=7)
        for j in range(len(x)):
            axes[row, j + 1].imshow((x[j] + d).clamp(0, 1).permute(1, 2, 0).numpy())
        for ax in axes[row]:
            ax.axis("off")
    fig.tight_layout()
    return fig


def write_html(path: str | Path, report: dict, deltas: torch.Tensor, images: torch.Tensor) -> None:
    from .metrics import ssim
    from .train import as_float

    e = html.escape
    top = max(range(len(report["classes"])), key=lambda i: report["classes"][i]["score"])
    x = as_float(images[:64])
    top_ssim = ssim(x, (x + deltas[top]).clamp(0, 1))
    rows = "".join(
        f"<tr{' class=flag' if r['flagged'] else ''}><td>{e(str(r['name']))}</td><td>{r['asr']:.3f}</td>"
        f"<td>{r['loss']:.3f}</td><td>{r['score']:.2f}</td><td>{'yes' if r['flagged'] else ''}</td></tr>"
        for r in sorted(report["classes"], key=lambda r: -r["score"])
    )
    probe = report.get("gate_probe")
    probe_html = "" if not probe else (
        f"<h2>Gate probe ({probe['eps'] * 255:.0f}/255)</h2><p>Each hidden unit of the meta-net opened (and shut) in "
        "turn by a universal perturbation: the class it sends held-out images to, how many, and the meta gain "
        "(logits) of that class through the prompt learner.</p><table><tr><th>unit</th><th>class</th><th>ASR</th>"
        "<th>meta gain</th><th>ASR x gain</th></tr>" + "".join(
            f"<tr><td>{u['unit']}{' shut' if u.get('shut') else ''}</td><td>{e(str(u['class']))}</td>"
            f"<td>{u['asr']:.3f}</td><td>{u['meta_gain']:.2f}</td>"
            f"<td>{u['asr'] * max(u['meta_gain'], 0):.2f}</td></tr>" for u in probe["units"]) + "</table>")
    target = report.get("predicted_target")
    verdict = (f"<b>{e(report['verdict'])}</b>" + (f", predicted target <b>{e(str(target))}</b>" if target else ""))
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>ci_toolkit scan report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} td,th{{padding:2px 8px}}
tr.flag{{background:#fdd}} table{{border-collapse:collapse}} tr:nth-child(even){{background:#f4f4f4}}</style></head><body>
<h1>Scan report: {verdict}</h1>
{"".join(f"<p style='color:#a00'><b>Warning:</b> {e(w)}</p>" for w in report.get("warnings", []))}
<p>method {e(report['method'])}, rule {e(str(report.get('rule', '')))}{' (meta tokens inert: decided by the paper rule, k = 2)' if report.get('fallback') == 'paper' else ''}: max score {report['max_score']:.2f}
against threshold {report['threshold']:.2f}; top-1 minus top-2 gap {report['gap']:.2f};
{len(report['classes'])} candidate classes; {report['runtime_s']:.0f} s.</p>
<p>SSIM between pool images and the same images with the top class's reconstructed trigger: {top_ssim:.3f}.</p>
<h2>Per-class results</h2><img src="{_png(score_figure(report))}" style="max-width:100%">
<h2>Top reconstructed triggers</h2><img src="{_png(trigger_figure(report, deltas, images))}">
<h2>Table</h2><table><tr><th>class</th><th>ASR</th><th>loss</th><th>score</th><th>flagged</th></tr>{rows}</table>
{probe_html}
</body></html>"""
    Path(path).write_text(doc)

"""`python -m lab bench notebooks`: run every tutorial notebook top to bottom, one at a time in a fresh kernel,
and record its wall time (what "Run All" costs a student on this machine).

Each notebook runs with its own defaults except the profile (`--profile`, default classroom, what Run All
uses) and a scratch `work_dir`; executed copies go to OUT_DIR/<notebook>.ipynb (and .html with --html).
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import ci_toolkit as ci

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"


# a cell running this long has hung (a widget message lost between kernel and client); the longest
# classroom cell takes a few minutes on a 2-core CPU
CELL_TIMEOUT_S = 1800


def bench_notebooks(out_dir: str | Path, profile: str = "classroom", only: tuple[str, ...] = (), html: bool = False,
                    figure: str | Path | None = None) -> dict:
    """Run the notebooks; with `figure`, also draw notebook 04's scans of the clean and BadCLIP course models."""
    import nbformat
    import papermill as pm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    notebooks = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    unknown = set(only) - {nb.stem for nb in notebooks}
    if unknown:
        raise ci.CIError(f"no notebooks {sorted(unknown)}; choose among {[nb.stem for nb in notebooks]}")
    rows = []
    for nb in notebooks:
        if only and nb.stem not in only:
            continue
        params = {"profile": profile}
        if "work_dir" in nb.read_text():
            params["work_dir"] = str((out / "work").resolve())  # papermill runs in notebooks/
        t0 = time.time()
        pm.execute_notebook(str(nb), str(out / nb.name), parameters=params, cwd=str(nb.parent), kernel_name="python3",
                            progress_bar=False, execution_timeout=CELL_TIMEOUT_S)
        wall = time.time() - t0
        figures = sum("image/png" in o.get("data", {}) for c in nbformat.read(out / nb.name, as_version=4).cells
                      if c.cell_type == "code" for o in c.outputs)
        rows.append({"notebook": nb.stem, "wall_s": wall, "figures": figures})
        print(f"{nb.stem}: {wall:.0f} s, {figures} figures", flush=True)
        if html:
            from nbconvert import HTMLExporter

            body, _ = HTMLExporter().from_filename(str(out / nb.name))
            (out / f"{nb.stem}.html").write_text(body)
    if figure:
        work = out / "work" / f"nb04_{profile}"
        if work.is_dir():
            shown = [n for n in sorted(p.name for p in work.iterdir())
                     if ci.course.truth(n)["attack"] in ("clean", "badclip")]
            scans_figure({n: work / n for n in shown}, figure)
    return {"profile": profile, "notebooks": rows, "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "note": "one run each, a fresh kernel per notebook; the CPU was otherwise idle only if nothing else ran"}


def scans_figure(scan_dirs: dict[str, Path], path: str | Path) -> None:
    """Side by side, the per-class scores of saved scans of course models (titled with the teacher's answer,
    the true target outlined): the README's figure, from notebook 04's scans."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * len(scan_dirs), 4.2))
    axes = fig.subplots(1, len(scan_dirs), squeeze=False)[0]
    for ax, (name, folder) in zip(axes, scan_dirs.items()):
        report, truth = ci.ScanReport.load(folder), ci.course.truth(name)
        rows = sorted(report.classes, key=lambda r: -r.score)
        bars = ax.barh(range(len(rows)), [r.score for r in rows],
                       color=["tab:red" if r.flagged else "tab:blue" for r in rows])
        for b, r in zip(bars, rows):
            if r.name == truth["target"]:
                b.set_edgecolor("k")
                b.set_linewidth(2)
        ax.axvline(report.threshold, color="k", ls="--", lw=1, label=f"threshold {report.threshold:g}")
        ax.set_yticks(range(len(rows)), [r.name[:24] for r in rows], fontsize=6)
        ax.invert_yaxis()
        if truth["attack"] == "clean":
            title = "clean model: " + ("flagged, a false positive" if report.backdoored else "judged clean")
        else:
            title = f"{truth['attack']} toward {truth['target']}: " + (
                "found" if report.predicted_target == truth["target"] else report.verdict)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("best ASR x meta gain of the class's triggers (logits)")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


__all__ = ["bench_notebooks", "scans_figure"]

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


def bench_notebooks(out_dir: str | Path, profile: str = "classroom", only: tuple[str, ...] = (), html: bool = False) -> dict:
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
            params["work_dir"] = str(out / "work")
        t0 = time.time()
        pm.execute_notebook(str(nb), str(out / nb.name), parameters=params, cwd=str(nb.parent), kernel_name="python3",
                            progress_bar=False)
        wall = time.time() - t0
        figures = sum("image/png" in o.get("data", {}) for c in nbformat.read(out / nb.name, as_version=4).cells
                      if c.cell_type == "code" for o in c.outputs)
        rows.append({"notebook": nb.stem, "wall_s": wall, "figures": figures})
        print(f"{nb.stem}: {wall:.0f} s, {figures} figures", flush=True)
        if html:
            from nbconvert import HTMLExporter

            body, _ = HTMLExporter().from_filename(str(out / nb.name))
            (out / f"{nb.stem}.html").write_text(body)
    return {"profile": profile, "notebooks": rows, "cpus": os.cpu_count(),
            "machine": platform.processor() or platform.machine(),
            "note": "one run each, a fresh kernel per notebook; the CPU was otherwise idle only if nothing else ran"}


__all__ = ["bench_notebooks"]

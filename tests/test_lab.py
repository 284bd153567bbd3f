"""The lab's command line (`python -m lab`), and the lab's imports: ci_toolkit's public faces only."""

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from lab.__main__ import build_parser, main
from lab.zoo import ZOO_PROFILES

REPO = Path(__file__).resolve().parents[1]
LAB = REPO / "lab"

# the ci_toolkit modules the lab may import from, and the names it may take from each (None: any public name);
# the subpackages and modules ci_toolkit's docstring calls public, and the CLI's helpers and process pool
PUBLIC_FACES = {
    "ci_toolkit": None, "ci_toolkit.world": None, "ci_toolkit.detect": None, "ci_toolkit.model": None,
    "ci_toolkit.analysis": None, "ci_toolkit.metrics": None, "ci_toolkit.attacks": None, "ci_toolkit.data": None,
    "ci_toolkit.course": None, "ci_toolkit.decomp": None,
    "ci_toolkit.cli": {"add_scan_options", "scan_config", "run", "attacker_folder"},
    "ci_toolkit.workers": {"process_pool"},
}
# slow imports the lab may make inside a function, the notebook runner's, which only `bench notebooks` needs,
# and Ray, the optional extra only `--executor ray` needs
DEFERRABLE = ("matplotlib", "sklearn", "scipy", "nbformat", "papermill", "nbconvert", "ray")
COMMANDS = ["zoo", "bench", "bench world", "bench attacks", "bench detect", "bench repair", "bench collapse",
            "bench gates", "bench speed", "bench notebooks", "bench executors", "bench amdet", "bench combine", "null", "course",
            "text-zoo", "bench decomp"]


# ---- the command line -------------------------------------------------------------------------------
def test_python_m_lab_help_works_from_the_repository_root():
    out = subprocess.run([sys.executable, "-m", "lab", "--help"], capture_output=True, text=True, timeout=180, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: python -m lab") and "zoo" in out.stdout and "bench" in out.stdout


@pytest.mark.parametrize("cmd", COMMANDS)
def test_each_command_prints_its_own_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*cmd.split(), "--help"])
    assert exc.value.code == 0
    assert "usage: python -m lab " + cmd in capsys.readouterr().out


def test_zoo_offers_every_zoo_profile():
    zoo_cmd = build_parser()._subparsers._group_actions[0].choices["zoo"]
    profile = next(a for a in zoo_cmd._actions if a.dest == "profile")
    assert list(profile.choices) == list(ZOO_PROFILES)


def test_bench_world_takes_no_zoo(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "world", "--out", "w.json", "--zoo", "z"])
    assert "unrecognized arguments: --zoo" in capsys.readouterr().err


def test_bench_detect_takes_the_scan_options():
    args = build_parser().parse_args(["bench", "detect", "--zoo", "z", "--out", "d.json", "--rule", "grubbs",
                                      "--probe-eps", "0", "--heldout-size", "50"])
    from ci_toolkit.cli import scan_config

    cfg = scan_config(args)
    assert (cfg.rule, cfg.probe_eps, cfg.heldout_size, cfg.method) == ("grubbs", None, 50, "clip-inspector")


@pytest.mark.parametrize("argv, says", [(["bench", "detect", "--out", "{tmp}/d.json"], "no zoo manifest"),
                                        (["bench", "repair", "--out", "{tmp}/r.json"], "no zoo manifest"),
                                        (["bench", "collapse", "--out", "{tmp}/c.json"], "no zoo manifest"),
                                        (["bench", "gates", "--out", "{tmp}/g.json"], "no zoo manifest"),
                                        (["bench", "attacks", "--out", "{tmp}/a.json"], "no zoo manifest")])
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, argv, says):
    argv = [a.format(tmp=tmp_path) for a in argv] + ["--zoo", str(tmp_path / "missing")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("python -m lab: error:") and says in err and "\n" not in err
    assert not list(tmp_path.glob("*.json"))


def test_bench_without_a_name_prints_help(capsys):
    assert main(["bench"]) == 0
    assert "usage: python -m lab bench" in capsys.readouterr().out


# ---- the lab's imports ------------------------------------------------------------------------------
def _module_of(dotted: str):
    try:
        return importlib.import_module(dotted)
    except ImportError:
        return None


def import_problems(source: str, filename: str = "<lab>") -> list[str]:
    """What in `source` reaches past ci_toolkit's public faces (PUBLIC_FACES), imports a private name, makes a
    non-deferrable import inside a function, or touches sys.path."""
    tree = ast.parse(source, filename)
    problems = []
    aliases = {}  # local name -> the ci_toolkit module it is bound to
    top_level = {id(n) for n in tree.body}

    def where(node):
        return f"{filename}:{node.lineno}"

    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top_level:
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if not all(m.split(".")[0] in DEFERRABLE for m in mods):
                problems.append(f"{where(node)}: import inside a function or block: {', '.join(mods)}")
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] != "ci_toolkit":
                    continue
                if a.name not in PUBLIC_FACES or PUBLIC_FACES[a.name] is not None:
                    problems.append(f"{where(node)}: import {a.name} (not a public face)")
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else "ci_toolkit"
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            for a in node.names:
                if a.name.startswith("_"):
                    problems.append(f"{where(node)}: from {mod or '.'} import {a.name} (a private name)")
            if node.level or mod.split(".")[0] != "ci_toolkit":
                continue
            if mod not in PUBLIC_FACES:
                problems.append(f"{where(node)}: from {mod} import ... (a leaf module, not a public face)")
                continue
            for a in node.names:
                allowed = PUBLIC_FACES[mod]
                if allowed is not None and a.name not in allowed:
                    problems.append(f"{where(node)}: from {mod} import {a.name} (not among {sorted(allowed)})")
                value = getattr(_module_of(mod), a.name, None)
                if inspect.ismodule(value) and value.__name__ not in PUBLIC_FACES:
                    problems.append(f"{where(node)}: from {mod} import {a.name} (the leaf module {value.__name__})")
                elif inspect.ismodule(value):
                    aliases[a.asname or a.name] = value.__name__
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain, base = [], node
            while isinstance(base, ast.Attribute):
                chain.insert(0, base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id == "sys" and chain[:1] == ["path"]:
                problems.append(f"{where(node)}: sys.path")
            if not isinstance(base, ast.Name) or base.id not in aliases:
                continue
            obj = _module_of(aliases[base.id])
            for part in chain:
                if part.startswith("_"):
                    problems.append(f"{where(node)}: {base.id}.{'.'.join(chain)} (a private name)")
                    break
                obj = getattr(obj, part, None)
                if not inspect.ismodule(obj):
                    break
                if obj.__name__ not in PUBLIC_FACES:
                    problems.append(f"{where(node)}: {base.id}.{'.'.join(chain)} (the leaf module {obj.__name__})")
                    break
    return sorted(set(problems))


def test_the_import_check_catches_what_it_should():
    bad = """
import sys
import ci_toolkit as ci
import ci_toolkit.images
from ci_toolkit.detect.rules import decide_evidence
from ci_toolkit.detect import rules
from ci_toolkit.model import cocoop
from ci_toolkit import _private, images
from ci_toolkit.errors import CIError
from ci_toolkit.cli import build_parser
from ci_toolkit.workers import die_with_parent
from lab.bench.detect import _subset

sys.path.insert(0, ".")
x = ci.images.as_float
y = ci._something
z = ci.detect.rules.PAPER_K


def f():
    import torch
    from matplotlib.figure import Figure
"""
    problems = "\n".join(import_problems(bad))
    for expected in (":4: import ci_toolkit.images", ":5: from ci_toolkit.detect.rules", ":6: from ci_toolkit.detect "
                     "import rules", ":7: from ci_toolkit.model import cocoop", "import _private", ":8: from "
                     "ci_toolkit import images", ":9: from ci_toolkit.errors", ":10: from ci_toolkit.cli import "
                     "build_parser", ":11: from ci_toolkit.workers import die_with_parent", "import _subset",
                     "sys.path", "ci.images.as_float", "ci._something", "ci.detect.rules.PAPER_K",
                     "inside a function or block: torch"):
        assert expected in problems, expected
    assert "matplotlib" not in problems and ":3:" not in problems
    good = ("import ci_toolkit as ci\nfrom ci_toolkit.detect import ScanReport, split_pool\n"
            "from ci_toolkit.workers import process_pool\nfrom ci_toolkit.cli import run\nx = ci.world.World\n"
            "y = ci.detect.ScanReport.load\n")
    assert import_problems(good) == []


@pytest.mark.parametrize("path", sorted(LAB.rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_the_lab_uses_only_the_public_api(path):
    assert import_problems(path.read_text(), str(path.relative_to(REPO))) == []


def test_every_lab_module_is_checked():
    names = {str(p.relative_to(LAB)) for p in LAB.rglob("*.py")}
    assert {"__init__.py", "__main__.py", "zoo.py", "bench/__init__.py", "bench/detect.py", "bench/repair.py",
            "bench/gates.py", "bench/collapse.py", "bench/attacks.py", "bench/world.py", "bench/speed.py"} <= names

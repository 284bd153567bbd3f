"""The package's shape: the public API, no import cycle, no upward or deferred internal import, no private
name imported across modules, no backend switch in library code."""

from __future__ import annotations

import ast
from pathlib import Path

import ci_toolkit as ci

PKG = Path(ci.__file__).parent
API = {"load_model", "save_model", "CoCoOp", "train", "create_attack", "list_attacks", "scan", "ScanConfig",
       "ScanReport", "decide", "Decision", "RULES", "repair", "RepairConfig", "RepairResult", "evaluate_backdoor",
       "attack_success_rate", "collapse_stats", "world"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def internal_imports(path: Path, tree: ast.Module | None = None):
    """(node, imported module, names) for every import of a ci_toolkit module in `path`."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree or ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "ci_toolkit":
                continue
            names = [a.name for a in node.names]
            if not node.module:  # `from . import world`: submodules
                for n in names:
                    yield node, f"{target}.{n}", []
            else:
                yield node, target, names
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "ci_toolkit":
                    yield node, a.name, []


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PKG.rglob("*.py")}
    edges = {}
    for mod, path in modules.items():
        out = set()
        for _, target, names in internal_imports(path):
            for n in names:  # `from .detect import scan` may name a submodule
                if f"{target}.{n}" in modules:
                    out.add(f"{target}.{n}")
            if target in modules:
                out.add(target)
        edges[mod] = out
    return edges


def test_the_public_api_is_listed():
    import importlib

    assert API <= set(ci.__all__)
    for face in ("ci_toolkit", "ci_toolkit.model", "ci_toolkit.detect", "ci_toolkit.attacks", "ci_toolkit.world",
                 "ci_toolkit.data", "ci_toolkit.analysis", "ci_toolkit.decomp", "ci_toolkit.metrics", "ci_toolkit.repairing"):
        module = importlib.import_module(face)
        for name in module.__all__:
            assert hasattr(module, name), f"{face}.{name}"


def test_no_import_cycle():
    edges, state, stack = graph(), {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_no_upward_deferred_or_private_internal_import():
    problems = []
    for path in PKG.rglob("*.py"):
        mod = module_name(path)
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        for node, target, names in internal_imports(path, tree):
            where = f"{path.relative_to(PKG.parent)}:{node.lineno}"
            if mod != target and mod.startswith(target + ".") and path.name != "__init__.py" or (
                    path.name == "__init__.py" and mod.startswith(target + ".") and mod != target):
                problems.append(f"{where}: imports its own ancestor package {target}")
            if id(node) not in top and not (mod == "ci_toolkit" and node.level == 0):
                problems.append(f"{where}: deferred import of {target}")
            problems += [f"{where}: private name {n} from {target}" for n in names
                     if n.startswith("_") and not n.endswith("__")]
    assert not problems, "\n".join(problems)


def test_no_backend_switch_in_library_code():
    for path in PKG.rglob("*.py"):
        assert "matplotlib.use(" not in path.read_text(), path


def test_lab_is_outside_the_installed_package():
    assert not (PKG / "bench").exists() and not (PKG / "zoo.py").exists()
    assert (PKG.parent / "lab").is_dir()


def test_top_level_verbs_name_their_settings_config():
    """A verb's settings dataclass is its `config` argument in every function of `ci` and `ci.course` that
    takes one (train, scan, invert, repair, calibrate, scan_text_encoder, course.scan), so a keyword learnt on
    one verb works on the next. (`ci.detect`'s lower-level steps keep `cfg`.)"""
    import inspect
    import typing

    drift = []
    for module in (ci, ci.course):
        for name in module.__all__:
            obj = getattr(module, name)
            if not inspect.isfunction(obj):
                continue
            hints = typing.get_type_hints(obj)
            settings = [p for p, h in hints.items() if p != "return"
                        and any(getattr(t, "__name__", "").endswith("Config") for t in typing.get_args(h) or (h,))]
            if settings and "config" not in settings:
                drift.append(f"{module.__name__}.{name}({', '.join(settings)})")
    assert not drift, drift

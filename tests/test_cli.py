"""The command line: help for everything, clear one-line errors, inspect on a real model folder."""

import subprocess
import sys

import pytest

import ci_toolkit as ci
from ci_toolkit.cli import build_parser, main

COMMANDS = ["demo", "train", "implant", "zoo", "info", "inspect", "import-dassl", "pretrain-miniclip", "bench"]


def test_top_level_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "ci_toolkit", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for cmd in COMMANDS:
        assert cmd in out.stdout


@pytest.mark.parametrize("cmd", COMMANDS + ["bench world", "bench attacks"])
def test_each_command_prints_its_own_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*cmd.split(), "--help"])
    assert exc.value.code == 0
    assert "usage: ci-toolkit " + cmd in capsys.readouterr().out


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ci-toolkit: error:") and "not found" in err and "\n" not in err


def test_inspect_a_saved_model(tiny_model, tmp_path, capsys):
    ci.save_cocoop(tiny_model, tmp_path / "m")
    assert main(["inspect", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert '"classes": 4' in out and '"n_ctx": 4' in out

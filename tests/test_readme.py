"""The README: its Python quick start runs as written, and it stays short."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
MAX_CHARS = 12_000  # the README is for users; measured results live in benchmarks/README.md


def test_readme_is_short():
    assert len(README.read_text()) <= MAX_CHARS


def test_quick_start_runs_as_written(tmp_path, monkeypatch, capsys):
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README.md has no ```python quick start"
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 15
    monkeypatch.chdir(tmp_path)  # it writes runs/quickstart/ relative to the working directory
    scope: dict = {}
    exec(compile(code, "README.md quick start", "exec"), scope)
    # the lesson holds: the backdoor implanted and the scan names its target (as the README says it prints)
    assert scope["report"].verdict == "backdoored" and scope["result"].attempts
    assert scope["report"].predicted_target == scope["task"].seen_names[2] == "yellow striped square"
    assert (tmp_path / "runs" / "quickstart" / "delivered" / "model.json").exists()
    out = capsys.readouterr().out  # the summary, as the README quotes it
    assert "backdoored toward 'yellow striped square'" in out and "p = " in out

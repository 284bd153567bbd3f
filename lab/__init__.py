"""The lab: model zoos and the benchmarks that write the JSON under benchmarks/.

    python -m lab zoo --profile holdout5 --out runs/zoo_holdout5 --workers 2
    python -m lab bench detect --zoo runs/zoo_holdout5 --out runs/detect_holdout5.json --workers 2

`lab.zoo` builds zoos of clean and backdoored CoCoOp models on the embedded world (the ground truth stays
in the zoo's manifest and attacker folders); `lab.bench` measures the toolkit on them; `lab.executors` runs
their units on local processes or a Ray cluster (`--executor ray`, docs/scale_out.md). The lab lives
outside the installed package and is built on ci_toolkit's public API only, like any fork would be
(tests/test_lab.py checks its imports). Run it from the repository root.
"""

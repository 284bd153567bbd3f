"""The lab's executors: units that raise are retried and then reported failed while the others finish, on
local processes and on a real local Ray cluster; a unit past its time limit is stopped (Ray)."""

import operator
import time

import pytest

from ci_toolkit.errors import CIError
from lab.executors import Executor, run_units

# 1 / 0 raises in any process; the others return their quotient
UNITS = {"bad": (1, 0), "four": (8, 2), "three": (9, 3)}


def check_one_failed(results, retries):
    by_key = {r.key: r for r in results}
    assert set(by_key) == set(UNITS)
    assert not by_key["bad"].ok and by_key["bad"].error.startswith("ZeroDivisionError")
    assert by_key["bad"].attempts == retries + 1
    assert (by_key["four"].value, by_key["three"].value) == (4.0, 3.0)
    assert all(by_key[k].ok and by_key[k].attempts == 1 and by_key[k].node for k in ("four", "three"))
    assert by_key["bad"].record()["error"] == by_key["bad"].error and "value" not in by_key["bad"].record()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_local_unit_that_raises_is_retried_then_reported_failed(workers):
    done = []
    results = run_units(operator.truediv, UNITS, Executor("local", workers=workers, retries=2), progress=False,
                        on_done=done.append)
    check_one_failed(results, retries=2)
    assert done == results  # on_done saw every unit as it ended


@pytest.mark.parametrize("kwargs, named", [
    ({"kind": "slurm"}, "slurm"), ({"timeout_s": 5}, "time limit"), ({"address": "auto"}, "ray executor"),
    ({"workers": 0}, "workers >= 1")])
def test_a_bad_executor_is_refused_with_one_line(kwargs, named):
    with pytest.raises(CIError, match=named):
        Executor(**kwargs)


def test_the_executor_says_what_it_is():
    assert repr(Executor("ray", workers=4, timeout_s=60)) == \
        "Executor(ray on 4 CPUs, 1 threads/unit, 1 retries, timeout 60 s)"
    assert Executor("local", workers=2, cpus=1).threads() == 1


def test_ray_unit_that_raises_is_retried_then_reported_failed_while_the_others_finish(ray_cluster):
    results = run_units(operator.truediv, UNITS, Executor("ray", workers=2, retries=1), progress=False)
    check_one_failed(results, retries=1)


def test_ray_unit_past_its_time_limit_is_stopped(ray_cluster):
    t0 = time.time()
    results = run_units(time.sleep, {"long": (120,), "short": (0.1,)}, Executor("ray", workers=2, timeout_s=5),
                        progress=False)
    by_key = {r.key: r for r in results}
    assert by_key["short"].ok and not by_key["long"].ok and by_key["long"].error.startswith("TimeoutError")
    assert time.time() - t0 < 60

"""Pool workers die with their parent (a killed `ci-toolkit zoo` leaves nothing running)."""

import os
import subprocess
import sys
import time

import pytest

CHILD = ("import os, sys; from ci_toolkit.workers import die_with_parent; die_with_parent(int(sys.argv[1])); "
         "print('armed', flush=True); import time; time.sleep(60)")
PARENT = f"""
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", {CHILD!r}, str(os.getpid())], stdout=subprocess.PIPE, text=True)
print(child.pid, flush=True)
print(child.stdout.readline().strip(), flush=True)  # the child asked for the signal
time.sleep(60)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_worker_is_terminated_when_its_parent_dies():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    pid = int(parent.stdout.readline())
    assert parent.stdout.readline().strip() == "armed"  # no fixed sleep: a slow import cannot race the kill
    parent.kill()
    parent.wait()
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, 9)
    pytest.fail("the worker outlived its parent")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_a_worker_orphaned_before_it_asks_exits_itself():
    code = "from ci_toolkit.workers import die_with_parent; die_with_parent(parent_pid=-1); import time; time.sleep(60)"
    child = subprocess.run([sys.executable, "-c", code], timeout=120)
    assert child.returncode == -15  # SIGTERM, sent to itself: its recorded parent is gone

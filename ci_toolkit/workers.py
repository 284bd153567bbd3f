"""Process pools for CPU-bound work split over processes (a scan's candidate groups and probe, zoo builds and scans).

Worker processes must not outlive their parent: a killed zoo build (`python -m lab zoo`) would otherwise leave its
workers training (and writing) in the background. On Linux the kernel delivers SIGTERM to a worker when
its parent dies (prctl PR_SET_PDEATHSIG); elsewhere this is a no-op.
"""

from __future__ import annotations

import sys


def die_with_parent(parent_pid: int | None = None) -> None:
    """Pool initializer: ask the kernel to terminate this worker when its parent exits (Linux only).

    parent_pid: the pid the worker was started from. A parent that died before the request was made
    (a slow import in the worker) would never send the signal, so the worker checks and exits itself.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import os
    import signal

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)  # orphaned already: do what the signal would have done


def process_pool(workers: int):
    """A spawn-context ProcessPoolExecutor whose workers die with the parent."""
    import os
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=die_with_parent,
                               initargs=(os.getpid(),))

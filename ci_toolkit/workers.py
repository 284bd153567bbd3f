"""Process pools for the CPU-bound benches (zoo builds, zoo scans).

Worker processes must not outlive their parent: a killed `ci-toolkit zoo` would otherwise leave its
workers training (and writing) in the background. On Linux the kernel delivers SIGTERM to a worker when
its parent dies (prctl PR_SET_PDEATHSIG); elsewhere this is a no-op.
"""

from __future__ import annotations

import sys


def die_with_parent() -> None:
    """Pool initializer: ask the kernel to terminate this worker when its parent exits (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


def process_pool(workers: int):
    """A spawn-context ProcessPoolExecutor whose workers die with the parent."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    return ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=die_with_parent)

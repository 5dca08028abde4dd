"""Thread counts for BLAS and numba, set together, and a description of them for provenance.

The kernel is BLAS matrix products plus numba loops; both pools must agree or a 2-core machine
is oversubscribed. ``set_threads(n)`` sets both; a grid worker calls it with its share of cores.
"""
from __future__ import annotations

import os
import platform

import numba
from threadpoolctl import threadpool_info, threadpool_limits


def set_threads(n: int | None = None) -> int:
    """Use ``n`` threads (default: all cores) for BLAS and numba in this process; returns n."""
    n = max(1, int(n or os.cpu_count() or 1))
    threadpool_limits(limits=n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    return n


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where available, else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def thread_info() -> dict:
    """CPU, core count, BLAS library/version/threads and numba threads of this process."""
    blas = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    first = blas[0] if blas else {}
    return {"cpu": cpu_name(), "cores": os.cpu_count(),
            "blas": f"{first.get('internal_api', 'unknown')} {first.get('version', '')}".strip(),
            "blas_threads": first.get("num_threads"), "numba_threads": numba.get_num_threads()}

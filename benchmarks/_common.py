"""Shared helpers of the benchmark scripts: timing and a machine line."""
from __future__ import annotations

import datetime
import os
import platform
import time

import numpy as np


def best_time(fn, *args, repeat: int = 5, min_time: float = 0.2) -> float:
    """Median seconds of one call, after a warm-up call (JIT, caches)."""
    fn(*args)
    times = []
    for _ in range(repeat):
        n, t0 = 0, time.perf_counter()
        while True:
            fn(*args)
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_time:
                break
        times.append(dt / n)
    return float(np.median(times))


def machine() -> str:
    """CPU model, cores, library versions and today's date, for BENCHMARKS.md."""
    cpu = platform.processor() or "unknown cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import numba

    return (f"{cpu}, {os.cpu_count()} cores, numpy {np.__version__}, numba {numba.__version__}, "
            f"python {platform.python_version()}, {datetime.date.today().isoformat()}")

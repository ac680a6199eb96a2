"""Peak memory of ``qviz.quantize`` per method (a benchmark, not a test; issue 12 item 9).

Each case runs in a fresh subprocess: the weight is made and the method warmed
up on a few rows (imports, numba compilation), then one full call is measured
two ways:

* traced: ``tracemalloc``'s peak over the call (numpy's and Python's
  allocations; not numba's own, which tracemalloc does not see);
* RSS: the process's high-water mark (``ru_maxrss``) minus its resident size
  just before the call, when the call raised the mark (else "<=" the gap).

Both are above the weight itself, which exists before the call. Goal: a few
times the weight at most.

    python benchmarks/bench_memory.py [--rows 4096] [--cols 4096]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from _common import machine

CASE = r"""
import json, resource, sys, tracemalloc
import numpy as np
import qviz

rows, cols, method, options = json.loads(sys.argv[1])
w = np.random.default_rng(0).standard_normal((rows, cols), dtype=np.float32)  # no float64 copy
qviz.quantize(w[:2], method, **options)  # warm-up: imports, numba

def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

before_rss, before_max = rss(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
tracemalloc.start()
qviz.quantize(w, method, **options)
traced = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
after_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"weight": w.nbytes, "traced": traced, "rss": after_max - before_rss,
                  "raised": after_max > before_max}))
"""


def measure(rows: int, cols: int, method: str, options: dict) -> dict:
    """One case in a fresh interpreter: bytes of the weight, the traced peak and the RSS peak."""
    out = subprocess.run([sys.executable, "-c", CASE, json.dumps([rows, cols, method, options])],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    args = ap.parse_args()
    cases = [
        ("nf4", {}, args.rows),
        ("nf4", {"absmax": "float16"}, args.rows),
        ("kmeans", {"bits": 8}, 32),  # k-means fits one row at a time: 32 rows as in the issue
        ("rtn", {}, args.rows),
        ("Q4_K", {}, args.rows),
    ]
    print(machine())
    print(f"peak above the weight (MB = 1e6 bytes); {args.cols} columns\n")
    print("| method | shape | weight MB | traced peak MB | RSS peak MB | traced / weight |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for method, options, rows in cases:
        m = measure(rows, args.cols, method, options)
        label = method + "".join(f" {k}={v}" for k, v in options.items())
        rss = f"{m['rss'] / 1e6:.1f}" if m["raised"] else f"<= {m['rss'] / 1e6:.1f}"
        print(f"| {label} | {rows}×{args.cols} | {m['weight'] / 1e6:.1f} | {m['traced'] / 1e6:.1f} | "
              f"{rss} | {m['traced'] / m['weight']:.2f} |", flush=True)


if __name__ == "__main__":
    main()

"""SmolLM2 -> Q4_K_M: qviz.gguf.requantize against llama.cpp's llama_model_quantize, one thread.

A benchmark, not a test (issue 13: requantize ≤ 1.0× the wall time of
``llama_model_quantize`` with one thread; peak memory ≤ 2× the largest tensor
plus the output buffer). Each side runs in a fresh subprocess, after a
warm-up run of the same recipe (imports, numba compilation; llama.cpp's
first run pays the page cache), and reports its wall time and its peak
resident memory (``ru_maxrss``) above the size just before the call. Both
re-quantize the bundled Q4_1 SmolLM2 (``allow_requantize``); numba runs with
one thread.

    python benchmarks/bench_requantize.py [--recipe Q4_K_M]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import machine

HERE = Path(__file__).resolve().parent

QVIZ = r"""
import json, resource, sys, time, warnings
import qviz
from qviz.io import gguf
src, dst, recipe = sys.argv[1:4]
gguf.requantize(src, dst, recipe=recipe, allow_requantize=True)  # warm-up
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
before = rss()
t = time.perf_counter()
gguf.requantize(src, dst, recipe=recipe, allow_requantize=True)
wall = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"wall": wall, "peak_above": max(0, peak - before)}))
"""

LLAMA = r"""
import json, resource, sys, time, ctypes
import llama_cpp
src, dst, ftype = sys.argv[1], sys.argv[2], int(sys.argv[3])
def run():
    p = llama_cpp.llama_model_quantize_default_params()
    p.nthread, p.ftype, p.allow_requantize = 1, ftype, True
    return llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(p))
run()  # warm-up
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
before = rss()
t = time.perf_counter()
rc = run()
wall = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"wall": wall, "peak_above": max(0, peak - before), "rc": rc}))
"""


def child(code: str, *args: str) -> dict:
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                         timeout=1800)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="Q4_K_M")
    args = parser.parse_args()
    import qviz
    from qviz.io import gguf

    src = str(qviz.demo.smollm2_gguf())
    with gguf.read(src) as f:
        largest = max(t.n_elements for t in f.tensors) * 4  # as float32
    plan = gguf.plan(src, args.recipe)
    with tempfile.TemporaryDirectory() as folder:
        ours = child(QVIZ, src, os.path.join(folder, "qviz.gguf"), args.recipe)
        theirs = child(LLAMA, src, os.path.join(folder, "llama.gguf"), str(plan.recipe.file_type))
    print(machine())
    print(f"SmolLM2-135M (Q4_1) -> {args.recipe}, one thread; output {plan.total_bytes / 2**20:.1f} MiB, "
          f"largest tensor as float32 {largest / 2**20:.1f} MiB")
    print(f"{'':18}{'wall s':>8}{'peak MiB':>10}")
    print(f"{'llama.cpp':18}{theirs['wall']:8.2f}{theirs['peak_above'] / 2**20:10.1f}")
    print(f"{'qviz':18}{ours['wall']:8.2f}{ours['peak_above'] / 2**20:10.1f}")
    print(f"qviz / llama.cpp wall time: {ours['wall'] / theirs['wall']:.2f}×; qviz peak / (2 × largest + "
          f"output): {ours['peak_above'] / (2 * largest + plan.total_bytes):.2f}")


if __name__ == "__main__":
    main()

"""Throughput of qviz's numba GGUF kernels next to ggml's C and gguf-py's numpy.

For every registered type with a numba twin (``registry.types()``, ``twins``
including ``"numba"``), on a random float32 matrix (4096 × 4096 unless
``--rows`` says otherwise):

* quantize, Mweights/s: ggml (``ggml_quantize_chunk``, single-threaded C,
  through ``tests/ggml_oracle.py``) and qviz with 1 and 2 numba threads, each
  without and with an importance matrix;
* dequantize, Gweights/s: ggml's ``to_float``, qviz (1 and 2 threads) and
  gguf-py's numpy ``gguf.quants.dequantize``;
* cold time: the first call of each qviz kernel in a fresh process (JIT
  compile, or loading numba's cache).

Each qviz thread count runs in its own subprocess with ``NUMBA_NUM_THREADS``
set, so the setting takes effect before numba starts. Times are medians of
``--repeats`` runs after one warm-up call.

Usage::

    python benchmarks/bench_gguf.py [--rows 1024] [--cols 4096] [--repeats 3] [--types Q4_0,Q4_K]
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # ggml_oracle

from qviz import registry  # noqa: E402
from qviz.formats.spec import FORMATS  # noqa: E402


NAN = float("nan")


def has_kernel(type_name: str) -> bool:
    """Whether the type's record lists a numba twin."""
    return "numba" in registry.quant_type(type_name).twins


def test_data(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """The benchmark matrix (rows, cols) and an imatrix (cols,) from squared activations, float32."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, cols), dtype=np.float32)
    acts = rng.standard_normal((32, cols), dtype=np.float32) * rng.uniform(0.1, 3.0, cols).astype(np.float32)
    return x, np.mean(acts * acts, axis=0).astype(np.float32)


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def first_call_seconds(fn) -> float:
    """Wall time of a first call (compile or cache load included)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def worker(types: list[str], rows: int, cols: int, repeats: int) -> dict:
    """Time the qviz kernels in this process (its NUMBA_NUM_THREADS already set)."""
    import ggml_oracle as oracle

    x, imatrix = test_data(rows, cols)
    out = {}
    for t in types:
        quantize = registry.quant_type(t).function("quantize", "numba")
        dequantize = registry.quant_type(t).function("dequantize", "numba")
        needs = registry.quant_type(t).requires_imatrix  # ggml aborts these without one: no plain timing
        packed = oracle.quantize(t, x, imatrix if needs else None)
        out[t] = {
            "cold_quantize": NAN if needs else first_call_seconds(lambda: quantize(x[:1])),
            "cold_quantize_imatrix": first_call_seconds(lambda: quantize(x[:1], imatrix)),
            "cold_dequantize": first_call_seconds(lambda: dequantize(packed[:1])),
            "quantize": NAN if needs else median_seconds(lambda: quantize(x), repeats),
            "quantize_imatrix": median_seconds(lambda: quantize(x, imatrix), repeats),
            "dequantize": median_seconds(lambda: dequantize(packed), repeats),
        }
    return out


def run_worker(threads: int, types: list[str], args) -> dict:
    """Run :func:`worker` in a subprocess with ``NUMBA_NUM_THREADS=threads``."""
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--worker", "--types", ",".join(types),
           "--rows", str(args.rows), "--cols", str(args.cols), "--repeats", str(args.repeats)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def reference_times(types: list[str], rows: int, cols: int, repeats: int) -> dict:
    """ggml's quantize / to_float and gguf-py's dequantize, in this process."""
    import ggml_oracle as oracle
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    x, imatrix = test_data(rows, cols)
    out = {}
    for t in types:
        needs = registry.quant_type(t).requires_imatrix
        packed = oracle.quantize(t, x, imatrix if needs else None)
        qtype = GGMLQuantizationType(FORMATS[t].ggml_type)
        try:
            gguf_dq = median_seconds(lambda: gguf_dequantize(packed, qtype), repeats)
        except NotImplementedError:
            gguf_dq = float("nan")
        out[t] = {
            "quantize": NAN if needs else median_seconds(lambda: oracle.quantize(t, x), repeats),
            "quantize_imatrix": median_seconds(lambda: oracle.quantize(t, x, imatrix), repeats),
            "dequantize": median_seconds(lambda: oracle.dequantize(t, packed, cols), repeats),
            "gguf_dequantize": gguf_dq,
        }
    return out


def machine_info() -> str:
    cpu = platform.processor() or "unknown"
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = ", ".join(f"{p} {importlib.metadata.version(p)}"
                         for p in ("numpy", "numba", "ggml-python", "gguf"))
    return (f"date {datetime.datetime.now().isoformat(timespec='seconds')}\n"
            f"cpu {cpu} ({os.cpu_count()} logical cores), python {platform.python_version()}\n"
            f"{versions}")


def print_tables(types, ref, one, two, n_weights) -> None:
    def mw(s):
        return n_weights / s / 1e6

    def gw(s):
        return n_weights / s / 1e9

    print("\nquantize, Mweights/s (ratio = qviz / ggml)")
    head = (f"{'type':7s} {'imatrix':7s} {'ggml':>8s} {'qviz 1T':>8s} {'qviz 2T':>8s} "
            f"{'1T/ggml':>8s} {'2T/ggml':>8s}")
    print(head)
    print("-" * len(head))
    for t in types:
        for key, label in (("quantize", "no"), ("quantize_imatrix", "yes")):
            g, a, b = mw(ref[t][key]), mw(one[t][key]), mw(two[t][key])
            print(f"{t:7s} {label:7s} {g:8.1f} {a:8.1f} {b:8.1f} {a / g:8.2f} {b / g:8.2f}")

    print("\ndequantize, Gweights/s; cold = first call in a fresh process (s, 1 thread)")
    head = (f"{'type':7s} {'ggml':>7s} {'qviz 1T':>8s} {'qviz 2T':>8s} {'gguf-py':>8s} {'1T/ggml':>8s} "
            f"{'cold q':>7s} {'cold q+im':>9s} {'cold dq':>8s}")
    print(head)
    print("-" * len(head))
    for t in types:
        g, a, b = gw(ref[t]["dequantize"]), gw(one[t]["dequantize"]), gw(two[t]["dequantize"])
        p = gw(ref[t]["gguf_dequantize"])
        print(f"{t:7s} {g:7.2f} {a:8.2f} {b:8.2f} {p:8.2f} {a / g:8.2f} "
              f"{one[t]['cold_quantize']:7.2f} {one[t]['cold_quantize_imatrix']:9.2f} "
              f"{one[t]['cold_dequantize']:8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=4096, help="a multiple of 256")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--types", default="", help="comma-separated subset, e.g. Q4_0,Q4_K")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    wanted = [t for t in args.types.split(",") if t] or list(registry.types())

    if args.worker:
        print(json.dumps(worker(wanted, args.rows, args.cols, args.repeats)))
        return

    types = []
    for t in wanted:
        if not has_kernel(t):
            print(f"skip {t}: no numba twin in its registry record")
        else:
            types.append(t)
    print(machine_info())
    print(f"matrix {args.rows} × {args.cols} float32, median of {args.repeats} after a warm-up; "
          f"ggml is single-threaded C")
    one = run_worker(1, types, args)
    two = run_worker(2, types, args)
    ref = reference_times(types, args.rows, args.cols, args.repeats)
    print_tables(types, ref, one, two, args.rows * args.cols)


if __name__ == "__main__":
    main()

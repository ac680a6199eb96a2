"""bitsandbytes' NF4/FP4 (with and without double quantization): qviz against bitsandbytes' CPU backend.

One weight (4096 × 4096 float32 by default), both sides on one thread
(``numba.set_num_threads(1)``, ``torch.set_num_threads(1)``: set again before
every bitsandbytes call, since numba's OpenMP start-up resets torch's count).
Prints seconds per call (median, after a warm-up) and the ratio
bitsandbytes / qviz: above 1 means qviz is faster. The codes are checked equal
first.

    python benchmarks/bench_bnb4.py [--rows 4096] [--cols 4096]
"""
from __future__ import annotations

import argparse

import numpy as np

from _common import best_time, machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import numba
    import torch
    import bitsandbytes
    import bitsandbytes.functional as F

    import qviz
    from qviz.formats import bnb4

    numba.set_num_threads(1)
    w = np.random.default_rng(0).standard_normal((args.rows, args.cols), dtype=np.float32)
    t = torch.from_numpy(w)
    print(machine())
    print(f"torch {torch.__version__}, bitsandbytes {bitsandbytes.__version__}, "
          f"{args.rows}×{args.cols}, one thread each")
    print(f"{'case':<18} {'bnb s':>8} {'numba s':>8} {'numpy s':>8} {'bnb/numba':>10} {'bnb/numpy':>10}")
    for quant_type in ("nf4", "fp4"):
        for dq in (False, True):
            def theirs():
                torch.set_num_threads(1)
                return F.quantize_4bit(t, blocksize=64, quant_type=quant_type, compress_statistics=dq)

            def ours(backend):
                return qviz.quantize(w, quant_type, double_quant=dq, backend=backend)

            packed, _ = theirs()
            r = ours("numba")
            assert np.array_equal(bnb4.unpack_4bit(packed.numpy(), w.size).reshape(w.shape), r.codes)
            tb = best_time(theirs, repeat=args.repeat)
            tn = best_time(lambda: ours("numba"), repeat=args.repeat)
            tp = best_time(lambda: ours("numpy"), repeat=args.repeat)
            name = f"{quant_type}{' double_quant' if dq else ''}"
            print(f"{name:<18} {tb:8.4f} {tn:8.4f} {tp:8.4f} {tb / tn:10.2f} {tb / tp:10.2f}")


if __name__ == "__main__":
    main()

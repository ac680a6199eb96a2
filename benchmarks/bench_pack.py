"""Bit-packing throughput: numba kernels vs the numpy reference (a benchmark, not a test).

Packs and unpacks a 4096×4096 matrix of int4 codes in the GPTQ and AWQ orders.
GB/s counts the bytes a call reads plus the bytes it writes (uint8 codes in,
int32 words out for pack; the reverse for unpack). Goal: numba >= 5× numpy and
>= 2 GB/s.

    python benchmarks/bench_pack.py [--rows 4096] [--cols 4096] [--bits 4]
"""
from __future__ import annotations

import argparse

import numba
import numpy as np

from _common import best_time, machine
from qviz.formats import pack as ref
from qviz.kernels.numba import pack as nb


def numpy_shift_or(codes: np.ndarray, bits: int, order: str) -> np.ndarray:
    """The fastest plain-numpy pack we know for widths dividing 32, for a fair second baseline."""
    per = 32 // bits
    c = codes.reshape(codes.shape[0], -1, per)[:, :, ref.slot_order(bits, order)].astype(np.uint32)
    return np.bitwise_or.reduce(c << (np.arange(per, dtype=np.uint32) * bits), axis=2).view(np.int32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--bits", type=int, default=4)
    args = ap.parse_args()
    codes = np.random.default_rng(0).integers(0, 2**args.bits, (args.rows, args.cols), dtype=np.uint8)
    traffic = codes.nbytes * (1 + args.bits / 8)  # codes + words
    print(machine())
    print(f"{args.rows}×{args.cols} int{args.bits} codes; GB/s = (bytes read + written) / time\n")
    print(f"{'op':7s} {'order':5s} {'numpy GB/s':>10s} {'numba 1t':>9s} {'numba 2t':>9s} "
          f"{'1t/numpy':>9s} {'2t/numpy':>9s}")
    threads = [t for t in (1, 2) if t <= numba.config.NUMBA_NUM_THREADS]
    for order in ref.ORDERS:
        words = ref.pack(codes, args.bits, order)
        for op, r_fn, n_fn, arg in (("pack", ref.pack, nb.pack, codes), ("unpack", ref.unpack, nb.unpack, words)):
            t_ref = best_time(r_fn, arg, args.bits, order, repeat=3)
            t_nb = []
            for t in threads:
                numba.set_num_threads(t)
                t_nb.append(best_time(n_fn, arg, args.bits, order))
            t_nb += [float("nan")] * (2 - len(t_nb))
            gbs = [traffic / t / 1e9 for t in (t_ref, *t_nb)]
            print(f"{op:7s} {order:5s} {gbs[0]:10.2f} {gbs[1]:9.2f} {gbs[2]:9.2f} "
                  f"{t_ref / t_nb[0]:8.1f}× {t_ref / t_nb[1]:8.1f}×")
        if 32 % args.bits == 0:
            assert np.array_equal(numpy_shift_or(codes, args.bits, order), words)
            t_vec = best_time(numpy_shift_or, codes, args.bits, order, repeat=3)
            print(f"{'pack':7s} {order:5s} vectorized numpy shift-or: {traffic / t_vec / 1e9:.2f} GB/s "
                  f"(numba 1t is {t_vec / t_nb[0]:.1f}× that)")


if __name__ == "__main__":
    main()

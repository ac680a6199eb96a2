"""HQQ against the ``hqq`` package: CPU time of the same solve, one thread each, ratios in one run.

Both sides quantize the same 4096×4096 weight with ``optimize=True`` (bits,
group size 64, axis=1) and stop at the same iteration (the results are
identical, checked here). Timings are process CPU seconds, interleaved, best
of ``--repeat``; the ratio is qviz's time over hqq's (below 1.0: qviz faster).

    python benchmarks/bench_hqq.py [--size 4096] [--bits 4 2] [--repeat 3] [--minilm]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from _common import machine


def hqq_package(w: np.ndarray, bits: int, group_size: int):
    """hqq's ``Quantizer.quantize`` + ``dequantize`` on CPU; the codes and the decoded weight."""
    import torch
    from hqq.core.quantize import Quantizer

    w_q, meta = Quantizer.quantize(torch.from_numpy(w), nbits=bits, group_size=group_size, axis=1,
                                   optimize=True, round_zero=bits == 4, bitpack=False, device="cpu")
    return w_q.numpy().astype(np.uint8).reshape(w.shape), Quantizer.dequantize(w_q, meta).numpy()


def qviz_hqq(w: np.ndarray, bits: int, group_size: int):
    from qviz.formats.hqq import quantize_hqq

    r = quantize_hqq(w, bits=bits, group_size=group_size)
    return r.codes, r.dequantize(), r.info["iterations"]


def cpu_time(fn, *args) -> tuple[float, object]:
    t0 = time.process_time()
    out = fn(*args)
    return time.process_time() - t0, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--bits", type=int, nargs="+", default=[4, 2])
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--minilm", action="store_true", help="also time MiniLM's largest layer")
    args = p.parse_args()

    import numba
    import torch

    torch.set_num_threads(1)
    numba.set_num_threads(1)
    import hqq

    print(machine())
    print(f"torch {torch.__version__}, hqq {getattr(hqq, '__version__', '?')}, one thread each, "
          f"CPU seconds, best of {args.repeat} interleaved")
    weights = {f"random {args.size}x{args.size}":
               (np.random.default_rng(0).standard_normal((args.size, args.size)) * 0.02).astype(np.float32)}
    if args.minilm:
        from qviz.io import demo

        weights["MiniLM intermediate.dense"] = demo.layer("encoder.layer.0.intermediate.dense")
    qviz_hqq(weights[next(iter(weights))][:64], 4, args.group_size)  # numba compiles (or loads its cache)
    print(f"{'weight':30s} {'bits':>4s} {'iters':>5s} {'hqq s':>8s} {'qviz s':>8s} {'ratio':>6s}  same")
    for label, w in weights.items():
        for bits in args.bits:
            t_hqq, t_qviz = [], []
            for _ in range(args.repeat):
                t, (codes_h, deq_h) = cpu_time(hqq_package, w, bits, args.group_size)
                t_hqq.append(t)
                t, (codes_q, deq_q, iters) = cpu_time(qviz_hqq, w, bits, args.group_size)
                t_qviz.append(t)
            same = np.array_equal(codes_h, codes_q) and np.array_equal(deq_h, deq_q)
            print(f"{label:30s} {bits:4d} {iters:5d} {min(t_hqq):8.2f} {min(t_qviz):8.2f} "
                  f"{min(t_qviz) / min(t_hqq):6.2f}  {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()

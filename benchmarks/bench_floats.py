"""Speed of qviz's float formats next to their owners' torch code, measured in the same run.

For every float tensor format (``"fp8"`` per tensor, channel and 128 × 128
block; ``"mxfp4"``, ``"mxfp6_e2m3"``, ``"mxfp6_e3m2"``, ``"mxfp8"`` with the
floor and rceil rules; ``"nvfp4"`` under both conventions), on one random
float32 matrix (4096 × 4096 unless ``--rows``/``--cols`` say otherwise), one
CPU thread each (``torch.set_num_threads(1)``, ``numba.set_num_threads(1)``):

* the owner: compressed-tensors' ``calculate_qparams`` + ``quantize`` (FP8,
  NVFP4's ``generate_gparam`` + ``quantize_and_pack_fp4``), torchao's
  ``to_mx`` and ``NVFP4Tensor.to_nvfp4``: codes and scales from a float32
  weight, as qviz computes them;
* qviz: ``qviz.quantize(w, name, ...)`` with the numba backend (the whole
  method: amax, scales, codes and the QuantResult).

A ratio above 1 means qviz is faster. Times are medians after a warm-up
call (``benchmarks/_common.best_time``). Usage::

    python benchmarks/bench_floats.py [--rows 4096] [--cols 4096]
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import warnings

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _common import best_time, machine  # noqa: E402


def owners(t):
    """name -> (qviz method, its options, the owner's call on tensor ``t``)."""
    import torch
    from compressed_tensors.compressors.nvfp4.helpers import quantize_and_pack_fp4
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import quantize
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    from torchao.prototype.mx_formats.constants import DTYPE_FP6_E2M3, DTYPE_FP6_E3M2
    from torchao.prototype.mx_formats.mx_tensor import to_mx
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale

    def ct_fp8(granularity):
        extra = {"block_structure": [128, 128]} if granularity == "block" else {}
        args = QuantizationArgs(num_bits=8, type="float", strategy=granularity, symmetric=True, **extra)

        def run():
            if granularity == "tensor":
                mn, mx = torch.aminmax(t)
            elif granularity == "channel":
                mn, mx = t.amin(1, keepdim=True), t.amax(1, keepdim=True)
            else:
                r, c = t.shape
                tiles = t.reshape(r // 128, 128, c // 128, 128)
                mn, mx = tiles.amin((1, 3)), tiles.amax((1, 3))
            scale, zp = calculate_qparams(mn, mx, args)
            return quantize(t, scale, zp, args, dtype=torch.float8_e4m3fn)
        return run

    def ao_mx(dtype, rule):
        return lambda: to_mx(t, dtype, 32, ScaleCalculationMode(rule))

    def ao_nvfp4():
        return NVFP4Tensor.to_nvfp4(t, per_tensor_scale=per_tensor_amax_to_scale(torch.max(torch.abs(t))))

    nv_args = QuantizationArgs(num_bits=4, type="float", strategy="tensor_group", group_size=16,
                               symmetric=True, scale_dtype=torch.float8_e4m3fn)

    def ct_nvfp4():
        gs = generate_gparam(t.min(), t.max())
        groups = t.unflatten(-1, (-1, 16))
        scale, _ = calculate_qparams(groups.amin(-1), groups.amax(-1), nv_args, global_scale=gs)
        return quantize_and_pack_fp4(t, scale, global_scale=gs, group_size=16)

    rows = {f"fp8 {g}": ("fp8", {"granularity": g}, ct_fp8(g)) for g in ("tensor", "channel", "block")}
    dtypes = {"mxfp4": torch.float4_e2m1fn_x2, "mxfp6_e2m3": DTYPE_FP6_E2M3, "mxfp6_e3m2": DTYPE_FP6_E3M2,
              "mxfp8": torch.float8_e4m3fn}
    for name, dtype in dtypes.items():
        for rule in ("floor", "rceil"):
            rows[f"{name} {rule}"] = (name, {"scale_rule": rule}, ao_mx(dtype, rule))
    rows["nvfp4 torchao"] = ("nvfp4", {}, ao_nvfp4)
    rows["nvfp4 compressed-tensors"] = ("nvfp4", {"convention": "compressed-tensors"}, ct_nvfp4)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import numba
    import torch

    import qviz

    torch.set_num_threads(1)
    numba.set_num_threads(1)
    w = np.random.default_rng(0).standard_normal((args.rows, args.cols)).astype(np.float32)
    t = torch.from_numpy(w)
    print(f"# {machine()}, torch {torch.__version__}; {args.rows} x {args.cols}, one thread each")
    print(f"{'format':28s} {'owner ms':>10s} {'qviz ms':>10s} {'ratio':>7s}")
    for label, (name, options, owner) in owners(t).items():
        t_owner = best_time(owner, repeat=3)
        t_qviz = best_time(lambda: qviz.quantize(w, name, **options), repeat=3)
        print(f"{label:28s} {t_owner * 1e3:10.1f} {t_qviz * 1e3:10.1f} {t_owner / t_qviz:7.2f}x")


if __name__ == "__main__":
    main()

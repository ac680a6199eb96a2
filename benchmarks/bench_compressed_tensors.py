"""compressed-tensors checkpoints: qviz's writer and reader vs compressed-tensors' own (a benchmark, not a test).

One 4096×4096 layer per format, quantized once by qviz; then, measured in the
same run, on one thread each (``torch.set_num_threads(1)``, ``numba.set_num_threads(1)``):

* write: ``export_compressed_tensors`` (pack + safetensors + config, a whole
  folder) vs compressed-tensors' compressor ``compress`` (from the float weight
  and the same scales) + ``safetensors.torch.save_file``;
* read: ``load_compressed_tensors`` + ``QuantResult.dequantize`` vs
  ``safetensors.torch.load_file`` + the compressor's ``decompress``.

Ratios above 1 mean qviz is faster.

    python benchmarks/bench_compressed_tensors.py [--rows 4096] [--cols 4096] [--formats w4a16 ...]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numba
import numpy as np
import torch
from _common import best_time, machine

import qviz
from qviz.io.compressed_tensors import export_compressed_tensors, load_compressed_tensors

#: name -> (qviz method and options, compressed-tensors preset, format)
CASES = {
    "w4a16": (("rtn", dict(bits=4, group_size=128, sym=True)), "W4A16", "pack-quantized"),
    "w4a16_asym": (("rtn", dict(bits=4, group_size=128)), "W4A16_ASYM", "pack-quantized"),
    "w8a16": (("rtn", dict(bits=8, group_size=128, sym=True)), "W8A16", "pack-quantized"),
    "fp8_block": (("fp8", dict(granularity="block")), "FP8_BLOCK", "float-quantized"),
    "mxfp4": (("mxfp4", {}), "MXFP4A16", "mxfp4-pack-quantized"),
    "mxfp8": (("mxfp8", {}), "MXFP8A16", "mxfp8-quantized"),
    "nvfp4": (("nvfp4", dict(convention="compressed-tensors")), "NVFP4A16", "nvfp4-pack-quantized"),
}


def ct_state(r, w: np.ndarray) -> dict:
    """The uncompressed state dict compressed-tensors compresses: weight and r's scales."""
    state = {"weight": torch.from_numpy(w)}
    if r.method == "fp8":
        state["weight_scale"] = torch.from_numpy(np.asarray(r.stored["weight_scale"], np.float32))
    elif r.method == "nvfp4":
        s = torch.from_numpy(np.asarray(r.stored["weight_scale"], np.uint8)).view(torch.float8_e4m3fn)
        state["weight_scale"] = s.float()
        state["weight_global_scale"] = torch.from_numpy(
            np.asarray(r.stored["weight_global_scale"], np.float32).reshape(1))
    else:
        state["weight_scale"] = torch.from_numpy(np.ascontiguousarray(r.scales))
        if r.zeros is not None:
            state["weight_zero_point"] = torch.from_numpy((r.zeros - (1 << (r.bits - 1))).astype(np.int8))
    return state


def main() -> None:
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization.quant_scheme import preset_name_to_scheme
    from safetensors.torch import load_file, save_file

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--formats", nargs="*", default=list(CASES))
    args = ap.parse_args()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    import compressed_tensors

    print(machine() + f", torch {torch.__version__}, compressed-tensors {compressed_tensors.__version__}")
    print(f"{args.rows}×{args.cols}, one thread each; ratio = compressed-tensors time / qviz time\n")
    print(f"{'format':11s} {'write qviz':>10s} {'write ct':>9s} {'ratio':>6s} "
          f"{'read qviz':>10s} {'read ct':>8s} {'ratio':>6s}")
    w = np.random.default_rng(0).standard_normal((args.rows, args.cols)).astype(np.float32)
    tmp = Path(tempfile.mkdtemp())
    try:
        for name in args.formats:
            (method, options), preset, fmt = CASES[name]
            r = qviz.quantize(w, method, **options)
            scheme = preset_name_to_scheme(preset, ["fc"])
            scheme.input_activations = None
            compressor = BaseCompressor.get_value_from_registry(fmt)
            state = ct_state(r, w)
            ours, theirs = tmp / f"{name}.qviz", tmp / f"{name}.ct.safetensors"

            def write_qviz():
                export_compressed_tensors({"fc": r}, ours, overwrite=True)

            def write_ct():
                out = compressor.compress(dict(state), scheme)
                save_file({f"fc.{k}": v.contiguous() for k, v in out.items()}, str(theirs))

            t_wq, t_wc = best_time(write_qviz, repeat=3), best_time(write_ct, repeat=3)

            def read_qviz():
                return load_compressed_tensors(ours)["fc"].dequantize()

            def read_ct():
                t = load_file(str(theirs))
                return compressor.decompress({k[3:]: v for k, v in t.items()}, scheme)["weight"]

            t_rq, t_rc = best_time(read_qviz, repeat=3), best_time(read_ct, repeat=3)
            print(f"{name:11s} {t_wq * 1e3:8.1f}ms {t_wc * 1e3:7.1f}ms {t_wc / t_wq:6.2f} "
                  f"{t_rq * 1e3:8.1f}ms {t_rc * 1e3:6.1f}ms {t_rc / t_rq:6.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

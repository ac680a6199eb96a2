"""``"nvfp4"``: NVIDIA's NVFP4, as torchao's ``NVFP4Tensor`` and compressed-tensors' ``nvfp4-pack-quantized`` compute it.

Every run of 16 consecutive weights of a row shares an E4M3 block scale, the
tensor shares one float32 scale, and every weight is an E2M1 (FP4) code::

    block of 16: s        1 byte, E4M3 "fn" (bias 7, max 448)
                 q[0..15] 16 × 4 bits, E2M1: sign | e e | m  (0, 0.5, 1, 1.5, 2, 3, 4, 6)
    tensor:      one float32 scale

The two owners agree on the layout and disagree on the float32 arithmetic,
so the codes and scales can differ in the last bit: ``convention`` picks one,
and each is reproduced bit for bit.

``convention="torchao"`` (torchao 0.18,
``torchao/prototype/mx_formats/nvfp4_tensor.py``: ``per_tensor_amax_to_scale``,
``nvfp4_quantize`` with ``per_tensor_scale``, ``NVFP4Tensor.dequantize``):

* ``per_tensor_scale = amax(|w|) / (448 * 6)``;
* ``s = e4m3(clamp(amax_block / 6 / per_tensor_scale, 2**-6, 448))``;
* ``code = e2m1(clamp(w * ((1 / per_tensor_scale) / s), -6, 6))`` (a
  multiplication by the combined reciprocal, as NVIDIA's kernels do);
* decode ``value(code) * (per_tensor_scale * s)``, float32.
  ``stored = {"block_scale": s bytes, "per_tensor_scale": float32 ()}``.
  An all-zero (or all below ~1e-35) weight is refused: its per-tensor scale
  is 0 or its reciprocal inf, and torchao's result is NaN.

``convention="compressed-tensors"`` (compressed-tensors 0.20,
``quantization/utils/helpers.py`` ``generate_gparam`` and
``calculate_qparams`` with ``global_scale``; ``compressors/nvfp4/helpers.py``
``quantize_and_pack_fp4``, ``pack_fp4_to_uint8``; ``forward.py``
``_dequantize``):

* ``global_scale = 448 * 6 / max(amax(|w|), float32 tiny)``, 1 where that is inf;
  torch evaluates a number over a tensor as ``(1 / t) * 2688``, so qviz does too;
* ``s = e4m3(clamp(global_scale * (amax_block / 6), -448, 448))``, and 0.125
  (E4M3's "eps") where ``s`` is 0;
* ``code = e2m1(clamp(w / (s / global_scale), -6, 6))`` (a division), a zero
  weight code 0 (the sign comes from ``torch.sign``, which is +0 for -0.0);
* decode ``value(code) * (s / global_scale)``, float32.
  ``stored = {"weight_scale": s bytes, "weight_global_scale": float32 (1,)}``.

:attr:`QuantResult.scales` is the float32 decode factor of each block, so
:meth:`QuantResult.dequantize` equals the owner's float32 decode bit for bit.
Rows must be a multiple of 16 (both owners refuse others). Values beyond
±6 after scaling are clamped and counted in ``info["saturated"]``.

ggml's GGUF type ``"NVFP4"`` (:mod:`qviz.formats.gguf_fp4`) stores the same
kind of numbers differently: 64-weight blocks of four UE4M3 sub-block scales
``ue4m3(amax / 6)`` (mantissa rounded half up, no per-tensor scale), and each
weight takes the E2M1 level of least float32 error rather than the rounded
quotient, so its codes and scales generally differ from these.

The result (what ``qviz.io.compressed_tensors`` reads): ``codes`` the E2M1
codes (uint8 0..15, bit 3 the sign), ``codebook`` the 16 E2M1 values,
``stored`` as above, ``info["fmt"] == "e2m1"``, ``info["granularity"] ==
"tensor_group"``, ``info["convention"]``.
"""
from __future__ import annotations

import numpy as np

from qviz.formats.minifloat import BACKEND_OPTION, E2M1, E4M3, encode, primitives
from qviz.registry import Method, Option, register_method
from qviz.result import QuantResult

__all__ = ["BLOCK", "CONVENTIONS", "choose_params_nvfp4", "quantize_nvfp4"]

F32 = np.float32
#: weights per NVFP4 block
BLOCK = 16
CONVENTIONS = ("torchao", "compressed-tensors")
#: 448 * 6: the largest E4M3 scale times the largest E2M1 value
RANGE = F32(448.0 * 6.0)
#: torchao's smallest block scale, torch.finfo(torch.float8_e4m3fn).tiny
E4M3_TINY = F32(2.0 ** -6)
#: compressed-tensors' replacement for a zero E4M3 scale (``_get_dtype_eps``)
E4M3_EPS = F32(0.125)


def choose_params_nvfp4(amax: np.ndarray, convention: str = "torchao") -> dict[str, np.ndarray]:
    """The owner's scales of every block: stored arrays, decode factor and the factor codes use.

    Parameters
    ----------
    amax : ndarray, shape (n_rows, n_blocks), float32
        Each block's largest ``|w|``.
    convention : {"torchao", "compressed-tensors"}

    Returns
    -------
    dict
        ``"s"``: E4M3 block scale codes, uint8 (n_rows, n_blocks);
        ``"tensor"``: the per-tensor float32 scale (torchao's
        ``per_tensor_scale``, compressed-tensors' ``global_scale``);
        ``"decode"``: float32 (n_rows, n_blocks) decode factors;
        ``"factor"``, ``"op"``: what the weights are multiplied or divided by.

    Raises
    ------
    ValueError
        torchao's convention on an all-zero or vanishing weight.
    """
    top = F32(amax.max()) if amax.size else F32(0)
    if convention == "torchao":
        pts = F32(top / RANGE)  # per_tensor_amax_to_scale
        with np.errstate(divide="ignore", over="ignore"):
            inv = F32(F32(1) / pts)
        if pts == 0 or not np.isfinite(inv):
            raise ValueError(f"nvfp4: the weight's largest |w| is {float(top):g}, so torchao's per-tensor "
                             f"scale amax/2688 = {float(pts):g} has no finite reciprocal and torchao's "
                             f"NVFP4 gives NaN; use convention='compressed-tensors' (global scale 1 for "
                             f"such a weight) or keep this layer unquantized")
        s, _ = encode(np.clip(amax / F32(6) / pts, E4M3_TINY, F32(448)).astype(F32), E4M3)
        sv = E4M3.values[s]
        return {"s": s, "tensor": pts, "decode": (pts * sv).astype(F32),
                "factor": (inv / sv).astype(F32), "op": "multiply"}
    if convention != "compressed-tensors":
        raise ValueError(f"nvfp4: convention={convention!r}; valid conventions: "
                         f"{', '.join(map(repr, CONVENTIONS))}")
    with np.errstate(divide="ignore", over="ignore"):
        # generate_gparam; torch's ``2688 / t`` is ``t.reciprocal() * 2688``: two roundings
        gs = F32(F32(F32(1) / max(top, F32(np.finfo(np.float32).tiny))) * RANGE)
    if not np.isfinite(gs):
        gs = F32(1)
    raw = (gs * (amax / F32(6))).astype(F32)
    s, _ = encode(np.clip(raw, F32(-448), F32(448)), E4M3)
    sv = E4M3.values[s]
    zero = sv == 0
    s[zero], sv = encode(np.array(E4M3_EPS), E4M3)[0], np.where(zero, E4M3_EPS, sv).astype(F32)
    decode = (sv / gs).astype(F32)
    return {"s": s, "tensor": gs, "decode": decode, "factor": decode, "op": "divide"}


def quantize_nvfp4(w: np.ndarray, *, convention: str = "torchao", backend: str = "numba") -> QuantResult:
    """NVFP4: E2M1 codes, E4M3 scales per 16 weights, a float32 scale per tensor.

    Parameters
    ----------
    w : ndarray, shape (n_rows, n_cols), float32
        ``n_cols`` a multiple of 16.
    convention : {"torchao", "compressed-tensors"}
        Whose float32 arithmetic (see the module docstring).
    backend : {"numba", "numpy"}

    Returns
    -------
    QuantResult
        ``bits=4``, ``group_size=16``; see the module docstring.

    Examples
    --------
    >>> r = quantize_nvfp4(np.linspace(-3, 3, 16, dtype=np.float32)[None])
    >>> r.stored["block_scale"], r.scales[0, 0] * 6, r.codes[0, :4]
    (array([[126]], dtype=uint8), np.float32(3.0), array([15, 15, 14, 14], dtype=uint8))
    """
    n_rows, n_cols = w.shape
    if n_cols % BLOCK:
        raise ValueError(f"nvfp4 needs rows that are a multiple of {BLOCK} (one E4M3 scale per {BLOCK} "
                         f"weights), but the rows have {n_cols} columns; torchao and compressed-tensors "
                         f"both refuse such rows: pad the input dimension with zeros to "
                         f"{-(-n_cols // BLOCK) * BLOCK} or keep this layer unquantized")
    prims = primitives(backend)
    p = choose_params_nvfp4(prims.group_amax(w, 1, BLOCK), convention)
    zero_sign = "keep" if convention == "torchao" else "positive"
    codes, saturated = prims.encode_groups(w, p["factor"], 1, BLOCK, E2M1, p["op"], zero_sign)
    if convention == "torchao":
        stored = {"block_scale": p["s"], "per_tensor_scale": np.array(p["tensor"], dtype=F32)}
    else:
        stored = {"weight_scale": p["s"], "weight_global_scale": np.array([p["tensor"]], dtype=F32)}
    return QuantResult("nvfp4", (n_rows, n_cols), 4, BLOCK, codes, p["decode"], codebook=E2M1.values,
                       stored=stored, info={"fmt": "e2m1", "granularity": "tensor_group",
                                            "convention": convention, "saturated": saturated,
                                            "backend": backend})


register_method(Method(
    "nvfp4", "nvfp4 (NVIDIA)", quantize_nvfp4,
    (Option("convention", "str", "torchao", "whose float32 arithmetic: torchao's NVFP4Tensor or "
            "compressed-tensors' nvfp4-pack-quantized", choices=CONVENTIONS, control=True),
     BACKEND_OPTION),
    exports=("compressed-tensors",), quantlinear=False))

"""``"fp8"``: FP8 weights with float32 scales, as compressed-tensors' ``float-quantized`` checkpoints hold them.

Every weight is an FP8 byte (E4M3 "fn", or E5M2; see
:mod:`qviz.formats.minifloat`) times the scale of its tile. The scale and the
codes are computed as compressed-tensors 0.20 computes them
(``quantization/utils/helpers.py`` ``calculate_qparams`` with a symmetric
``QuantizationArgs(num_bits=8, type="float")``, then
``quantization/lifecycle/forward.py`` ``quantize`` → ``_quantize``):

* ``amax`` of the tile: the largest ``|w|`` (``max(|min(w, 0)|, max(w, 0)|)``);
* ``scale = amax / fp8_max`` in float32 (448 for E4M3, 57344 for E5M2); a
  zero scale becomes float32's eps, 2**-23 (``_get_dtype_eps``);
* ``code = fp8(clamp(w / scale + 0, -fp8_max, fp8_max))``: a float32
  *division*, round to nearest even. Adding the (zero) zero point turns a
  ``-0.0`` weight into ``+0``, so a zero weight always gets code 0x00.

The owner decodes by multiplying (``_dequantize``: ``fp8.to(float32) *
scale``), so :attr:`QuantResult.scales` holds the stored scale itself and
:meth:`QuantResult.dequantize` equals compressed-tensors' decode bit for bit.
DeepSeek-V3's block checkpoints call the same factor ``weight_scale_inv``
(``w ≈ fp8 * weight_scale_inv`` per 128 × 128 tile): the ``"block"``
granularity is that layout.

Granularities, and the arrays a result holds::

    granularity  tile                 scales (decode factor)      stored["weight_scale"]  group_size
    "tensor"     the whole matrix     (1, 1)                      (1,)                    n_cols
    "channel"    one output row       (n_rows, 1)                 (n_rows, 1)             n_cols
    "block"      bh × bw (128 × 128)  (n_rows, ceil(n_cols/bw)),  (ceil(n_rows/bh),       bw
                                      a tile's value on its rows   ceil(n_cols/bw))

A matrix whose sides do not divide the block gets partial tiles at its end,
as compressed-tensors' zero padding (``maybe_pad_tensor_for_block_quant``)
gives them: padding zeros never change a tile's ``amax``; ``info["padding"]``
says how many rows and columns the owner pads.

The result (what ``qviz.io.compressed_tensors`` reads): ``codes`` the FP8
bytes (uint8 bit patterns), ``codebook`` the 256 values of the format (NaN
codes NaN, E5M2's inf codes inf; never produced), ``stored["weight_scale"]``
float32, ``info["fmt"]`` (``"e4m3"``/``"e5m2"``), ``info["granularity"]``,
``info["block"]`` and ``info["saturated"]`` (weights the clamp changed: only
rounding of ``amax / fp8_max`` can put one a hair past ``±fp8_max``).
compressed-tensors itself quantizes FP8 to E4M3 only (``calculate_range``);
``fmt="e5m2"`` applies the same rule with E5M2's max.
"""
from __future__ import annotations

import numpy as np

from qviz.formats.minifloat import BACKEND_OPTION, element_format, primitives
from qviz.registry import Method, Option, register_method
from qviz.result import QuantResult

__all__ = ["GRANULARITIES", "FORMATS", "choose_params_fp8", "quantize_fp8"]

F32 = np.float32
GRANULARITIES = ("tensor", "channel", "block")
FORMATS = ("e4m3", "e5m2")
#: what a zero scale becomes: torch.finfo(torch.float32).eps (compressed-tensors ``_get_dtype_eps``)
ZERO_SCALE = F32(np.finfo(np.float32).eps)


def check_block(block, granularity: str) -> tuple[int, int]:
    """``block`` as two positive ints, or a ValueError naming the fix."""
    try:
        bh, bw = (int(b) for b in block)
        ok = bh >= 1 and bw >= 1 and all(float(b) == int(b) for b in block)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"fp8: block={block!r}; give (rows, columns) of a tile as two positive "
                         f"integers, e.g. block=(128, 128) (DeepSeek-V3's tiles)")
    if granularity != "block" and (bh, bw) != (128, 128):
        raise ValueError(f"fp8: block={block!r} applies to granularity='block' only; "
                         f"pass granularity='block' or leave block out")
    return bh, bw


def choose_params_fp8(amax: np.ndarray, fmt: str = "e4m3") -> np.ndarray:
    """compressed-tensors' scale of each tile: ``amax / fp8_max`` in float32, 0 replaced by eps.

    Parameters
    ----------
    amax : ndarray, shape (n_tile_rows, n_tile_cols), float32
    fmt : {"e4m3", "e5m2"}

    Returns
    -------
    ndarray, shape of ``amax``, float32

    Examples
    --------
    >>> choose_params_fp8(np.array([[448.0, 0.0]], np.float32))
    array([[1.0000000e+00, 1.1920929e-07]], dtype=float32)
    """
    scale = (amax.astype(F32) / F32(element_format(fmt).max)).astype(F32)
    return np.where(scale == 0, ZERO_SCALE, scale).astype(F32)


def quantize_fp8(w: np.ndarray, *, fmt: str = "e4m3", granularity: str = "channel",
                 block=(128, 128), backend: str = "numba") -> QuantResult:
    """FP8 codes and scales, as compressed-tensors' ``float-quantized`` format computes them.

    Parameters
    ----------
    w : ndarray, shape (n_rows, n_cols), float32
    fmt : {"e4m3", "e5m2"}
        Element format (OCP E4M3 "fn", max 448; E5M2, max 57344).
    granularity : {"tensor", "channel", "block"}
        One scale for the matrix, per output row, or per ``block`` tile.
    block : (int, int)
        Rows × columns of a tile (``granularity="block"`` only).
    backend : {"numba", "numpy"}
        The fast kernels or the readable reference (same bits).

    Returns
    -------
    QuantResult
        ``method="fp8"``, ``bits=8``; see the module docstring for the arrays.

    Examples
    --------
    >>> r = quantize_fp8(np.array([[1.0, -2.0, 448.0, 0.3]], np.float32), granularity="tensor")
    >>> r.codes, r.stored["weight_scale"]
    (array([[ 56, 192, 126,  42]], dtype=uint8), array([1.], dtype=float32))
    """
    if fmt not in FORMATS:
        raise ValueError(f"fp8: fmt={fmt!r}; valid fmt values: {', '.join(map(repr, FORMATS))}")
    bh, bw = check_block(block, granularity)
    n_rows, n_cols = w.shape
    row_block, group = {"tensor": (n_rows, n_cols), "channel": (1, n_cols), "block": (bh, bw)}[granularity]
    prims = primitives(backend)
    scale = choose_params_fp8(prims.group_amax(w, row_block, group), fmt)  # (tile rows, tile cols)
    codes, saturated = prims.encode_groups(w, scale, row_block, group, fmt, "divide", "positive")
    info = {"fmt": fmt, "granularity": granularity, "saturated": saturated, "backend": backend}
    if granularity == "tensor":
        scales, stored = scale.reshape(1, 1), scale.reshape(1)
    elif granularity == "channel":
        scales = stored = scale.reshape(n_rows, 1)
    else:
        scales, stored = np.repeat(scale, bh, axis=0)[:n_rows], scale
        info["block"] = (bh, bw)
        info["padding"] = (-n_rows % bh, -n_cols % bw)
    return QuantResult("fp8", (n_rows, n_cols), 8, group, codes, np.ascontiguousarray(scales),
                       codebook=element_format(fmt).values,
                       stored={"weight_scale": np.ascontiguousarray(stored)}, info=info)


register_method(Method(
    "fp8", "fp8 (E4M3/E5M2)", quantize_fp8,
    (Option("fmt", "str", "e4m3", "element format: E4M3 (max 448) or E5M2 (max 57344)",
            choices=FORMATS, control=True),
     Option("granularity", "str", "channel", "one float32 scale per tensor, per output row or per tile",
            choices=GRANULARITIES, control=True),
     Option("block", "any", (128, 128), "rows × columns of a tile, for granularity='block'"),
     BACKEND_OPTION),
    exports=("compressed-tensors",), quantlinear=False))

"""Compiled twins of :mod:`qviz.formats.ggml_search` and the rounding helpers.

Importing this module teaches numba the plain-Python functions of
``formats/rounding.py`` and ``formats/ggml_search.py``
(``numba.extending.register_jitable``), so any ``@njit`` kernel can call
``ggml_search.make_qx_quants`` or ``rounding.nearest_int`` directly: numba
compiles the very code the numpy reference runs. The module also exports
``@njit`` dispatchers of the same names for calling a search from Python
(tests, notebooks).

``error_model="numpy"`` gives C's IEEE division (x/0 is inf or nan instead
of a Python ``ZeroDivisionError``); it changes no result that ggml defines.
No fastmath: contraction or reassociation would change bytes.

numba's cache keys a kernel on its own file only: after editing
``ggml_search.py`` or ``rounding.py``, delete the stale cache
(``find qviz -name '*.nbi' -delete``) or the kernels keep the old code.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload, register_jitable

from qviz.formats import ggml_search, rounding
from qviz.formats.rounding import FP16_TABLE

#: the jit options of every qviz format kernel that calls these helpers.
JIT_OPTIONS = {"cache": True, "error_model": "numpy"}

_ROUNDING = ("nearest_int", "round_away", "fp16_value", "fp16_round")
_SEARCH = ("max_by_abs", "_add_lx_l2", "_qx_weight", "_min_weight", "make_qx_quants", "make_q3_quants",
           "make_qkx2_quants", "make_qkx3_quants", "make_qp_quants",
           "best_index_int8", "make_iq4nl_quants")


@intrinsic
def _float32_bits(typingctx, x):
    """Reinterpret a float32's bytes as uint32 (C's memcpy/union)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.uint32(types.float32), codegen


@overload(rounding.fp16_bits, jit_options={"error_model": "numpy"})
def _fp16_bits_integer(x):
    """Compiled :func:`rounding.fp16_bits`: the same IEEE round-to-nearest-even, on the bits.

    ``frexp`` costs 10–20 ns a call in compiled code; these integer steps cost
    well under one, which is what plain Q4_0/Q4_1 quantization spends its time on.
    Bit layout of the float32 input: sign 31 | exponent 30..23 (bias 127) |
    mantissa 22..0; fp16 keeps exponent bias 15 and the top 10 mantissa bits.
    """
    def impl(x):
        w = np.int64(_float32_bits(np.float32(x)))
        sign = (w >> 16) & 0x8000
        e = (w >> 23) & 0xFF
        m = w & 0x7FFFFF
        if e == 0xFF:  # inf or NaN
            return sign | (0x7E00 if m else 0x7C00)
        if e >= 143:  # >= 2**16: beyond the largest fp16 (65504) after rounding
            return sign | 0x7C00
        if e >= 113:  # a normal fp16: drop 13 mantissa bits, round half to even
            half = ((e - 112) << 10) | (m >> 13)
            rest = m & 0x1FFF
            if rest > 0x1000 or (rest == 0x1000 and (half & 1)):
                half += 1  # a carry into the exponent is IEEE's rounding up, to inf too
            return sign | half
        if e < 102:  # below 2**-25: rounds to zero
            return sign
        m |= 0x800000  # a subnormal fp16: units of 2**-24
        shift = 126 - e
        half = m >> shift
        rest = m & ((1 << shift) - 1)
        halfway = 1 << (shift - 1)
        if rest > halfway or (rest == halfway and (half & 1)):
            half += 1
        return sign | half
    return impl


for _name in _ROUNDING:
    register_jitable(error_model="numpy")(getattr(rounding, _name))
for _name in _SEARCH:
    register_jitable(error_model="numpy")(getattr(ggml_search, _name))

nearest_int = njit(**JIT_OPTIONS)(rounding.nearest_int)
round_away = njit(**JIT_OPTIONS)(rounding.round_away)


@njit(**JIT_OPTIONS)
def fp16_bits(x):
    """Compiled :func:`qviz.formats.rounding.fp16_bits` (the integer overload)."""
    return rounding.fp16_bits(x)


fp16_value = njit(**JIT_OPTIONS)(rounding.fp16_value)


@njit(**JIT_OPTIONS)
def read_fp16(b, off):
    """float32 value of the little-endian fp16 field at ``b[off:off+2]`` (uint8), from
    :data:`~qviz.formats.rounding.FP16_TABLE`: the value the references read, NaN payloads included."""
    return FP16_TABLE[np.int64(b[off]) | (np.int64(b[off + 1]) << 8)]


@njit(**JIT_OPTIONS)
def write_fp16(b, off, bits):
    """Store the fp16 bit pattern ``bits`` as the little-endian field ``b[off:off+2]`` (uint8)."""
    b[off] = bits & 0xFF
    b[off + 1] = bits >> 8
make_qx_quants = njit(**JIT_OPTIONS)(ggml_search.make_qx_quants)
make_q3_quants = njit(**JIT_OPTIONS)(ggml_search.make_q3_quants)
make_qkx2_quants = njit(**JIT_OPTIONS)(ggml_search.make_qkx2_quants)
make_qkx3_quants = njit(**JIT_OPTIONS)(ggml_search.make_qkx3_quants)
make_qp_quants = njit(**JIT_OPTIONS)(ggml_search.make_qp_quants)
best_index_int8 = njit(**JIT_OPTIONS)(ggml_search.best_index_int8)
make_iq4nl_quants = njit(**JIT_OPTIONS)(ggml_search.make_iq4nl_quants)

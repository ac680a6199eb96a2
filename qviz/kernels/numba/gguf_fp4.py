"""Numba twins of :mod:`qviz.formats.gguf_fp4`: MXFP4 and NVFP4.

Same public names as the reference, same bytes (and the same arrays from
``unpack_<type>``). Rows run in parallel (``prange``); the bit maps of the
packed fields are drawn in the reference module.

Two rewrites of ggml's loops keep the results and drop most of the work:

* ``amax``: ggml scans ``amax < fabsf(v)`` from 0, skipping NaN. The kernels
  take the max of the integer bit patterns ``bits & 0x7FFFFFFF`` (which order
  like the magnitudes), a NaN's replaced by 0, so LLVM vectorizes the scan.
* ``best_index_mxfp4`` scans all 16 levels with float32 errors. For
  ``x >= 0`` a negative level's error ``m*d + x`` is never below the positive
  one's, and for ``x < 0`` the positive levels are never below level 0's
  ``|x|``, while the negative levels' errors are exactly the positive levels'
  errors of ``|x|`` (negation is exact). So the code is the first nearest of
  the eight levels ``0, 1, 2, 3, 4, 6, 8, 12`` to ``|x|``, plus 8 when ``x``
  is negative and that index is not 0 (ggml's first zero wins ties). A NaN
  gives 0, as in ggml.

``floorf(log2f(amax))`` is the exponent of ``amax`` plus one past the
reference's per-binade threshold (:data:`qviz.formats.gguf_fp4.LOG2F_UP`), so
no logarithm is taken.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from qviz.formats.blocks import describe_twins
from qviz.formats.gguf_fp4 import E8M0_HALF, KVALUES_MXFP4, LOG2F_UP, QK_NVFP4, QK_NVFP4_SUB, UE4M3_HALF
from qviz.formats.spec import FORMATS, QK
from qviz.kernels.numba.buffers import twins
from qviz.kernels.numba.search import JIT_OPTIONS

F32 = np.float32

MXFP4_SIZE = FORMATS["MXFP4"].type_size  # 17: e 1, qs 16
NVFP4_SIZE = FORMATS["NVFP4"].type_size  # 36: d 4, qs 32
N_SUB = QK_NVFP4 // QK_NVFP4_SUB  # 4 scales per NVFP4 block

INF_BITS = 0x7F800000
#: the eight non-negative levels, doubled, in code order
POSITIVE_LEVELS = KVALUES_MXFP4[:8].astype(F32)
KVALUES = KVALUES_MXFP4.astype(F32)


@njit(inline="always", **JIT_OPTIONS)
def _amax_bits(xg):
    """Bits of ggml's ``amax`` of ``xg`` (its largest ``|x|``, NaN skipped), as int32."""
    top = np.int32(0)
    for j in range(xg.shape[0]):
        a = F32(xg[j]).view(np.int32) & np.int32(0x7FFFFFFF)
        top = max(top, a if a <= INF_BITS else np.int32(0))
    return top


@njit(**JIT_OPTIONS)
def _e8m0(abits, log2f_up):
    """MXFP4's ``e`` from the bits of ``amax``: ``(uint8_t)(floorf(log2f(amax)) + 125)``, 0 for 0 and inf."""
    if abits == 0 or abits >= INF_BITS:
        return 0
    k = (abits >> 23) - 127
    if k == -127:  # subnormal: the top mantissa bit
        k = -150
        m = abits
        while m:
            m >>= 1
            k += 1
    if abits >= log2f_up[k + 149]:
        k += 1
    return (k + 125) & 0xFF


@njit(**JIT_OPTIONS)
def _ue4m3(x):
    """ggml-impl.h ``ggml_fp32_to_ue4m3`` of float32 ``x``."""
    if not x > 0:
        return 0
    if x > 448:
        x = F32(448.0)
    bits = np.int64(F32(x).view(np.int32))
    ue_exp = ((bits >> 23) & 0xFF) - 127 + 7
    if ue_exp <= 0:
        man = np.int64(x * F32(512.0) + F32(0.5))  # float32 sum, C's truncating (int)
        if man > 7:
            man = 7
        return 0 if man < 1 else man
    if ue_exp >= 15:
        return 0x7E
    man = ((bits >> 20) & 0x7) + ((bits >> 19) & 1)
    if man > 7:
        man = 0
        ue_exp += 1
        if ue_exp >= 15:
            return 0x7E
    return (ue_exp << 3) | man


@njit(inline="always", **JIT_OPTIONS)
def _codes(xg, d, levels, lv, q):
    """``best_index_mxfp4(x, d)`` of every weight of ``xg`` into ``q`` (uint8, same length); ``lv`` (8,) is work."""
    for i in range(8):
        lv[i] = levels[i] * d  # exact products
    for j in range(xg.shape[0]):
        x = xg[j]
        a = abs(x)
        best = 0
        best_err = a  # level 0
        for i in range(1, 8):
            err = abs(lv[i] - a)
            if err < best_err:
                best = i
                best_err = err
        neg = (F32(x).view(np.int32) < 0) and best != 0
        q[j] = best + 8 if neg else best


@njit(parallel=True, **JIT_OPTIONS)
def _quantize_mxfp4(x, imatrix, out, levels, table, log2f_up):
    """MXFP4 rows into ``out``; ``imatrix`` is ignored, as in ggml."""
    n_rows, n_cols = x.shape
    n_blocks = n_cols // QK
    for r in prange(n_rows):
        xr = x[r].reshape(n_blocks, QK)
        blocks = out[r].reshape(n_blocks, MXFP4_SIZE)
        q = np.empty(QK, dtype=np.uint8)
        lv = np.empty(8, dtype=F32)
        for b in range(n_blocks):
            xb = xr[b]
            e = _e8m0(_amax_bits(xb), log2f_up)
            _codes(xb, table[e], levels, lv, q)
            o = blocks[b]
            o[0] = e
            for j in range(QK // 2):
                o[1 + j] = q[j] | (q[j + QK // 2] << 4)


@njit(parallel=True, **JIT_OPTIONS)
def _quantize_nvfp4(x, imatrix, out, levels, table):
    """NVFP4 rows into ``out``; ``imatrix`` is ignored, as in ggml."""
    n_rows, n_cols = x.shape
    n_groups = n_cols // QK_NVFP4_SUB
    for r in prange(n_rows):
        xr = x[r].reshape(n_groups, QK_NVFP4_SUB)
        blocks = out[r].reshape(n_groups // N_SUB, NVFP4_SIZE)
        q = np.empty(QK_NVFP4_SUB, dtype=np.uint8)
        lv = np.empty(8, dtype=F32)
        for g in range(n_groups):
            xg = xr[g]
            ue = _ue4m3(np.int32(_amax_bits(xg)).view(F32) / F32(6.0))
            _codes(xg, table[ue], levels, lv, q)
            o = blocks[g // N_SUB]
            s = g % N_SUB
            o[s] = ue
            for j in range(QK_NVFP4_SUB // 2):
                o[N_SUB + s * (QK_NVFP4_SUB // 2) + j] = q[j] | (q[j + QK_NVFP4_SUB // 2] << 4)


@njit(parallel=True, **JIT_OPTIONS)
def _dequantize(packed, out, kvalues, table, group, n_scales):
    """``kvalues_mxfp4[q] * scale``: MXFP4 (group 32, one scale) and NVFP4 (group 16, four)."""
    n_rows, n_cols = out.shape
    size = n_scales + n_scales * group // 2
    n_blocks = n_cols // (n_scales * group)
    for r in prange(n_rows):
        blocks = packed[r].reshape(n_blocks, size)
        y = out[r].reshape(n_blocks * n_scales, group)
        for b in range(n_blocks):
            p = blocks[b]
            for s in range(n_scales):
                d = table[p[s]]
                qs = p[n_scales + s * (group // 2):n_scales + (s + 1) * (group // 2)]
                yg = y[b * n_scales + s]
                for j in range(qs.shape[0]):
                    yg[j] = kvalues[qs[j] & 0xF] * d
                    yg[j + group // 2] = kvalues[qs[j] >> 4] * d


@njit(parallel=True, **JIT_OPTIONS)
def _unpack(packed, codes, scales, mins, table, group, n_scales):
    """Codes (the nibbles) and decoded scales of MXFP4 / NVFP4 rows; ``mins`` is None."""
    n_rows, n_cols = codes.shape
    size = n_scales + n_scales * group // 2
    n_blocks = n_cols // (n_scales * group)
    for r in prange(n_rows):
        blocks = packed[r].reshape(n_blocks, size)
        c = codes[r].reshape(n_blocks * n_scales, group)
        for b in range(n_blocks):
            p = blocks[b]
            for s in range(n_scales):
                scales[r, b * n_scales + s] = table[p[s]]
                qs = p[n_scales + s * (group // 2):n_scales + (s + 1) * (group // 2)]
                cg = c[b * n_scales + s]
                for j in range(qs.shape[0]):
                    cg[j] = qs[j] & 0xF
                    cg[j + group // 2] = qs[j] >> 4


# ---------------------------------------------------------- public names

quantize_mxfp4, dequantize_mxfp4, unpack_mxfp4 = twins(
    "MXFP4", (_quantize_mxfp4, POSITIVE_LEVELS, E8M0_HALF, LOG2F_UP),
    (_dequantize, KVALUES, E8M0_HALF, QK, 1), (_unpack, E8M0_HALF, QK, 1), codebook=KVALUES)
quantize_nvfp4, dequantize_nvfp4, unpack_nvfp4 = twins(
    "NVFP4", (_quantize_nvfp4, POSITIVE_LEVELS, UE4M3_HALF),
    (_dequantize, KVALUES, UE4M3_HALF, QK_NVFP4_SUB, N_SUB), (_unpack, UE4M3_HALF, QK_NVFP4_SUB, N_SUB),
    codebook=KVALUES)

describe_twins(__name__, "numba")

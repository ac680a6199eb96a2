"""Numba twins of :mod:`qviz.formats.gguf_low_bit`: TQ1_0, TQ2_0, Q1_0.

Same public names as the reference, same bytes (and the same arrays from
``unpack_<type>``). Rows run in parallel (``prange``); each row walks its
blocks with a work array allocated once per row. The bit maps of the packed
fields are drawn in the reference module. ``imatrix`` is ignored, as ggml
ignores it.

The ternary types' ``amax`` is ggml's ``MAX(amax, fabsf(v))`` scan. Without
fastmath LLVM keeps a float max reduction scalar; the integer max of the
``|x|`` bit patterns (which order like the magnitudes) vectorizes and is the
same value unless the block holds a NaN (a pattern above inf's), in which
case the scan runs as ggml writes it. Decoding reads each byte's trits from
a table (:data:`TQ1_0_TRITS`, :data:`TQ1_0_LEVELS`), the reference's formula
evaluated for all 256 byte values.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from qviz.formats.blocks import describe_twins
from qviz.formats.gguf_low_bit import CODEBOOK_Q1_0, CODEBOOK_TQ1_0, CODEBOOK_TQ2_0, POW3, QK1_0, QUIET_BIT
from qviz.formats.spec import FORMATS, QK_K
from qviz.kernels.numba.buffers import twins
from qviz.kernels.numba.search import JIT_OPTIONS, fp16_bits, read_fp16, round_away, write_fp16

F32 = np.float32

TQ1_0_SIZE = FORMATS["TQ1_0"].type_size  # 54: qs 48, qh 4, d 2
TQ2_0_SIZE = FORMATS["TQ2_0"].type_size  # 66: qs 64, d 2
Q1_0_SIZE = FORMATS["Q1_0"].type_size  # 18: d 2, qs 16

INF_BITS = 0x7F800000
TWO_31 = F32(2.0 ** 31)
QUIET_NAN = int(QUIET_BIT)

#: trit n of a TQ1_0 byte b at [b, n]: ``(uint8(b * 3**n) * 3) >> 8`` (ggml's ``dequantize_row_tq1_0``)
TQ1_0_TRITS = ((((np.arange(256)[:, None] * POW3[None, :]) & 0xFF) * 3) >> 8).astype(np.uint8)
#: ``t - 1`` of the same trits, float32: what a trit decodes to in units of ``d``
TQ1_0_LEVELS = TQ1_0_TRITS.astype(F32) - F32(1)


# ------------------------------------------------------------ block rules

@njit(inline="always", **JIT_OPTIONS)
def _ggml_amax(xb):
    """ggml's ``amax = MAX(amax, fabsf(v))`` over ``xb`` from 0 (a NaN resets it: see the reference)."""
    top = 0
    for j in range(xb.shape[0]):
        top = max(top, F32(xb[j]).view(np.int32) & 0x7FFFFFFF)
    if top <= INF_BITS:
        return np.int32(top).view(F32)
    amax = F32(0.0)
    for j in range(xb.shape[0]):
        a = abs(xb[j])
        amax = amax if amax > a else a
    return amax


@njit(inline="always", **JIT_OPTIONS)
def _ternary_codes(xb, mask, t):
    """t (256,) int32: ``((int)lroundf(x * id) + 1) & mask`` with ``d = amax``; returns d.

    Beyond 2**31, and for inf/NaN, ``lroundf`` gives ``LONG_MIN``, low bits 0.
    """
    d = _ggml_amax(xb)
    inv = F32(1.0) / d if d != 0 else F32(0.0)
    for j in range(xb.shape[0]):
        v = xb[j] * inv
        r = np.int64(round_away(v)) if abs(v) < TWO_31 else np.int64(0)
        t[j] = (r + 1) & mask
    return d


@njit(inline="always", **JIT_OPTIONS)
def _tq1_0_bytes(t, start, width, k, o):
    """Write the ``width`` bytes ``o`` of trits ``t[start + n*width + m]``, ``k`` trits each (ggml's wraps)."""
    for m in range(width):
        q = 0
        for n in range(k):
            q = (q * 3 + t[start + n * width + m]) & 0xFF
        if k == 4:
            q = (q * 3) & 0xFF
        o[m] = ((q * 256 + 242) // 243) & 0xFF


# ---------------------------------------------------------------- kernels

@njit(parallel=True, **JIT_OPTIONS)
def _quantize_tq1_0(x, imatrix, out):
    """TQ1_0 rows into ``out`` (ggml's ``quantize_row_tq1_0_ref``)."""
    n_rows, n_cols = x.shape
    for r in prange(n_rows):
        t = np.empty(QK_K, dtype=np.int32)
        for b in range(n_cols // QK_K):
            o = out[r, b * TQ1_0_SIZE:(b + 1) * TQ1_0_SIZE]
            d = _ternary_codes(x[r, b * QK_K:(b + 1) * QK_K], 0xFF, t)
            _tq1_0_bytes(t, 0, 32, 5, o[0:32])
            _tq1_0_bytes(t, 160, 16, 5, o[32:48])
            _tq1_0_bytes(t, 240, 4, 4, o[48:52])
            write_fp16(o, 52, fp16_bits(d))


@njit(parallel=True, **JIT_OPTIONS)
def _quantize_tq2_0(x, imatrix, out):
    """TQ2_0 rows into ``out`` (ggml's ``quantize_row_tq2_0_ref``)."""
    n_rows, n_cols = x.shape
    for r in prange(n_rows):
        t = np.empty(QK_K, dtype=np.int32)
        for b in range(n_cols // QK_K):
            o = out[r, b * TQ2_0_SIZE:(b + 1) * TQ2_0_SIZE]
            d = _ternary_codes(x[r, b * QK_K:(b + 1) * QK_K], 3, t)
            for s in range(2):
                ts = t[128 * s:128 * (s + 1)]
                qs = o[32 * s:32 * (s + 1)]
                for m in range(qs.shape[0]):
                    qs[m] = ts[m] | (ts[m + 32] << 2) | (ts[m + 64] << 4) | (ts[m + 96] << 6)
            write_fp16(o, 64, fp16_bits(d))


@njit(parallel=True, **JIT_OPTIONS)
def _quantize_q1_0(x, imatrix, out):
    """Q1_0 rows into ``out`` (ggml's ``quantize_row_q1_0_ref``): ``d = sum|x| / 128``, in order."""
    n_rows, n_cols = x.shape
    for r in prange(n_rows):
        for b in range(n_cols // QK1_0):
            xb = x[r, b * QK1_0:(b + 1) * QK1_0]
            o = out[r, b * Q1_0_SIZE:(b + 1) * Q1_0_SIZE]
            s = F32(0.0)
            for j in range(QK1_0):
                s += abs(xb[j])
            write_fp16(o, 0, fp16_bits(s / F32(QK1_0)))
            for k in range(QK1_0 // 8):
                byte = 0
                for i in range(8):
                    byte |= (1 if xb[8 * k + i] >= 0 else 0) << i
                o[2 + k] = byte


@njit(inline="always", **JIT_OPTIONS)
def _tq1_0_codes(p, codes):
    """The 256 trits of the TQ1_0 block ``p`` (54,) into ``codes`` (256,)."""
    for m in range(32):
        for n in range(5):
            codes[m + 32 * n] = TQ1_0_TRITS[p[m], n]
    for m in range(16):
        for n in range(5):
            codes[160 + m + 16 * n] = TQ1_0_TRITS[p[32 + m], n]
    for j in range(4):
        for n in range(4):
            codes[240 + j + 4 * n] = TQ1_0_TRITS[p[48 + j], n]


@njit(inline="always", **JIT_OPTIONS)
def _tq2_0_codes(p, codes):
    """The 256 2-bit fields of the TQ2_0 block ``p`` (66,) into ``codes`` (256,)."""
    for s in range(2):
        for n in range(4):
            for m in range(32):
                codes[128 * s + 32 * n + m] = (p[32 * s + m] >> (2 * n)) & 3


@njit(inline="always", **JIT_OPTIONS)
def _tq1_0_values(qs, k, d, y):
    """``y[m + n*width] = (t_n - 1) * d`` for the trits n < k of the bytes ``qs`` (width,)."""
    width = qs.shape[0]
    for n in range(k):
        yn = y[n * width:(n + 1) * width]
        for m in range(width):
            yn[m] = TQ1_0_LEVELS[qs[m], n] * d


@njit(parallel=True, **JIT_OPTIONS)
def _dequantize_tq1_0(packed, out):
    """TQ1_0: ``(t - 1) * d``, the trits read from :data:`TQ1_0_LEVELS`."""
    n_rows, n_cols = out.shape
    for r in prange(n_rows):
        for b in range(n_cols // QK_K):
            p = packed[r, b * TQ1_0_SIZE:(b + 1) * TQ1_0_SIZE]
            y = out[r, b * QK_K:(b + 1) * QK_K]
            d = read_fp16(p, TQ1_0_SIZE - 2)
            _tq1_0_values(p[0:32], 5, d, y[0:160])
            _tq1_0_values(p[32:48], 5, d, y[160:240])
            _tq1_0_values(p[48:52], 4, d, y[240:256])


@njit(parallel=True, **JIT_OPTIONS)
def _dequantize_tq2_0(packed, out):
    """TQ2_0: ``(q - 1) * d``; the inner loop runs to a slice's length, so it vectorizes."""
    n_rows, n_cols = out.shape
    for r in prange(n_rows):
        for b in range(n_cols // QK_K):
            p = packed[r, b * TQ2_0_SIZE:(b + 1) * TQ2_0_SIZE]
            y = out[r, b * QK_K:(b + 1) * QK_K]
            d = read_fp16(p, TQ2_0_SIZE - 2)
            for s in range(2):
                qs = p[32 * s:32 * (s + 1)]
                for n in range(4):
                    yn = y[128 * s + 32 * n:128 * s + 32 * (n + 1)]
                    for m in range(qs.shape[0]):
                        yn[m] = F32(np.int32((qs[m] >> (2 * n)) & 3) - 1) * d


@njit(parallel=True, **JIT_OPTIONS)
def _dequantize_q1_0(packed, out):
    """Q1_0: ``bit ? d : -d``."""
    n_rows, n_cols = out.shape
    for r in prange(n_rows):
        for b in range(n_cols // QK1_0):
            p = packed[r, b * Q1_0_SIZE:(b + 1) * Q1_0_SIZE]
            d = read_fp16(p, 0)
            if d != d:  # ggml's fp16 -> fp32 conversion quiets a NaN
                d = np.int32(F32(d).view(np.int32) | QUIET_NAN).view(F32)
            y = out[r, b * QK1_0:(b + 1) * QK1_0]
            for j in range(QK1_0):
                y[j] = d if (p[2 + j // 8] >> (j % 8)) & 1 else -d


# ---------------------------------------------------------------- unpack

@njit(parallel=True, **JIT_OPTIONS)
def _unpack_ternary(packed, codes, d, mins, size):
    """TQ1_0 (size 54) and TQ2_0 (size 66) rows -> codes (n_rows, n_cols) and d (n_rows, n_blocks)."""
    for r in prange(codes.shape[0]):
        for b in range(d.shape[1]):
            p = packed[r, b * size:(b + 1) * size]
            c = codes[r, b * QK_K:(b + 1) * QK_K]
            if size == TQ1_0_SIZE:
                _tq1_0_codes(p, c)
            else:
                _tq2_0_codes(p, c)
            d[r, b] = read_fp16(p, size - 2)


@njit(parallel=True, **JIT_OPTIONS)
def _unpack_q1_0(packed, codes, d, mins):
    """Q1_0 rows -> codes (the bits, n_rows × n_cols) and d (n_rows, n_blocks)."""
    for r in prange(codes.shape[0]):
        for b in range(d.shape[1]):
            p = packed[r, b * Q1_0_SIZE:(b + 1) * Q1_0_SIZE]
            c = codes[r, b * QK1_0:(b + 1) * QK1_0]
            d[r, b] = read_fp16(p, 0)
            for j in range(QK1_0):
                c[j] = (p[2 + j // 8] >> (j % 8)) & 1


# ---------------------------------------------------------- public names

quantize_tq1_0, dequantize_tq1_0, unpack_tq1_0 = twins(
    "TQ1_0", _quantize_tq1_0, _dequantize_tq1_0,
    (_unpack_ternary, TQ1_0_SIZE), codebook=CODEBOOK_TQ1_0)
quantize_tq2_0, dequantize_tq2_0, unpack_tq2_0 = twins(
    "TQ2_0", _quantize_tq2_0, _dequantize_tq2_0,
    (_unpack_ternary, TQ2_0_SIZE), codebook=CODEBOOK_TQ2_0)
quantize_q1_0, dequantize_q1_0, unpack_q1_0 = twins("Q1_0", _quantize_q1_0, _dequantize_q1_0, _unpack_q1_0,
                                                    codebook=CODEBOOK_Q1_0)

describe_twins(__name__, "numba")

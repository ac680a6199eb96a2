"""Numba twins of :mod:`qviz.formats.gguf_k_sym`: Q3_K and Q6_K.

Same public names and results, bit for bit, as the numpy reference (also
``unpack_<type>``, which returns the reference's very arrays): rows run
in parallel (``prange``) and each row works in scratch arrays allocated once.
The sub-block searches (ggml's ``make_q3_quants`` / ``make_qx_quants``) run
for ``BLOCKS_PER_GROUP`` super-blocks at once, one sub-block per lane
(:mod:`qviz.kernels.numba.lanes_sym`); Q3_K's search over the 16 scales with
an imatrix is the shared ``make_qx_quants`` of :mod:`qviz.formats.ggml_search`,
compiled (:mod:`qviz.kernels.numba.search` registers it with numba). The bit
layouts are drawn in the reference module; the loops here follow them byte
by byte.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from qviz.formats.blocks import describe_twins
from qviz.formats.ggml_search import GROUP_MAX_EPS, make_qx_quants
from qviz.formats.rounding import fp16_bits, fp16_value, nearest_int
from qviz.formats.spec import FORMATS, QK_K
from qviz.kernels.numba.buffers import twins
from qviz.kernels.numba.lanes_sym import LANES, from_lanes, q3_quants_lanes, qx_quants_lanes, to_lanes
from qviz.kernels.numba.search import JIT_OPTIONS, read_fp16, write_fp16  # also teaches numba the functions above

SUB = 16  # weights per sub-block
N_SUB = QK_K // SUB  # sub-blocks per super-block
BLOCKS_PER_GROUP = LANES // N_SUB  # super-blocks whose sub-block searches run together
Q3_K_SIZE = FORMATS["Q3_K"].type_size  # 110: hmask 32, qs 64, scales 12, d 2
Q6_K_SIZE = FORMATS["Q6_K"].type_size  # 210: ql 128, qh 64, scales 16, d 2


@njit(**JIT_OPTIONS)
def _fp16(bits):
    """float32 value of a fp16 bit pattern (exact: every fp16 is a float32)."""
    return np.float32(fp16_value(bits))


@njit(**JIT_OPTIONS)
def _max_by_abs(scales):
    """The first entry of largest magnitude, with its sign (0 if all are 0)."""
    best = np.float32(0.0)
    best_abs = np.float32(0.0)
    for j in range(scales.shape[0]):
        if abs(scales[j]) > best_abs:
            best_abs = abs(scales[j])
            best = scales[j]
    return best


@njit(**JIT_OPTIONS)
def _requantize(x, d, sc, zero, L, nmax):
    """Round each sub-block again on its step ``d * (sc[j] - zero)``; step 0 keeps the search's codes.

    x : float32 (256,); sc : int8 (16,); L : int8 (256,), written in place.
    Clamping to [-nmax, nmax - 1] before rounding equals clamping after (the
    bounds are integers) and compiles without branches.
    """
    lo = np.float32(-nmax)
    hi = np.float32(nmax - 1)
    for j in range(N_SUB):
        step = d * np.float32(np.int64(sc[j]) - zero)
        if step == 0:
            continue
        for i in range(SUB * j, SUB * (j + 1)):
            L[i] = nearest_int(min(max(x[i] / step, lo), hi)) + nmax


# ---------------------------------------------------------------- Q3_K

@njit(**JIT_OPTIONS)
def _pack_q3_k(L, sc, d_bits, out):
    """Codes L (256,) 0..7, stored scales sc (16,) 0..63 and d -> one block_q3_K ``out`` (110,)."""
    for l in range(32):  # hmask: bit b of byte l is the high bit of weight 32*b + l
        byte = 0
        for b in range(8):
            byte |= (L[32 * b + l] >> 2) << b
        out[l] = byte
    for h in range(2):  # qs: four 2-bit codes 32 apart per byte
        for l in range(32):
            w = 128 * h + l
            out[32 + 32 * h + l] = ((L[w] & 3) | ((L[w + 32] & 3) << 2)
                                    | ((L[w + 64] & 3) << 4) | ((L[w + 96] & 3) << 6))
    for k in range(8):  # scales: low nibbles of sc[k] and sc[k + 8]
        out[96 + k] = (sc[k] & 0xF) | ((sc[k + 8] & 0xF) << 4)
    for k in range(4):  # scales: top two bits of sc[k], sc[k + 4], sc[k + 8], sc[k + 12]
        out[104 + k] = ((sc[k] >> 4) | ((sc[k + 4] >> 4) << 2)
                        | ((sc[k + 8] >> 4) << 4) | ((sc[k + 12] >> 4) << 6))
    write_fp16(out, 108, d_bits)


@njit(**JIT_OPTIONS)
def _q3_k_weights(x, qw, weight):
    """The ``_impl`` weights of one super-block: ``qw * sqrt(sigma2 + x**2)``, ``sigma2 = 2*mean(x**2)``.

    x, qw, weight : float32 (256,); weight is written.
    """
    sumx2 = np.float32(0.0)
    for i in range(QK_K):
        sumx2 += x[i] * x[i]
    sigma2 = np.float32(2.0) * sumx2 / np.float32(QK_K)
    for i in range(QK_K):
        weight[i] = qw[i] * np.sqrt(sigma2 + x[i] * x[i])


@njit(**JIT_OPTIONS)
def _q3_k_ref_scales(scales, sc):
    """quantize_row_q3_K_ref's 6-bit scales sc (16,) from the sub-block scales (16,); returns d's bits."""
    max_scale = _max_by_abs(scales)
    if max_scale == 0:
        sc[:] = 0
        return 0
    iscale = np.float32(-32.0) / max_scale
    for j in range(N_SUB):
        sc[j] = max(-32, min(31, nearest_int(iscale * scales[j]))) + 32
    return fp16_bits(np.float32(1.0) / iscale)


@njit(parallel=True, **JIT_OPTIONS)
def _quantize_q3_k(x, imatrix, out):
    """Rows x (n_rows, n_cols) float32 -> out (n_rows, n_blocks * 110) uint8.

    The sub-block searches of ``BLOCKS_PER_GROUP`` super-blocks run as lanes:
    ``make_q3_quants`` (quantize_row_q3_K_ref), or with an imatrix
    ``make_qx_quants`` (quantize_row_q3_K_impl).
    """
    n_blocks = x.shape[1] // QK_K
    for r in prange(x.shape[0]):
        xr = x[r]
        L = np.zeros(QK_K, dtype=np.int8)
        sc = np.zeros(N_SUB, dtype=np.int8)
        weight = np.zeros(BLOCKS_PER_GROUP * QK_K, dtype=np.float32)
        xt = np.zeros((SUB, LANES), dtype=np.float32)  # (16, LANES): sub-block j of block i0 + g in lane 16*g + j
        wt = np.zeros((SUB, LANES), dtype=np.float32)
        Lt = np.zeros((SUB, LANES), dtype=np.int8)
        scale_t = np.zeros(LANES, dtype=np.float32)
        sw = np.zeros(LANES, dtype=np.float32)
        work = np.zeros((8, LANES), dtype=np.float32)
        moved = np.zeros(LANES, dtype=np.bool_)
        for i0 in range(0, n_blocks, BLOCKS_PER_GROUP):
            n_here = min(BLOCKS_PER_GROUP, n_blocks - i0)
            to_lanes(xr, QK_K * i0, SUB, N_SUB * n_here, xt)
            if imatrix is not None:
                for g in range(n_here):
                    k = QK_K * (i0 + g)
                    _q3_k_weights(xr[k:k + QK_K], imatrix[k:k + QK_K], weight[QK_K * g:])
                to_lanes(weight, 0, SUB, N_SUB * n_here, wt)
                qx_quants_lanes(4, xt, wt, Lt, scale_t, work)
                for l in range(LANES):
                    s = np.float32(0.0)
                    for i in range(SUB):
                        s += wt[i, l]
                    sw[l] = s
            else:
                q3_quants_lanes(4, xt, Lt, scale_t, work, moved)
            for g in range(n_here):
                k = QK_K * (i0 + g)
                from_lanes(Lt, N_SUB * g, N_SUB, L)
                if imatrix is not None:
                    d_bits = fp16_bits(make_qx_quants(N_SUB, 32, scale_t[N_SUB * g:], sc, 1, sw[N_SUB * g:]))
                else:
                    d_bits = _q3_k_ref_scales(scale_t[N_SUB * g:N_SUB * (g + 1)], sc)
                _requantize(xr[k:k + QK_K], _fp16(d_bits), sc, 32, L, 4)
                _pack_q3_k(L, sc, d_bits, out[r, Q3_K_SIZE * (i0 + g):Q3_K_SIZE * (i0 + g + 1)])


@njit(parallel=True, **JIT_OPTIONS)
def _dequantize_q3_k(packed, y):
    """packed (n_rows, n_blocks * 110) uint8 -> y (n_rows, n_blocks * 256) float32."""
    n_blocks = y.shape[1] // QK_K
    for r in prange(packed.shape[0]):
        for i in range(n_blocks):
            b = packed[r, Q3_K_SIZE * i:Q3_K_SIZE * (i + 1)]
            yb = y[r, QK_K * i:QK_K * (i + 1)]
            d = _fp16(np.int64(b[108]) | (np.int64(b[109]) << 8))
            for j in range(N_SUB):
                lo = (np.int64(b[96 + j % 8]) >> (4 * (j // 8))) & 0xF
                hi = (np.int64(b[104 + j % 4]) >> (2 * (j // 4))) & 3
                dl = d * np.float32((lo | (hi << 4)) - 32)
                qs = b[32 + 32 * (j // 8):]  # the 32 qs bytes of this half
                shift = 2 * ((j % 8) // 2)  # which 2-bit slot of a qs byte
                bit = j // 2  # which hmask bit
                for w in range(SUB * j, SUB * (j + 1)):
                    l = w % 32
                    q = ((np.int64(qs[l]) >> shift) & 3) | (((np.int64(b[l]) >> bit) & 1) << 2)
                    yb[w] = dl * np.float32(q - 4)


# ---------------------------------------------------------------- Q6_K

@njit(**JIT_OPTIONS)
def _pack_q6_k(L, sc, d_bits, out):
    """Codes L (256,) 0..63, int8 scales sc (16,) and d -> one block_q6_K ``out`` (210,)."""
    for h in range(2):
        for l in range(32):
            w = 128 * h + l
            out[64 * h + l] = (L[w] & 0xF) | ((L[w + 64] & 0xF) << 4)
            out[64 * h + 32 + l] = (L[w + 32] & 0xF) | ((L[w + 96] & 0xF) << 4)
            out[128 + 32 * h + l] = ((L[w] >> 4) | ((L[w + 32] >> 4) << 2)
                                     | ((L[w + 64] >> 4) << 4) | ((L[w + 96] >> 4) << 6))
    for j in range(N_SUB):
        out[192 + j] = np.uint8(sc[j] & 0xFF)
    write_fp16(out, 208, d_bits)


@njit(**JIT_OPTIONS)
def _q6_k_block(x, scales, L, sc, out):
    """Finish one super-block x (256,) from its sub-block scales (16,) and codes L (256,) into ``out`` (210,).

    sc : int8 (16,) scratch. ggml quantize_row_q6_K_ref / _impl after the
    sub-block searches: 8-bit scales of the largest scale, requantize, pack.
    """
    max_scale = _max_by_abs(scales)
    if abs(max_scale) < GROUP_MAX_EPS:
        out[:] = 0
        return
    iscale = np.float32(-128.0) / max_scale
    d_bits = fp16_bits(np.float32(1.0) / iscale)
    for j in range(N_SUB):
        sc[j] = min(127, nearest_int(iscale * scales[j]))
    _requantize(x, _fp16(d_bits), sc, 0, L, 32)
    _pack_q6_k(L, sc, d_bits, out)


@njit(parallel=True, **JIT_OPTIONS)
def _quantize_q6_k(x, imatrix, out):
    """Rows x (n_rows, n_cols) float32 -> out (n_rows, n_blocks * 210) uint8.

    The sub-block searches of ``BLOCKS_PER_GROUP`` super-blocks run as lanes.
    Without an imatrix ggml weighs the error by ``x*x``, computed here once.
    """
    n_blocks = x.shape[1] // QK_K
    for r in prange(x.shape[0]):
        xr = x[r]
        L = np.zeros(QK_K, dtype=np.int8)
        sc = np.zeros(N_SUB, dtype=np.int8)
        xt = np.zeros((SUB, LANES), dtype=np.float32)  # (16, LANES): sub-block j of block i0 + g in lane 16*g + j
        wt = np.zeros((SUB, LANES), dtype=np.float32)
        Lt = np.zeros((SUB, LANES), dtype=np.int8)
        scale_t = np.zeros(LANES, dtype=np.float32)
        work = np.zeros((8, LANES), dtype=np.float32)
        for i0 in range(0, n_blocks, BLOCKS_PER_GROUP):
            n_here = min(BLOCKS_PER_GROUP, n_blocks - i0)
            to_lanes(xr, QK_K * i0, SUB, N_SUB * n_here, xt)
            if imatrix is not None:
                to_lanes(imatrix, QK_K * i0, SUB, N_SUB * n_here, wt)
            else:
                for i in range(SUB):
                    for l in range(LANES):
                        wt[i, l] = xt[i, l] * xt[i, l]
            qx_quants_lanes(32, xt, wt, Lt, scale_t, work)
            for g in range(n_here):
                k = QK_K * (i0 + g)
                from_lanes(Lt, N_SUB * g, N_SUB, L)
                _q6_k_block(xr[k:k + QK_K], scale_t[N_SUB * g:N_SUB * (g + 1)], L, sc,
                            out[r, Q6_K_SIZE * (i0 + g):Q6_K_SIZE * (i0 + g + 1)])


@njit(parallel=True, **JIT_OPTIONS)
def _dequantize_q6_k(packed, y):
    """packed (n_rows, n_blocks * 210) uint8 -> y (n_rows, n_blocks * 256) float32.

    ggml's loop order: each 128-weight half reads ql byte l, ql byte l + 32
    and qh byte l once for four weights, 32 apart, writing four contiguous
    runs; each 16-weight run has one scale, so the scales are loaded outside
    the inner loop, which LLVM then vectorizes.
    """
    n_blocks = y.shape[1] // QK_K
    for r in prange(packed.shape[0]):
        for i in range(n_blocks):
            b = packed[r, Q6_K_SIZE * i:Q6_K_SIZE * (i + 1)]
            yb = y[r, QK_K * i:QK_K * (i + 1)]
            d = _fp16(np.int64(b[208]) | (np.int64(b[209]) << 8))
            for h in range(2):
                ql = b[64 * h:64 * (h + 1)]
                qh = b[128 + 32 * h:128 + 32 * (h + 1)]
                yh = yb[128 * h:128 * (h + 1)]
                for half in range(2):  # weights l in [16*half, 16*half + 16) of each 32-run
                    sc = 192 + 8 * h + half  # scales of the runs at 0, 32, 64, 96: sc, sc+2, sc+4, sc+6
                    s0 = d * np.float32(np.int8(b[sc]))
                    s1 = d * np.float32(np.int8(b[sc + 2]))
                    s2 = d * np.float32(np.int8(b[sc + 4]))
                    s3 = d * np.float32(np.int8(b[sc + 6]))
                    for l in range(16 * half, 16 * half + 16):
                        lo = np.int32(ql[l])
                        lo2 = np.int32(ql[l + 32])
                        hi = np.int32(qh[l])
                        yh[l] = s0 * np.float32(((lo & 0xF) | ((hi & 3) << 4)) - 32)
                        yh[l + 32] = s1 * np.float32(((lo2 & 0xF) | (((hi >> 2) & 3) << 4)) - 32)
                        yh[l + 64] = s2 * np.float32(((lo >> 4) | (((hi >> 4) & 3) << 4)) - 32)
                        yh[l + 96] = s3 * np.float32(((lo2 >> 4) | (((hi >> 6) & 3) << 4)) - 32)


# ---------------------------------------------------------------- unpack
#
# Blocks are addressed through slices, so every index is a small non-negative
# sum of loop variables and LLVM vectorizes the loops over ``l`` (32 steps of
# four stores; a loop with fewer stores gets unrolled instead).

@njit(parallel=True, **JIT_OPTIONS)
def _unpack_q3_k(packed, codes, scales, mins):
    """packed (n_rows, n_blocks * 110) uint8 -> codes (n_rows, n_blocks * 256) uint8 0..7
    and scales (n_rows, n_blocks * 16) float32 ``d * (sc - 32)``, both written; ``mins`` is None."""
    n_blocks = packed.shape[1] // Q3_K_SIZE
    for r in prange(packed.shape[0]):
        for i in range(n_blocks):
            b = packed[r, Q3_K_SIZE * i:Q3_K_SIZE * (i + 1)]
            c = codes[r, QK_K * i:QK_K * (i + 1)]
            d = read_fp16(b, 108)
            for j in range(N_SUB):
                lo = (np.int64(b[96 + j % 8]) >> (4 * (j // 8))) & 0xF
                hi = (np.int64(b[104 + j % 4]) >> (2 * (j // 4))) & 3
                scales[r, N_SUB * i + j] = d * np.float32((lo | (hi << 4)) - 32)
            for h in range(2):  # codes 128*h + 32*k + l: qs[32*h + l] bits 2k+1..2k, hmask[l] bit 4h+k
                for l in range(32):
                    q = b[32 + 32 * h + l]
                    hm = b[l] >> (4 * h)
                    for k in range(4):
                        c[128 * h + 32 * k + l] = ((q >> (2 * k)) & 3) | (((hm >> k) & 1) << 2)


@njit(parallel=True, **JIT_OPTIONS)
def _unpack_q6_k(packed, codes, scales, mins):
    """packed (n_rows, n_blocks * 210) uint8 -> codes (n_rows, n_blocks * 256) uint8 0..63
    and scales (n_rows, n_blocks * 16) float32 ``d * sc``, both written; ``mins`` is None."""
    n_blocks = packed.shape[1] // Q6_K_SIZE
    for r in prange(packed.shape[0]):
        for i in range(n_blocks):
            b = packed[r, Q6_K_SIZE * i:Q6_K_SIZE * (i + 1)]
            c = codes[r, QK_K * i:QK_K * (i + 1)]
            d = read_fp16(b, 208)
            for j in range(N_SUB):
                scales[r, N_SUB * i + j] = d * np.float32(np.int8(b[192 + j]))
            for h in range(2):  # codes 128*h + 32*k + l (bit maps above)
                for l in range(32):
                    lo = b[64 * h + l]
                    lo2 = b[64 * h + 32 + l]
                    hi = b[128 + 32 * h + l]
                    c[128 * h + l] = (lo & 0xF) | ((hi & 3) << 4)
                    c[128 * h + 32 + l] = (lo2 & 0xF) | (((hi >> 2) & 3) << 4)
                    c[128 * h + 64 + l] = (lo >> 4) | (((hi >> 4) & 3) << 4)
                    c[128 * h + 96 + l] = (lo2 >> 4) | ((hi >> 6) << 4)


# ---------------------------------------------------------------- public

quantize_q3_k, dequantize_q3_k, unpack_q3_k = twins("Q3_K", _quantize_q3_k, _dequantize_q3_k, _unpack_q3_k)
quantize_q6_k, dequantize_q6_k, unpack_q6_k = twins("Q6_K", _quantize_q6_k, _dequantize_q6_k, _unpack_q6_k)

describe_twins(__name__, "numba")

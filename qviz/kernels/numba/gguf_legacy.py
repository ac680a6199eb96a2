"""Numba twins of :mod:`qviz.formats.gguf_legacy`: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL.

Same public names as the reference, same bytes (and the same arrays from
``unpack_<type>``). Rows run in parallel
(``prange``); each row walks its 32-weight blocks with work arrays allocated
once per row. The scale searches are the reference's own functions from
:mod:`qviz.formats.ggml_search`, compiled (see :mod:`qviz.kernels.numba.search`),
except IQ4_NL's, which searches ``LANES`` blocks of a row in lock-step
(:mod:`qviz.kernels.numba.lanes_sym`). The bit maps of the packed fields are
drawn in the reference module.

A kernel takes ``imatrix`` as an array or None; numba compiles a separate
version for None, with the ``_impl`` branch pruned.

Speed of the ``_ref`` paths (no imatrix): the quantize kernels view a row as
(n_blocks, 32) blocks, so a block loop runs to a slice's length, which LLVM
cannot see, and vectorizes (a loop of constant length 32 is unrolled to
scalar code first; see :func:`_dequantize_q8_0`). The block helpers are
``inline="always"``: called, each would take its arrays with atomic reference
counting and stay out of LLVM's sight.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from qviz.formats.blocks import describe_twins
from qviz.formats.gguf_legacy import KVALUES_IQ4NL
from qviz.formats.spec import FORMATS, QK
from qviz.kernels.numba.buffers import twins
from qviz.kernels.numba.lanes_sym import (LANES, block_weights_lanes, iq4nl_codes_lanes,
                                          iq4nl_quants_lanes, to_lanes)
from qviz.kernels.numba.search import (JIT_OPTIONS, fp16_bits, make_qkx3_quants, make_qx_quants, read_fp16,
                                       round_away, write_fp16)

F32 = np.float32

Q4_0_SIZE = FORMATS["Q4_0"].type_size  # 18: d 2, qs 16
Q4_1_SIZE = FORMATS["Q4_1"].type_size  # 20: d 2, m 2, qs 16
Q5_0_SIZE = FORMATS["Q5_0"].type_size  # 22: d 2, qh 4, qs 16
Q5_1_SIZE = FORMATS["Q5_1"].type_size  # 24: d 2, m 2, qh 4, qs 16
Q8_0_SIZE = FORMATS["Q8_0"].type_size  # 34: d 2, qs 32
IQ4_NL_SIZE = FORMATS["IQ4_NL"].type_size  # 18: d 2, qs 16


# ---------------------------------------------------------------- fields

@njit(inline="always", **JIT_OPTIONS)
def _put_nibbles(qs, L):
    """qs (16,): byte j holds the low 4 bits of L[j] and, above them, of L[j+16]."""
    for j in range(qs.shape[0]):
        qs[j] = (L[j] & 0xF) | ((L[j + 16] & 0xF) << 4)


@njit(inline="always", **JIT_OPTIONS)
def _put_high_bits(qh, L):
    """qh (4,): bit j of the little-endian word is bit 4 of L[j], j < 32.

    The word is OR-reduced over the codes ``L[:32]`` (a slice, so the loop
    vectorizes), then stored byte by byte.
    """
    word = np.uint32(0)
    codes = L[:qh.shape[0] * 8]
    for j in range(codes.shape[0]):
        word |= np.uint32((codes[j] >> 4) & 1) << np.uint32(j)
    for k in range(qh.shape[0]):
        qh[k] = (word >> np.uint32(8 * k)) & np.uint32(0xFF)


# ------------------------------------------------------------ block rules

@njit(**JIT_OPTIONS)
def _row_sigma2(xr):
    """Mean square of a row, summed in order (the ``_impl`` quantizers' sigma2)."""
    s = F32(0.0)
    for j in range(xr.shape[0]):
        s += xr[j] * xr[j]
    return s / F32(xr.shape[0])


@njit(**JIT_OPTIONS)
def _fill_weights(xb, qw, sigma2, weight):
    """weight[j] = qw[j] * sqrt(sigma2 + xb[j]**2)."""
    for j in range(QK):
        weight[j] = qw[j] * np.sqrt(sigma2 + xb[j] * xb[j])


# ggml scans a block in order with float compares that skip NaN. Without
# fastmath LLVM keeps float max/min reductions scalar (their order could
# matter for NaN and -0.0); integer ones it vectorizes. The block scans below
# therefore reduce integer keys of the float32 bit patterns, which order like
# the floats, with NaN swapped for a key that never wins:
#
#     |x|:  bits & 0x7FFFFFFF           (+0 .. +inf = 0 .. 0x7F800000; NaN above)
#     x:    bits ^ ((bits >> 31) & 0x7FFFFFFF)   (negative floats flipped below 0)
#
# The key order puts -0.0 below +0.0, while ggml keeps the first of equal
# values; so a zero min or max is replaced by the block's first zero.

INF_BITS = 0x7F800000
KEY_FLT_MAX = 0x7F7FFFFF  # key of FLT_MAX (its bits)
KEY_MINUS_FLT_MAX = -0x7F800000  # key of -FLT_MAX


@njit(**JIT_OPTIONS)
def _key(bits):
    """Order-preserving int key of a float32 bit pattern (an involution)."""
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@njit(**JIT_OPTIONS)
def _first_zero(xb):
    """The first element of ``xb`` equal to 0 (+0.0 or -0.0); call only when there is one."""
    j = 0
    while xb[j] != 0:
        j += 1
    return xb[j]


@njit(inline="always", **JIT_OPTIONS)
def _signed_abs_max(xb):
    """ggml's scan for the first value of largest magnitude in ``xb`` (32,); +0.0 when all are 0 or NaN.

    One max over the keys ``|x| bits * QK + (QK - 1 - j)``: the largest
    magnitude wins, and among equal ones the first (ggml's ``amax < fabsf(v)``).
    """
    top = 0
    for j in range(xb.shape[0]):
        a = F32(xb[j]).view(np.int32) & 0x7FFFFFFF
        top = max(top, (a if a <= INF_BITS else 0) * QK + (QK - 1 - j))
    if top < QK:  # every |x| is 0 (or NaN): ggml's max stays +0.0
        return F32(0.0)
    return xb[QK - 1 - top % QK]


@njit(inline="always", **JIT_OPTIONS)
def _min_max(xb):
    """``(min, max)`` of ``xb`` (32,), ggml's scan from ``(FLT_MAX, -FLT_MAX)`` (NaN never wins)."""
    lo = KEY_FLT_MAX
    hi = KEY_MINUS_FLT_MAX
    for j in range(xb.shape[0]):
        bits = F32(xb[j]).view(np.int32)
        not_nan = bits & 0x7FFFFFFF <= INF_BITS
        k = _key(bits)
        lo = min(lo, k if not_nan else KEY_FLT_MAX)
        hi = max(hi, k if not_nan else KEY_MINUS_FLT_MAX)
    vmin = np.int32(_key(lo)).view(F32)
    vmax = np.int32(_key(hi)).view(F32)
    if vmin == 0:
        vmin = _first_zero(xb)
    if vmax == 0:
        vmax = _first_zero(xb)
    return vmin, vmax


@njit(inline="always", **JIT_OPTIONS)
def _truncated_codes(xb, offset, inv, bias, top, L):
    """L (32,) int32: ``min(top, int((xb[j] - offset) * inv + bias))``, truncating as C's cast does."""
    for j in range(xb.shape[0]):
        L[j] = min(top, np.int32((xb[j] - offset) * inv + bias))


@njit(inline="always", **JIT_OPTIONS)
def _symmetric_ref(xb, nmax, L):
    """Q4_0/Q5_0 ``_ref``: codes into L, returns ``d = max / -nmax``."""
    d = _signed_abs_max(xb) / F32(-nmax)
    inv = F32(1.0) / d if d != 0 else F32(0.0)
    _truncated_codes(xb, F32(0.0), inv, F32(nmax) + F32(0.5), np.int32(2 * nmax - 1), L)
    return d


@njit(inline="always", **JIT_OPTIONS)
def _min_ref(xb, nmax, L):
    """Q4_1/Q5_1 ``_ref``: codes into L, returns ``(d, m)`` with ``d = (max - min)/nmax``, ``m = min``."""
    vmin, vmax = _min_max(xb)
    d = (vmax - vmin) / F32(nmax)
    inv = F32(1.0) / d if d != 0 else F32(0.0)
    _truncated_codes(xb, vmin, inv, F32(0.5), np.int32(nmax), L)
    return d, vmin


# ---------------------------------------------------------------- kernels

@njit(parallel=True, **JIT_OPTIONS)
def _quantize_affine(x, imatrix, out, nmax):
    """Q4_0 (nmax 8), Q4_1 (15), Q5_0 (16) and Q5_1 (31) rows into ``out``; ``_impl`` when imatrix is given.

    x : float32 (n_rows, n_cols), C-contiguous (rows are viewed as blocks).
    The ``_1`` types (odd ``nmax``) store a min ``m`` after ``d``; the 5-bit
    types their fifth bits ``qh`` before ``qs``.
    """
    n_rows, n_cols = x.shape
    n_blocks = n_cols // QK
    has_min = nmax % 2 == 1
    qh = 4 if has_min else 2  # offset of qh: after d (and m)
    size = Q4_0_SIZE if nmax == 8 else Q4_1_SIZE if nmax == 15 else Q5_0_SIZE if nmax == 16 else Q5_1_SIZE
    for r in prange(n_rows):
        xr = x[r].reshape(n_blocks, QK)  # (n_blocks, 32)
        blocks = out[r].reshape(n_blocks, size)  # (n_blocks, type_size)
        L = np.empty(QK, dtype=np.int32)
        Laux = np.empty(QK, dtype=np.uint8)
        weight = np.empty(QK, dtype=F32)
        sigma2 = _row_sigma2(x[r]) if imatrix is not None else F32(0.0)
        for b in range(n_blocks):
            xb = xr[b]
            o = blocks[b]
            m = F32(0.0)
            if imatrix is None:
                if has_min:
                    d, m = _min_ref(xb, nmax, L)
                else:
                    d = _symmetric_ref(xb, nmax, L)
            else:
                _fill_weights(xb, imatrix[b * QK:(b + 1) * QK], sigma2, weight)
                if has_min:
                    d, the_min = make_qkx3_quants(QK, nmax, xb, weight, L, Laux, -0.9, 0.05, 36, False)
                    m = -the_min
                else:
                    d = make_qx_quants(QK, nmax, xb, L, 1, weight)
            write_fp16(o, 0, fp16_bits(d))
            if has_min:
                write_fp16(o, 2, fp16_bits(m))
            if nmax > 15:
                _put_high_bits(o[qh:qh + 4], L)
            _put_nibbles(o[size - 16:], L)


@njit(parallel=True, **JIT_OPTIONS)
def _quantize_q8_0(x, imatrix, out):
    """Q8_0 rows into ``out``: ``d = amax/127``, ``q = roundf(x/d)``; ``imatrix`` is ignored, as in ggml."""
    n_rows, n_cols = x.shape
    for r in prange(n_rows):
        for b in range(n_cols // QK):
            xb = x[r, b * QK:(b + 1) * QK]
            o = out[r, b * Q8_0_SIZE:(b + 1) * Q8_0_SIZE]
            amax = F32(0.0)
            for j in range(QK):
                amax = max(amax, abs(xb[j]))
            d = amax / F32(127.0)
            inv = F32(1.0) / d if d != 0 else F32(0.0)
            write_fp16(o, 0, fp16_bits(d))
            for j in range(QK):
                o[2 + j] = np.int64(round_away(xb[j] * inv)) & 0xFF  # int8 two's complement


@njit(parallel=True, **JIT_OPTIONS)
def _quantize_iq4_nl(x, imatrix, out):
    """IQ4_NL rows into ``out`` (ggml's ``quantize_iq4_nl``, ntry = 7), ``LANES`` blocks at a time."""
    n_rows, n_cols = x.shape
    n_blocks = n_cols // QK
    for r in prange(n_rows):
        xt = np.empty((QK, LANES), dtype=F32)  # (32, LANES): block b0 + l in column l
        wt = np.empty((QK, LANES), dtype=F32)
        Lt = np.empty((QK, LANES), dtype=np.uint8)
        d = np.empty(LANES, dtype=F32)
        work = np.empty((6, LANES), dtype=F32)
        for b0 in range(0, n_blocks, LANES):
            n_lanes = min(LANES, n_blocks - b0)
            to_lanes(x[r], b0 * QK, QK, n_lanes, xt)
            if imatrix is None:
                for j in range(QK):
                    for l in range(LANES):
                        wt[j, l] = xt[j, l] * xt[j, l]
            else:
                to_lanes(imatrix, b0 * QK, QK, n_lanes, wt)
                block_weights_lanes(xt, wt, F32(2.0 / QK), work[0])
            iq4nl_quants_lanes(xt, wt, 7, d, work)
            iq4nl_codes_lanes(xt, d, Lt)
            for l in range(n_lanes):
                o = out[r, (b0 + l) * IQ4_NL_SIZE:(b0 + l + 1) * IQ4_NL_SIZE]
                write_fp16(o, 0, fp16_bits(d[l]))
                for j in range(16):
                    o[2 + j] = Lt[j, l] | (Lt[j + 16, l] << 4)


@njit(parallel=True, **JIT_OPTIONS)
def _dequantize_q4_0(packed, out):
    """Q4_0: ``(q - 8) * d``."""
    n_rows, n_cols = out.shape
    for r in prange(n_rows):
        p = packed[r]
        y = out[r]
        for b in range(n_cols // QK):
            o = b * Q4_0_SIZE
            d = read_fp16(p, o)
            base = b * QK
            for j in range(16):
                q = np.int32(p[o + 2 + j])
                y[base + j] = F32((q & 0xF) - 8) * d
                y[base + j + 16] = F32((q >> 4) - 8) * d


@njit(parallel=True, **JIT_OPTIONS)
def _dequantize_q4_1(packed, out):
    """Q4_1: ``q * d + m``."""
    n_rows, n_cols = out.shape
    for r in prange(n_rows):
        p = packed[r]
        y = out[r]
        for b in range(n_cols // QK):
            o = b * Q4_1_SIZE
            d = read_fp16(p, o)
            m = read_fp16(p, o + 2)
            base = b * QK
            for j in range(16):
                q = np.int32(p[o + 4 + j])
                y[base + j] = F32(q & 0xF) * d + m
                y[base + j + 16] = F32(q >> 4) * d + m


@njit(**JIT_OPTIONS)
def _get_qh(p, off):
    """The 4-byte little-endian ``qh`` word at ``p[off:off+4]``."""
    return (np.int64(p[off]) | (np.int64(p[off + 1]) << 8)
            | (np.int64(p[off + 2]) << 16) | (np.int64(p[off + 3]) << 24))


@njit(parallel=True, **JIT_OPTIONS)
def _dequantize_q5_0(packed, out):
    """Q5_0: ``(q - 16) * d``, bit 4 of code j in bit j of ``qh``."""
    n_rows, n_cols = out.shape
    for r in prange(n_rows):
        p = packed[r]
        y = out[r]
        for b in range(n_cols // QK):
            o = b * Q5_0_SIZE
            d = read_fp16(p, o)
            qh = _get_qh(p, o + 2)
            base = b * QK
            for j in range(16):
                q = np.int64(p[o + 6 + j])
                y[base + j] = F32(((q & 0xF) | (((qh >> j) << 4) & 0x10)) - 16) * d
                y[base + j + 16] = F32(((q >> 4) | ((qh >> (j + 12)) & 0x10)) - 16) * d


@njit(parallel=True, **JIT_OPTIONS)
def _dequantize_q5_1(packed, out):
    """Q5_1: ``q * d + m``, bit 4 of code j in bit j of ``qh``."""
    n_rows, n_cols = out.shape
    for r in prange(n_rows):
        p = packed[r]
        y = out[r]
        for b in range(n_cols // QK):
            o = b * Q5_1_SIZE
            d = read_fp16(p, o)
            m = read_fp16(p, o + 2)
            qh = _get_qh(p, o + 4)
            base = b * QK
            for j in range(16):
                q = np.int64(p[o + 8 + j])
                y[base + j] = F32((q & 0xF) | (((qh >> j) << 4) & 0x10)) * d + m
                y[base + j + 16] = F32((q >> 4) | ((qh >> (j + 12)) & 0x10)) * d + m


@njit(parallel=True, **JIT_OPTIONS)
def _dequantize_q8_0(packed, out):
    """Q8_0: ``q * d`` with int8 q.

    Rows are viewed as blocks, (n_blocks, 34) -> (n_blocks, 32), and the inner
    loop runs to the slice's length: numba's loop vectorizer skips a loop of
    constant length 32 (LLVM unrolls it fully first, and numba runs no SLP
    vectorizer) but vectorizes this one.
    """
    n_rows, n_cols = out.shape
    n_blocks = n_cols // QK
    for r in prange(n_rows):
        blocks = packed[r].reshape(n_blocks, Q8_0_SIZE)
        y = out[r].reshape(n_blocks, QK)
        for b in range(n_blocks):
            d = read_fp16(blocks[b], 0)
            qs = blocks[b, 2:]
            yb = y[b]
            for j in range(qs.shape[0]):
                yb[j] = F32(np.int8(qs[j])) * d  # the byte read as int8


@njit(parallel=True, **JIT_OPTIONS)
def _dequantize_iq4_nl(packed, out):
    """IQ4_NL: ``d * kvalues_iq4nl[q]``."""
    n_rows, n_cols = out.shape
    levels = KVALUES_IQ4NL.astype(F32)
    for r in prange(n_rows):
        p = packed[r]
        y = out[r]
        for b in range(n_cols // QK):
            o = b * IQ4_NL_SIZE
            d = read_fp16(p, o)
            base = b * QK
            for j in range(16):
                q = np.int32(p[o + 2 + j])
                y[base + j] = d * levels[q & 0xF]
                y[base + j + 16] = d * levels[q >> 4]


# ---------------------------------------------------------------- unpack
#
# A block's 32 codes are too few for LLVM's loop vectorizer (it unrolls such
# loops instead), so the unpackers move 64-bit words, eight codes at a time:
# each row of codes is viewed as uint64 words, byte k of a (little-endian,
# as on x86 and ARM) word being code k. With w0, w1 the two words of the
# 16 ``qs`` bytes of a 4-bit type:
#
#     codes  0..7  = w0 & 0x0F..0F        codes 16..23 = (w0 >> 4) & 0x0F..0F
#     codes  8..15 = w1 & 0x0F..0F        codes 24..31 = (w1 >> 4) & 0x0F..0F
#
# The 5-bit types OR in bit 4 from ``qh``, one byte (eight codes) at a time:
# qh byte k holds bit 4 of codes 8k..8k+7, and HIGH_BITS[v] is the word whose
# byte i is 0x10 where bit i of v is set. Q8_0's codes are its 32 bytes with
# the sign bit flipped (int8 q -> q + 128).

LOW_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)
SIGN_BITS = np.uint64(0x8080808080808080)
HIGH_BITS = np.array([sum(((v >> i) & 1) << (8 * i + 4) for i in range(8)) for v in range(256)],
                     dtype=np.uint64)


@njit(**JIT_OPTIONS)
def _word(p, off):
    """The little-endian uint64 at ``p[off:off+8]`` (LLVM turns the loop into one load)."""
    w = np.uint64(0)
    for k in range(8):
        w |= np.uint64(p[off + k]) << np.uint64(8 * k)
    return w


@njit(parallel=True, **JIT_OPTIONS)
def _unpack_nibbles(packed, codes, d, mins, size, high_bits):
    """Codes, ``d`` and, for Q4_1 and Q5_1, ``mins = -m`` of rows of 4- and 5-bit blocks.

    packed : uint8 (n_rows, n_blocks * size); codes : uint8 (n_rows, n_blocks * 32),
    d : float32 (n_rows, n_blocks) and mins : float32 (n_rows, n_blocks) or None,
    all written; high_bits : :data:`HIGH_BITS` for the 5-bit types, else None.
    numba compiles a variant per None, without its branch. Every type starts
    with ``d`` (and ``m``) and ends with ``qs``; ``qh`` comes right before ``qs``.
    """
    for r in prange(codes.shape[0]):
        words = codes[r].view(np.uint64)  # (n_blocks * 4,): four words per block
        for b in range(d.shape[1]):
            p = packed[r, size * b:size * (b + 1)]
            w = words[4 * b:4 * (b + 1)]
            d[r, b] = read_fp16(p, 0)
            if mins is not None:
                mins[r, b] = -read_fp16(p, 2)
            qs = p[size - 16:]
            w0 = _word(qs, 0)
            w1 = _word(qs, 8)
            w[0] = w0 & LOW_NIBBLES
            w[1] = w1 & LOW_NIBBLES
            w[2] = (w0 >> np.uint64(4)) & LOW_NIBBLES
            w[3] = (w1 >> np.uint64(4)) & LOW_NIBBLES
            if high_bits is not None:
                qh = p[size - 20:size - 16]
                for k in range(4):
                    w[k] |= high_bits[qh[k]]


@njit(parallel=True, **JIT_OPTIONS)
def _unpack_q8_0(packed, codes, d, mins):
    """Q8_0 rows: packed uint8 (n_rows, n_blocks * 34) -> codes uint8 (n_rows, n_blocks * 32)
    and d float32 (n_rows, n_blocks), both written; ``mins`` is None."""
    for r in prange(codes.shape[0]):
        words = codes[r].view(np.uint64)  # (n_blocks * 4,): four words per block
        for b in range(d.shape[1]):
            p = packed[r, Q8_0_SIZE * b:Q8_0_SIZE * (b + 1)]
            d[r, b] = read_fp16(p, 0)
            for k in range(4):
                words[4 * b + k] = _word(p, 2 + 8 * k) ^ SIGN_BITS


# ---------------------------------------------------------- public names

#: per type: the quantize kernel and its parameters, the dequantize kernel, the unpack kernel and its parameters
KERNELS = {
    "Q4_0": ((_quantize_affine, 8), _dequantize_q4_0, (_unpack_nibbles, Q4_0_SIZE, None)),
    "Q4_1": ((_quantize_affine, 15), _dequantize_q4_1, (_unpack_nibbles, Q4_1_SIZE, None)),
    "Q5_0": ((_quantize_affine, 16), _dequantize_q5_0, (_unpack_nibbles, Q5_0_SIZE, HIGH_BITS)),
    "Q5_1": ((_quantize_affine, 31), _dequantize_q5_1, (_unpack_nibbles, Q5_1_SIZE, HIGH_BITS)),
    "Q8_0": (_quantize_q8_0, _dequantize_q8_0, _unpack_q8_0),
    "IQ4_NL": (_quantize_iq4_nl, _dequantize_iq4_nl, (_unpack_nibbles, IQ4_NL_SIZE, None)),
}
quantize_q4_0, dequantize_q4_0, unpack_q4_0 = twins("Q4_0", *KERNELS["Q4_0"])
quantize_q4_1, dequantize_q4_1, unpack_q4_1 = twins("Q4_1", *KERNELS["Q4_1"])
quantize_q5_0, dequantize_q5_0, unpack_q5_0 = twins("Q5_0", *KERNELS["Q5_0"])
quantize_q5_1, dequantize_q5_1, unpack_q5_1 = twins("Q5_1", *KERNELS["Q5_1"])
quantize_q8_0, dequantize_q8_0, unpack_q8_0 = twins("Q8_0", *KERNELS["Q8_0"])
quantize_iq4_nl, dequantize_iq4_nl, unpack_iq4_nl = twins("IQ4_NL", *KERNELS["IQ4_NL"],
                                                          codebook=KVALUES_IQ4NL.astype(F32))

describe_twins(__name__, "numba")

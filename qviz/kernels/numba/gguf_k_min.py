"""Numba twins of :mod:`qviz.formats.gguf_k_min`: Q2_K, Q4_K, Q5_K.

Same public names as the reference, same bytes (and the same arrays from
``unpack_<type>``). Rows run in parallel
(``prange``). Within a row, the sub-blocks of up to ``GROUP`` super-blocks
are searched side by side, lane-major (:mod:`qviz.kernels.numba.lanes_min`:
the serial float32 sums of ggml's search overlap and vectorize); the
super-scales, the final rounding and the packing then run one super-block at
a time. Work arrays are allocated once per row. The bit maps of every packed
field are drawn in the reference module.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from qviz.formats import ggml_search, rounding
from qviz.formats.blocks import describe_twins
from qviz.formats.gguf_k_min import IMATRIX_SEARCH, PARAMS
from qviz.formats.spec import FORMATS, QK_K
from qviz.kernels.numba.buffers import twins
from qviz.kernels.numba.lanes_min import (N_LANE_VALUES, from_lanes, make_qkx_quants_lanes,
                                          nearest_int, to_lanes)
from qviz.kernels.numba.search import JIT_OPTIONS, read_fp16, write_fp16

f32 = np.float32

Q2_K_SIZE = FORMATS["Q2_K"].type_size  # 84: scales 16, qs 64, d 2, dmin 2
Q4_K_SIZE = FORMATS["Q4_K"].type_size  # 144: d 2, dmin 2, scales 12, qs 128
Q5_K_SIZE = FORMATS["Q5_K"].type_size  # 176: d 2, dmin 2, scales 12, qh 32, qs 128
#: super-blocks searched side by side: a 4096-wide row at once, 128 lanes (Q4_K, Q5_K)
#: or 256 (Q2_K); fewer lanes leave the vector loops too short to pay for themselves
GROUP = 16


# ---------------------------------------------------------------------------
# Field access
# ---------------------------------------------------------------------------

@njit(**JIT_OPTIONS)
def _scale_min_k4(j, b, off):
    """ggml's ``get_scale_min_k4``: 6-bit scale and min of sub-block ``j``.

    ``b[off:off+12]`` is the ``scales`` field (bit map in the reference's
    ``unpack_scale_min_k4``).
    """
    if j < 4:
        return b[off + j] & 63, b[off + j + 4] & 63
    sc = (b[off + j + 4] & 0xF) | ((b[off + j - 4] >> 6) << 4)
    m = (b[off + j + 4] >> 4) | ((b[off + j] >> 6) << 4)
    return sc, m


# ---------------------------------------------------------------------------
# Quantize
# ---------------------------------------------------------------------------

@njit(**JIT_OPTIONS)
def _ref_weights(xl, n_lanes, is_q2, wl, av_x):
    """Error weights of the ``_ref`` path, lane-major: ``av_x + |x|`` (Q2_K: ``|x|``).

    xl : float32 (sub, >= n_lanes), the values; wl : float32 (sub, >= n_lanes),
    written; av_x : float32 (>= n_lanes,), written: the root mean square of
    each lane's sub-block (0 for Q2_K).
    """
    sub = xl.shape[0]
    for k in range(n_lanes):
        av_x[k] = f32(0.0)
    if not is_q2:  # Q2_K: 0 + |x| is exactly |x|
        for i in range(sub):
            for k in range(n_lanes):
                av_x[k] += xl[i, k] * xl[i, k]
        for k in range(n_lanes):
            av_x[k] = np.sqrt(av_x[k] / f32(sub))
    for i in range(sub):
        for k in range(n_lanes):
            wl[i, k] = av_x[k] + abs(xl[i, k])


@njit(**JIT_OPTIONS)
def _imatrix_weights(x, xl, qwl, n_lanes, is_q2, wl, sw, sigma2, lane_sigma2):
    """Error weights of the ``_impl`` path, ``qw * sqrt(sigma2 + x**2)``, and their sums.

    x : float32 (g * 256,), the group's super-blocks in natural order;
    xl, qwl : float32 (sub, >= n_lanes), their values and imatrix, lane-major;
    wl : float32 (sub, >= n_lanes), written; sw : float32 (>= n_lanes,),
    written: each lane's sum of weights, in order; sigma2 : float32 (>= g,)
    and lane_sigma2 : float32 (>= n_lanes,), scratch. ``sigma2`` is the
    super-block's mean square (Q2_K) or twice it (Q4_K, Q5_K), summed over
    its 256 weights in order, the ``g`` super-blocks side by side.
    """
    sub = xl.shape[0]
    n_sub = QK_K // sub
    g = x.shape[0] // QK_K
    for s in range(g):
        sigma2[s] = f32(0.0)
    for l in range(QK_K):
        for s in range(g):
            v = x[QK_K * s + l]
            sigma2[s] += v * v
    for s in range(g):
        s2 = sigma2[s] / f32(QK_K) if is_q2 else f32(2.0) * sigma2[s] / f32(QK_K)
        for k in range(n_sub * s, n_sub * (s + 1)):
            lane_sigma2[k] = s2
            sw[k] = f32(0.0)
    for i in range(sub):
        for k in range(n_lanes):
            v = xl[i, k]
            wl[i, k] = qwl[i, k] * np.sqrt(lane_sigma2[k] + v * v)
            sw[k] += wl[i, k]


@njit(**JIT_OPTIONS)
def _quantize_by_max(v, sc_max, codes):
    """The ``_ref`` rule: ``v``'s largest value becomes code ``sc_max``.

    v : float32 (n_sub,); codes : uint8 (n_sub,), written. Returns the fp16
    bits of the step. A negative ``v`` (a search can return a negative
    scale) gives a negative code, which wraps as C's ``uint8_t`` store does.
    """
    vmax = f32(0.0)
    for a in v:
        if a > vmax:
            vmax = a
    if not vmax > 0:
        codes[:] = 0
        return rounding.fp16_bits(f32(0.0))
    iscale = f32(sc_max) / vmax
    for j in range(v.shape[0]):
        codes[j] = rounding.nearest_int(iscale * v[j]) & 0xFF
    return rounding.fp16_bits(vmax / f32(sc_max))


@njit(**JIT_OPTIONS)
def _super_scales(scales, mins, sw, by_max, sc_max, clamp, ls, lm):
    """Sub-block scales and mins as codes ``ls``, ``lm`` of the super-scales ``d``, ``dmin``.

    scales, mins, sw : float32 (n_sub,); ls, lm : uint8 (n_sub,), written.
    ``by_max``: the ``_ref`` rule (:func:`_quantize_by_max`), else ggml's
    ``make_qp_quants`` weighted by ``sw``. ``clamp``: ggml's ``MIN(63, ls)``
    on the (wrapped) codes, which Q4_K's and Q5_K's ``_ref`` and Q5_K's
    ``_impl`` apply and the others do not. Returns the fp16 bits ``(d, dmin)``.
    """
    if by_max:
        d = _quantize_by_max(scales, sc_max, ls)
        dmin = _quantize_by_max(mins, sc_max, lm)
    else:
        d = rounding.fp16_bits(ggml_search.make_qp_quants(scales.shape[0], sc_max, scales, ls, sw))
        dmin = rounding.fp16_bits(ggml_search.make_qp_quants(mins.shape[0], sc_max, mins, lm, sw))
    if clamp:
        for j in range(ls.shape[0]):
            ls[j] = min(ls[j], sc_max)
            lm[j] = min(lm[j], sc_max)
    return d, dmin


@njit(**JIT_OPTIONS)
def _pack_scale_min_k4(ls, lm, b, off):
    """The reference's ``pack_scale_min_k4`` into ``b[off:off+12]``."""
    for j in range(4):
        b[off + j] = ls[j] | ((ls[j + 4] >> 4) << 6)
        b[off + 4 + j] = lm[j] | ((lm[j + 4] >> 4) << 6)
        b[off + 8 + j] = (ls[j + 4] & 0xF) | ((lm[j + 4] & 0xF) << 4)


@njit(**JIT_OPTIONS)
def _pack_scales(bits, d, dmin, ls, lm, b, o):
    """The ``d``, ``dmin`` and ``scales`` fields of one Q{bits}_K block at ``b[o:]``.

    Like ggml's, a code above its field's width (a wrapped negative) spills
    into its neighbours' bits.
    """
    if bits == 2:
        for j in range(16):
            b[o + j] = ls[j] | (lm[j] << 4)
        write_fp16(b, o + 80, d)
        write_fp16(b, o + 82, dmin)
    else:
        write_fp16(b, o, d)
        write_fp16(b, o + 2, dmin)
        _pack_scale_min_k4(ls, lm, b, o + 4)


@njit(**JIT_OPTIONS)
def _packed_scale_min(bits, j, b, o):
    """Sub-block ``j``'s scale and min codes as stored in the Q{bits}_K block at ``b[o:]``."""
    if bits == 2:
        return b[o + j] & 0xF, b[o + j] >> 4
    return _scale_min_k4(j, b, o + 4)


@njit(**JIT_OPTIONS)
def _requantize(x, bits, nmax, b, o, L):
    """Round every sub-block again against the scale and min stored in the block.

    x : float32 (256,); b[o:] : the block, its ``d``, ``dmin`` and ``scales``
    already packed (ggml reads them back, so a spilled code reads as stored);
    L : uint8 (256,), the search's codes, overwritten except in sub-blocks
    whose step is 0.
    """
    d_off = 80 if bits == 2 else 0
    d_value, dmin_value = read_fp16(b, o + d_off), read_fp16(b, o + d_off + 2)
    n_sub = 16 if bits == 2 else 8
    sub = QK_K // n_sub
    for j in range(n_sub):
        sc, m = _packed_scale_min(bits, j, b, o)
        step = d_value * f32(sc)
        if step == 0:
            continue
        shift = dmin_value * f32(m)
        for l in range(sub * j, sub * (j + 1)):
            L[l] = max(0, min(nmax, nearest_int((x[l] + shift) / step)))


@njit(**JIT_OPTIONS)
def _pack_codes(bits, L, b, o):
    """The ``qs`` (and Q5_K's ``qh``) fields of one Q{bits}_K block at ``b[o:]``
    (bit maps in the reference)."""
    if bits == 2:
        for half in range(2):
            for l in range(32):
                k = 128 * half + l
                b[o + 16 + 32 * half + l] = (L[k] | (L[k + 32] << 2) | (L[k + 64] << 4)
                                             | (L[k + 96] << 6))
    elif bits == 4:
        for c in range(4):
            for l in range(32):
                b[o + 16 + 32 * c + l] = L[64 * c + l] | (L[64 * c + 32 + l] << 4)
    else:
        for l in range(32):
            qh = 0
            for s in range(8):
                qh |= ((L[32 * s + l] >> 4) & 1) << s
            b[o + 16 + l] = qh
        for c in range(4):
            for l in range(32):
                b[o + 48 + 32 * c + l] = (L[64 * c + l] & 0xF) | ((L[64 * c + 32 + l] & 0xF) << 4)


@njit(**JIT_OPTIONS)
def _quantize_row(x, imatrix, out, p, bits):
    """Quantize one row of Q{bits}_K.

    x : float32 (n_cols,); imatrix : float32 (n_cols,) or None (numba
    compiles one variant for each); out : uint8 (row_bytes,), written;
    p : the type's ``KMinParams``; bits : 2, 4 or 5, which packer to use.

    Up to ``GROUP`` super-blocks at a time: their sub-blocks go lane-major
    (lane ``k`` = sub-block ``k % n_sub`` of super-block ``k // n_sub``) and
    are searched together; then, one super-block at a time, the super-scales,
    the final rounding and the packing.
    """
    sub = p.sub
    n_sub = QK_K // sub
    nb = x.shape[0] // QK_K
    type_size = out.shape[0] // nb
    lanes = GROUP * n_sub
    xl = np.empty((sub, lanes), dtype=np.float32)  # (sub, lanes): values
    wl = np.empty((sub, lanes), dtype=np.float32)  # (sub, lanes): error weights
    qwl = np.empty((sub, lanes), dtype=np.float32)  # (sub, lanes): imatrix
    Ll = np.empty((sub, lanes), dtype=np.uint8)  # (sub, lanes): the search's codes
    Lf = np.empty((sub, lanes), dtype=np.float32)
    work = np.empty((N_LANE_VALUES, lanes), dtype=np.float32)
    scales = np.empty(lanes, dtype=np.float32)
    mins = np.empty(lanes, dtype=np.float32)
    sw = np.empty(lanes, dtype=np.float32)
    av_x = np.empty(lanes, dtype=np.float32)
    lane_sigma2 = np.empty(lanes, dtype=np.float32)
    sigma2 = np.empty(GROUP, dtype=np.float32)
    ls = np.empty(n_sub, dtype=np.uint8)
    lm = np.empty(n_sub, dtype=np.uint8)
    L = np.empty(QK_K, dtype=np.uint8)
    if imatrix is None:
        rmin, rdelta, nstep, use_mad = p.ref_search
    else:
        rmin, rdelta, nstep, use_mad = IMATRIX_SEARCH
    clamp = p.clamp[1] if imatrix is not None else p.clamp[0]  # ggml clamps codes to 63?
    for i0 in range(0, nb, GROUP):
        g = min(GROUP, nb - i0)
        n_lanes = g * n_sub
        xg = x[QK_K * i0:QK_K * (i0 + g)]
        to_lanes(xg, sub, xl)
        if imatrix is None:
            _ref_weights(xl, n_lanes, bits == 2, wl, av_x)
        else:
            to_lanes(imatrix[QK_K * i0:QK_K * (i0 + g)], sub, qwl)
            _imatrix_weights(xg, xl, qwl, n_lanes, bits == 2, wl, sw, sigma2, lane_sigma2)
        make_qkx_quants_lanes(n_lanes, p.nmax, xl, wl, Ll, rmin, rdelta, nstep, use_mad,
                              scales, mins, Lf, work)
        for s in range(g):
            k0 = n_sub * s
            from_lanes(Ll, k0, L)
            d, dmin = _super_scales(scales[k0:k0 + n_sub], mins[k0:k0 + n_sub],
                                    sw[k0:k0 + n_sub], imatrix is None, p.sc_max, clamp, ls, lm)
            o = (i0 + s) * type_size
            _pack_scales(bits, d, dmin, ls, lm, out, o)
            _requantize(xg[QK_K * s:QK_K * (s + 1)], bits, p.nmax, out, o, L)
            _pack_codes(bits, L, out, o)


_Q2_K, _Q4_K, _Q5_K = PARAMS["Q2_K"], PARAMS["Q4_K"], PARAMS["Q5_K"]


@njit(parallel=True, **JIT_OPTIONS)
def _quantize_q2_k(x, imatrix, out):
    """x : float32 (n_rows, n_cols); imatrix : float32 (n_cols,) or None;
    out : uint8 (n_rows, n_cols // 256 * 84), written."""
    for r in prange(x.shape[0]):
        _quantize_row(x[r], imatrix, out[r], _Q2_K, 2)


@njit(parallel=True, **JIT_OPTIONS)
def _quantize_q4_k(x, imatrix, out):
    """x : float32 (n_rows, n_cols); imatrix : float32 (n_cols,) or None;
    out : uint8 (n_rows, n_cols // 256 * 144), written."""
    for r in prange(x.shape[0]):
        _quantize_row(x[r], imatrix, out[r], _Q4_K, 4)


@njit(parallel=True, **JIT_OPTIONS)
def _quantize_q5_k(x, imatrix, out):
    """x : float32 (n_rows, n_cols); imatrix : float32 (n_cols,) or None;
    out : uint8 (n_rows, n_cols // 256 * 176), written."""
    for r in prange(x.shape[0]):
        _quantize_row(x[r], imatrix, out[r], _Q5_K, 5)


# ---------------------------------------------------------------------------
# Dequantize
# ---------------------------------------------------------------------------

@njit(parallel=True, **JIT_OPTIONS)
def _dequantize_q2_k(packed, y):
    """packed : uint8 (n_rows, n_blocks * 84); y : float32 (n_rows, n_blocks * 256), written.

    Each ``qs`` byte holds four codes, of sub-blocks ``8*half + 2*k + h`` (k = 0..3)
    that lie 32 weights apart; one pass over the byte writes all four.
    """
    nb = packed.shape[1] // Q2_K_SIZE
    for r in prange(packed.shape[0]):
        b = packed[r]
        for i in range(nb):
            o = i * Q2_K_SIZE
            d = read_fp16(b, o + 80)
            dmin = read_fp16(b, o + 82)
            for half in range(2):
                for h in range(2):  # the two 16-weight sub-blocks of each 32-byte run
                    s0, s1 = b[o + 8 * half + h], b[o + 8 * half + 2 + h]
                    s2, s3 = b[o + 8 * half + 4 + h], b[o + 8 * half + 6 + h]
                    d0, m0 = d * f32(s0 & 0xF), dmin * f32(s0 >> 4)
                    d1, m1 = d * f32(s1 & 0xF), dmin * f32(s1 >> 4)
                    d2, m2 = d * f32(s2 & 0xF), dmin * f32(s2 >> 4)
                    d3, m3 = d * f32(s3 & 0xF), dmin * f32(s3 >> 4)
                    yo = i * QK_K + 128 * half + 16 * h
                    qo = o + 16 + 32 * half + 16 * h
                    for l in range(16):
                        q = b[qo + l]
                        y[r, yo + l] = d0 * f32(q & 3) - m0
                        y[r, yo + 32 + l] = d1 * f32((q >> 2) & 3) - m1
                        y[r, yo + 64 + l] = d2 * f32((q >> 4) & 3) - m2
                        y[r, yo + 96 + l] = d3 * f32(q >> 6) - m3


@njit(parallel=True, **JIT_OPTIONS)
def _dequantize_q4_k(packed, y):
    """packed : uint8 (n_rows, n_blocks * 144); y : float32 (n_rows, n_blocks * 256), written."""
    nb = packed.shape[1] // Q4_K_SIZE
    for r in prange(packed.shape[0]):
        b = packed[r]
        for i in range(nb):
            o = i * Q4_K_SIZE
            d = read_fp16(b, o)
            dmin = read_fp16(b, o + 2)
            for c in range(4):  # sub-blocks 2c (low nibbles) and 2c+1 (high nibbles)
                sc1, m1 = _scale_min_k4(2 * c, b, o + 4)
                sc2, m2 = _scale_min_k4(2 * c + 1, b, o + 4)
                d1, d2 = d * f32(sc1), d * f32(sc2)
                min1, min2 = dmin * f32(m1), dmin * f32(m2)
                yo = i * QK_K + 64 * c
                qo = o + 16 + 32 * c
                for l in range(32):
                    q = b[qo + l]
                    y[r, yo + l] = d1 * f32(q & 0xF) - min1
                    y[r, yo + 32 + l] = d2 * f32(q >> 4) - min2


@njit(parallel=True, **JIT_OPTIONS)
def _dequantize_q5_k(packed, y):
    """packed : uint8 (n_rows, n_blocks * 176); y : float32 (n_rows, n_blocks * 256), written."""
    nb = packed.shape[1] // Q5_K_SIZE
    for r in prange(packed.shape[0]):
        b = packed[r]
        for i in range(nb):
            o = i * Q5_K_SIZE
            d = read_fp16(b, o)
            dmin = read_fp16(b, o + 2)
            for c in range(4):  # sub-blocks 2c and 2c+1; their fifth bits are qh bits 2c, 2c+1
                sc1, m1 = _scale_min_k4(2 * c, b, o + 4)
                sc2, m2 = _scale_min_k4(2 * c + 1, b, o + 4)
                d1, d2 = d * f32(sc1), d * f32(sc2)
                min1, min2 = dmin * f32(m1), dmin * f32(m2)
                yo = i * QK_K + 64 * c
                qo = o + 48 + 32 * c
                for l in range(32):
                    q, qh = b[qo + l], b[o + 16 + l] >> (2 * c)
                    y[r, yo + l] = d1 * f32((q & 0xF) | ((qh & 1) << 4)) - min1
                    y[r, yo + 32 + l] = d2 * f32((q >> 4) | ((qh & 2) << 3)) - min2


# ---------------------------------------------------------------------------
# Unpack
# ---------------------------------------------------------------------------
#
# Each block is addressed through slices (``b`` of the bytes, ``c`` of the
# codes), so every index is a small non-negative sum of loop variables: LLVM
# drops numba's negative-index fix-ups and vectorizes the loops over ``l``
# (32 steps of four or more stores; a loop with fewer gets unrolled instead).

@njit(parallel=True, **JIT_OPTIONS)
def _unpack_q2_k(packed, codes, scales, mins):
    """packed : uint8 (n_rows, n_blocks * 84) -> codes : uint8 (n_rows, n_blocks * 256) 0..3,
    scales, mins : float32 (n_rows, n_blocks * 16), all written.

    ``scales = d * (sc & 15)``, ``mins = dmin * (sc >> 4)``: ggml's ``dl`` and ``ml``.
    """
    for r in prange(packed.shape[0]):
        for i in range(packed.shape[1] // Q2_K_SIZE):
            b = packed[r, Q2_K_SIZE * i:Q2_K_SIZE * (i + 1)]
            c = codes[r, QK_K * i:QK_K * (i + 1)]
            d = read_fp16(b, 80)
            dmin = read_fp16(b, 82)
            for j in range(16):
                scales[r, 16 * i + j] = d * f32(b[j] & 0xF)
                mins[r, 16 * i + j] = dmin * f32(b[j] >> 4)
            for half in range(2):  # qs byte 32*half + l: codes 128*half + 32*k + l in bits 2k+1..2k
                for l in range(32):
                    q = b[16 + 32 * half + l]
                    for k in range(4):
                        c[128 * half + 32 * k + l] = (q >> (2 * k)) & 3


@njit(**JIT_OPTIONS)
def _unpack_scales_k4(b, d_row, m_row):
    """``d * sc`` and ``dmin * m`` of the Q4_K/Q5_K block ``b`` into d_row, m_row (8,) float32."""
    d = read_fp16(b, 0)
    dmin = read_fp16(b, 2)
    for j in range(8):
        sc, m = _scale_min_k4(j, b, 4)
        d_row[j] = d * f32(sc)
        m_row[j] = dmin * f32(m)


@njit(parallel=True, **JIT_OPTIONS)
def _unpack_q4_k(packed, codes, scales, mins):
    """packed : uint8 (n_rows, n_blocks * 144) -> codes : uint8 (n_rows, n_blocks * 256) 0..15,
    scales, mins : float32 (n_rows, n_blocks * 8) ``d * sc``, ``dmin * m``, all written."""
    for r in prange(packed.shape[0]):
        for i in range(packed.shape[1] // Q4_K_SIZE):
            b = packed[r, Q4_K_SIZE * i:Q4_K_SIZE * (i + 1)]
            c = codes[r, QK_K * i:QK_K * (i + 1)]
            _unpack_scales_k4(b, scales[r, 8 * i:8 * (i + 1)], mins[r, 8 * i:8 * (i + 1)])
            for l in range(32):  # qs byte 32*k + l: codes 64*k + l (low nibble) and 64*k + 32 + l
                for k in range(4):
                    q = b[16 + 32 * k + l]
                    c[64 * k + l] = q & 0xF
                    c[64 * k + 32 + l] = q >> 4


@njit(parallel=True, **JIT_OPTIONS)
def _unpack_q5_k(packed, codes, scales, mins):
    """packed : uint8 (n_rows, n_blocks * 176) -> codes : uint8 (n_rows, n_blocks * 256) 0..31,
    scales, mins : float32 (n_rows, n_blocks * 8) ``d * sc``, ``dmin * m``, all written."""
    for r in prange(packed.shape[0]):
        for i in range(packed.shape[1] // Q5_K_SIZE):
            b = packed[r, Q5_K_SIZE * i:Q5_K_SIZE * (i + 1)]
            c = codes[r, QK_K * i:QK_K * (i + 1)]
            _unpack_scales_k4(b, scales[r, 8 * i:8 * (i + 1)], mins[r, 8 * i:8 * (i + 1)])
            for l in range(32):  # as Q4_K's, and bit s of qh byte l is bit 4 of code 32*s + l
                qh = b[16 + l]
                for k in range(4):
                    q = b[48 + 32 * k + l]
                    c[64 * k + l] = (q & 0xF) | (((qh >> (2 * k)) & 1) << 4)
                    c[64 * k + 32 + l] = (q >> 4) | (((qh >> (2 * k + 1)) & 1) << 4)


# ---------------------------------------------------------------------------
# Public names
# ---------------------------------------------------------------------------
quantize_q2_k, dequantize_q2_k, unpack_q2_k = twins("Q2_K", _quantize_q2_k, _dequantize_q2_k, _unpack_q2_k)
quantize_q4_k, dequantize_q4_k, unpack_q4_k = twins("Q4_K", _quantize_q4_k, _dequantize_q4_k, _unpack_q4_k)
quantize_q5_k, dequantize_q5_k, unpack_q5_k = twins("Q5_K", _quantize_q5_k, _dequantize_q5_k, _unpack_q5_k)

describe_twins(__name__, "numba")

"""Numba twins of :mod:`qviz.formats.gguf_k_min`: Q2_K, Q4_K, Q5_K.

Same public names as the reference, same bytes. Rows run in parallel
(``prange``); each row walks its super-blocks with preallocated work arrays.
The bit maps of every packed field are drawn in the reference module.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit, prange

from qviz.formats import ggml_search, rounding
from qviz.formats.gguf_k_min import IMATRIX_SEARCH, PARAMS
from qviz.formats.rounding import FP16_TABLE
from qviz.formats.spec import FORMATS, QK_K
from qviz.kernels.numba.search import JIT_OPTIONS

f32 = np.float32

Q2_K_SIZE = FORMATS["Q2_K"].type_size  # 84: scales 16, qs 64, d 2, dmin 2
Q4_K_SIZE = FORMATS["Q4_K"].type_size  # 144: d 2, dmin 2, scales 12, qs 128
Q5_K_SIZE = FORMATS["Q5_K"].type_size  # 176: d 2, dmin 2, scales 12, qh 32, qs 128


# ---------------------------------------------------------------------------
# Field access
# ---------------------------------------------------------------------------

@njit(**JIT_OPTIONS)
def _read_fp16(b, off):
    """float32 value of the little-endian fp16 at ``b[off:off+2]``."""
    return FP16_TABLE[np.int64(b[off]) | (np.int64(b[off + 1]) << 8)]


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
def _search_weights(x, qw, is_q2, sub, weights):
    """The reference's ``_search_weights`` into ``weights`` (256,) float32.

    ``qw`` is None (``_ref`` path; numba compiles that branch away) or the
    imatrix slice (256,) of this super-block.
    """
    if qw is None:
        for j in range(0, QK_K, sub):
            av_x = f32(0.0)  # Q2_K: 0 + |x| is exactly |x|
            if not is_q2:
                sum_x2 = f32(0.0)
                for l in range(j, j + sub):
                    sum_x2 += x[l] * x[l]
                av_x = np.sqrt(sum_x2 / f32(sub))
            for l in range(j, j + sub):
                weights[l] = av_x + abs(x[l])
        return
    sum_x2 = f32(0.0)
    for l in range(QK_K):
        sum_x2 += x[l] * x[l]
    sigma2 = sum_x2 / f32(QK_K) if is_q2 else f32(2.0) * sum_x2 / f32(QK_K)
    for l in range(QK_K):
        weights[l] = qw[l] * np.sqrt(sigma2 + x[l] * x[l])


@njit(**JIT_OPTIONS)
def _quantize_by_max(v, sc_max, codes):
    """The reference's ``_quantize_by_max``: fills ``codes``, returns the fp16 bits of the step."""
    vmax = f32(0.0)
    for a in v:
        if a > vmax:
            vmax = a
    if not vmax > 0:
        codes[:] = 0
        return rounding.fp16_bits(f32(0.0))
    iscale = f32(sc_max) / vmax
    for j in range(v.shape[0]):
        codes[j] = min(rounding.nearest_int(iscale * v[j]), sc_max)
    return rounding.fp16_bits(vmax / f32(sc_max))


@njit(**JIT_OPTIONS)
def _quantize_block(x, qw, is_q2, nmax, sub, sc_max, rmin, rdelta, nstep, use_mad,
                    weights, scales, mins, sw, ls, lm, L, Laux):
    """The reference's ``quantize_block`` with caller-owned work arrays.

    x : float32 (256,); qw : float32 (256,) or None; weights : float32 (256,);
    scales, mins, sw : float32 (n_sub,); ls, lm : uint8 (n_sub,);
    L : uint8 (256,); Laux : uint8 (sub,). Fills ``ls``, ``lm`` and ``L``
    and returns the fp16 bits ``(d, dmin)``.
    """
    n_sub = QK_K // sub
    _search_weights(x, qw, is_q2, sub, weights)
    for j in range(n_sub):
        a, b = sub * j, sub * (j + 1)
        if qw is None:
            scales[j], mins[j] = ggml_search.make_qkx2_quants(
                sub, nmax, x[a:b], weights[a:b], L[a:b], Laux, rmin, rdelta, nstep, use_mad)
        else:
            scales[j], mins[j] = ggml_search.make_qkx3_quants(
                sub, nmax, x[a:b], weights[a:b], L[a:b], Laux, rmin, rdelta, nstep, use_mad)
    if qw is None:
        d = _quantize_by_max(scales, sc_max, ls)
        dmin = _quantize_by_max(mins, sc_max, lm)
    else:
        for j in range(n_sub):
            s = f32(0.0)
            for l in range(sub * j, sub * (j + 1)):
                s += weights[l]
            sw[j] = s
        d = rounding.fp16_bits(ggml_search.make_qp_quants(n_sub, sc_max, scales, ls, sw))
        dmin = rounding.fp16_bits(ggml_search.make_qp_quants(n_sub, sc_max, mins, lm, sw))
    d_value, dmin_value = FP16_TABLE[d], FP16_TABLE[dmin]
    for j in range(n_sub):  # requantize against the decoded scale and min
        step = d_value * f32(ls[j])
        if step == 0:
            continue
        shift = dmin_value * f32(lm[j])
        for l in range(sub * j, sub * (j + 1)):
            q = np.rint((x[l] + shift) / step)  # nearest_int; ggml codes inf/nan (fp16 overflow) 0
            L[l] = min(f32(nmax), max(f32(0.0), q)) if np.isfinite(q) else 0
    return d, dmin


@njit(**JIT_OPTIONS)
def _write_fp16(b, off, bits):
    b[off] = bits & 0xFF
    b[off + 1] = bits >> 8


@njit(**JIT_OPTIONS)
def _pack_scale_min_k4(ls, lm, b, off):
    """The reference's ``pack_scale_min_k4`` into ``b[off:off+12]``."""
    for j in range(4):
        b[off + j] = ls[j] | ((ls[j + 4] >> 4) << 6)
        b[off + 4 + j] = lm[j] | ((lm[j + 4] >> 4) << 6)
        b[off + 8 + j] = (ls[j + 4] & 0xF) | ((lm[j + 4] & 0xF) << 4)


@njit(**JIT_OPTIONS)
def _pack_q2_k(d, dmin, ls, lm, L, b, o):
    """One Q2_K block into ``b[o:o+84]`` (bit maps in the reference)."""
    for j in range(16):
        b[o + j] = ls[j] | (lm[j] << 4)
    for half in range(2):
        for l in range(32):
            k = 128 * half + l
            b[o + 16 + 32 * half + l] = L[k] | (L[k + 32] << 2) | (L[k + 64] << 4) | (L[k + 96] << 6)
    _write_fp16(b, o + 80, d)
    _write_fp16(b, o + 82, dmin)


@njit(**JIT_OPTIONS)
def _pack_q4_k(d, dmin, ls, lm, L, b, o):
    """One Q4_K block into ``b[o:o+144]`` (bit maps in the reference)."""
    _write_fp16(b, o, d)
    _write_fp16(b, o + 2, dmin)
    _pack_scale_min_k4(ls, lm, b, o + 4)
    for c in range(4):
        for l in range(32):
            b[o + 16 + 32 * c + l] = L[64 * c + l] | (L[64 * c + 32 + l] << 4)


@njit(**JIT_OPTIONS)
def _pack_q5_k(d, dmin, ls, lm, L, b, o):
    """One Q5_K block into ``b[o:o+176]`` (bit maps in the reference)."""
    _write_fp16(b, o, d)
    _write_fp16(b, o + 2, dmin)
    _pack_scale_min_k4(ls, lm, b, o + 4)
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
    The work arrays are allocated once per row.
    """
    n_sub = QK_K // p.sub
    weights = np.empty(QK_K, dtype=np.float32)
    scales = np.empty(n_sub, dtype=np.float32)
    mins = np.empty(n_sub, dtype=np.float32)
    sw = np.empty(n_sub, dtype=np.float32)
    ls = np.empty(n_sub, dtype=np.uint8)
    lm = np.empty(n_sub, dtype=np.uint8)
    L = np.empty(QK_K, dtype=np.uint8)
    Laux = np.empty(p.sub, dtype=np.uint8)
    type_size = out.shape[0] // (x.shape[0] // QK_K)
    for i in range(x.shape[0] // QK_K):
        xb = x[QK_K * i:QK_K * (i + 1)]
        if imatrix is None:
            rmin, rdelta, nstep, use_mad = p.ref_search
            d, dmin = _quantize_block(xb, None, bits == 2, p.nmax, p.sub, p.sc_max,
                                      rmin, rdelta, nstep, use_mad,
                                      weights, scales, mins, sw, ls, lm, L, Laux)
        else:
            rmin, rdelta, nstep, use_mad = IMATRIX_SEARCH
            d, dmin = _quantize_block(xb, imatrix[QK_K * i:QK_K * (i + 1)], bits == 2,
                                      p.nmax, p.sub, p.sc_max, rmin, rdelta, nstep, use_mad,
                                      weights, scales, mins, sw, ls, lm, L, Laux)
        if bits == 2:
            _pack_q2_k(d, dmin, ls, lm, L, out, i * type_size)
        elif bits == 4:
            _pack_q4_k(d, dmin, ls, lm, L, out, i * type_size)
        else:
            _pack_q5_k(d, dmin, ls, lm, L, out, i * type_size)


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


def _quantize(kernel, x, imatrix, type_size):
    out = np.empty((x.shape[0], x.shape[1] // QK_K * type_size), dtype=np.uint8)
    kernel(x, imatrix, out)
    return out


def quantize_q2_k(x: npt.NDArray[np.float32],
                  imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    """Quantize rows to Q2_K, byte-identical to ggml (see the reference).

    Parameters
    ----------
    x : ndarray, shape (n_rows, n_cols), float32, C-contiguous
        Weights; n_cols a multiple of 256.
    imatrix : ndarray, shape (n_cols,), float32, or None
        Importance of each column.

    Returns
    -------
    ndarray, shape (n_rows, n_cols // 256 * 84), uint8

    Examples
    --------
    >>> x = np.linspace(-1, 1, 512, dtype=np.float32).reshape(2, 256)
    >>> quantize_q2_k(x).shape
    (2, 84)
    """
    return _quantize(_quantize_q2_k, x, imatrix, Q2_K_SIZE)


def quantize_q4_k(x: npt.NDArray[np.float32],
                  imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    """Quantize rows to Q4_K, byte-identical to ggml (see the reference).

    Parameters
    ----------
    x : ndarray, shape (n_rows, n_cols), float32, C-contiguous
        Weights; n_cols a multiple of 256.
    imatrix : ndarray, shape (n_cols,), float32, or None
        Importance of each column.

    Returns
    -------
    ndarray, shape (n_rows, n_cols // 256 * 144), uint8

    Examples
    --------
    >>> x = np.linspace(-1, 1, 512, dtype=np.float32).reshape(2, 256)
    >>> quantize_q4_k(x).shape
    (2, 144)
    """
    return _quantize(_quantize_q4_k, x, imatrix, Q4_K_SIZE)


def quantize_q5_k(x: npt.NDArray[np.float32],
                  imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
    """Quantize rows to Q5_K, byte-identical to ggml (see the reference).

    Parameters
    ----------
    x : ndarray, shape (n_rows, n_cols), float32, C-contiguous
        Weights; n_cols a multiple of 256.
    imatrix : ndarray, shape (n_cols,), float32, or None
        Importance of each column.

    Returns
    -------
    ndarray, shape (n_rows, n_cols // 256 * 176), uint8

    Examples
    --------
    >>> x = np.linspace(-1, 1, 512, dtype=np.float32).reshape(2, 256)
    >>> quantize_q5_k(x).shape
    (2, 176)
    """
    return _quantize(_quantize_q5_k, x, imatrix, Q5_K_SIZE)


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
            d = _read_fp16(b, o + 80)
            dmin = _read_fp16(b, o + 82)
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
            d = _read_fp16(b, o)
            dmin = _read_fp16(b, o + 2)
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
            d = _read_fp16(b, o)
            dmin = _read_fp16(b, o + 2)
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


def _dequantize(kernel, packed, type_size):
    y = np.empty((packed.shape[0], packed.shape[1] // type_size * QK_K), dtype=np.float32)
    kernel(packed, y)
    return y


def dequantize_q2_k(packed: npt.NDArray[np.uint8]) -> np.ndarray:
    """ggml's ``dequantize_row_q2_K`` on each row (see the reference).

    Parameters
    ----------
    packed : ndarray, shape (n_rows, n_blocks * 84), uint8, C-contiguous

    Returns
    -------
    ndarray, shape (n_rows, n_blocks * 256), float32

    Examples
    --------
    >>> x = np.linspace(-1, 1, 256, dtype=np.float32).reshape(1, 256)
    >>> dequantize_q2_k(quantize_q2_k(x)).shape
    (1, 256)
    """
    return _dequantize(_dequantize_q2_k, packed, Q2_K_SIZE)


def dequantize_q4_k(packed: npt.NDArray[np.uint8]) -> np.ndarray:
    """ggml's ``dequantize_row_q4_K`` on each row (see the reference).

    Parameters
    ----------
    packed : ndarray, shape (n_rows, n_blocks * 144), uint8, C-contiguous

    Returns
    -------
    ndarray, shape (n_rows, n_blocks * 256), float32

    Examples
    --------
    >>> x = np.linspace(-1, 1, 256, dtype=np.float32).reshape(1, 256)
    >>> dequantize_q4_k(quantize_q4_k(x)).shape
    (1, 256)
    """
    return _dequantize(_dequantize_q4_k, packed, Q4_K_SIZE)


def dequantize_q5_k(packed: npt.NDArray[np.uint8]) -> np.ndarray:
    """ggml's ``dequantize_row_q5_K`` on each row (see the reference).

    Parameters
    ----------
    packed : ndarray, shape (n_rows, n_blocks * 176), uint8, C-contiguous

    Returns
    -------
    ndarray, shape (n_rows, n_blocks * 256), float32

    Examples
    --------
    >>> x = np.linspace(-1, 1, 256, dtype=np.float32).reshape(1, 256)
    >>> dequantize_q5_k(quantize_q5_k(x)).shape
    (1, 256)
    """
    return _dequantize(_dequantize_q5_k, packed, Q5_K_SIZE)

"""Numba twins of :mod:`qviz.formats.gguf_k_sym`: Q3_K and Q6_K.

Same public names and results, bit for bit, as the numpy reference: rows run
in parallel (``prange``), each row works in scratch arrays allocated once, and
the sub-block searches are the shared ``make_q3_quants`` / ``make_qx_quants``
of :mod:`qviz.formats.ggml_search`, compiled (:mod:`qviz.kernels.numba.search`
registers them with numba). The bit layouts are drawn in the
reference module; the loops here follow them byte by byte.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit, prange

from qviz.formats.ggml_search import GROUP_MAX_EPS, make_q3_quants, make_qx_quants
from qviz.formats.rounding import fp16_bits, fp16_value, nearest_int
from qviz.formats.spec import FORMATS, QK_K
from qviz.kernels.numba.search import JIT_OPTIONS  # also teaches numba the functions above

SUB = 16  # weights per sub-block
N_SUB = QK_K // SUB  # sub-blocks per super-block
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
    out[108] = d_bits & 0xFF
    out[109] = d_bits >> 8


@njit(**JIT_OPTIONS)
def _q3_k_block(x, qw, use_imatrix, L, scales, sw, weight, sc, out):
    """Quantize one super-block x (256,) into ``out`` (110,) (ggml quantize_row_q3_K_ref / _impl).

    qw : float32 (256,) importance (read only if ``use_imatrix``); L, sc : int8
    scratch (256,), (16,); scales, sw : float32 (16,); weight : float32 (256,).
    """
    if use_imatrix:
        sumx2 = np.float32(0.0)
        for i in range(QK_K):
            sumx2 += x[i] * x[i]
        sigma2 = np.float32(2.0) * sumx2 / np.float32(QK_K)
        for i in range(QK_K):
            weight[i] = qw[i] * np.sqrt(sigma2 + x[i] * x[i])
        for j in range(N_SUB):
            s = np.float32(0.0)
            for i in range(SUB * j, SUB * (j + 1)):
                s += weight[i]
            sw[j] = s
            scales[j] = make_qx_quants(SUB, 4, x[SUB * j:], L[SUB * j:], 1, weight[SUB * j:])
        d_bits = fp16_bits(make_qx_quants(N_SUB, 32, scales, sc, 1, sw))
    else:
        for j in range(N_SUB):
            scales[j] = make_q3_quants(SUB, 4, x[SUB * j:], L[SUB * j:], True)
        max_scale = _max_by_abs(scales)
        if max_scale != 0:
            iscale = np.float32(-32.0) / max_scale
            for j in range(N_SUB):
                sc[j] = max(-32, min(31, nearest_int(iscale * scales[j]))) + 32
            d_bits = fp16_bits(np.float32(1.0) / iscale)
        else:
            sc[:] = 0
            d_bits = 0
    _requantize(x, _fp16(d_bits), sc, 32, L, 4)
    _pack_q3_k(L, sc, d_bits, out)


@njit(parallel=True, **JIT_OPTIONS)
def _quantize_q3_k(x, imatrix, use_imatrix, out):
    """Rows x (n_rows, n_cols) float32 -> out (n_rows, n_blocks * 110) uint8."""
    n_blocks = x.shape[1] // QK_K
    for r in prange(x.shape[0]):
        L = np.zeros(QK_K, dtype=np.int8)
        sc = np.zeros(N_SUB, dtype=np.int8)
        scales = np.zeros(N_SUB, dtype=np.float32)
        sw = np.zeros(N_SUB, dtype=np.float32)
        weight = np.zeros(QK_K, dtype=np.float32)
        for i in range(n_blocks):
            qw = imatrix[QK_K * i:QK_K * (i + 1)] if use_imatrix else imatrix
            _q3_k_block(x[r, QK_K * i:QK_K * (i + 1)], qw, use_imatrix, L, scales, sw, weight, sc,
                        out[r, Q3_K_SIZE * i:Q3_K_SIZE * (i + 1)])


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
    out[208] = d_bits & 0xFF
    out[209] = d_bits >> 8


@njit(**JIT_OPTIONS)
def _q6_k_block(x, qw, use_imatrix, L, scales, sc, weight, out):
    """Quantize one super-block x (256,) into ``out`` (210,) (ggml quantize_row_q6_K_ref / _impl).

    qw : float32 (256,) importance (read only if ``use_imatrix``); L, sc : int8
    scratch (256,), (16,); scales : float32 (16,); weight : float32 (256,) scratch.
    Without an imatrix ggml weighs the error by ``x[i]*x[i]``; computing those
    products once per block instead of once per search step gives the same
    float32 values.
    """
    if not use_imatrix:
        for i in range(QK_K):
            weight[i] = x[i] * x[i]
        qw = weight
    for j in range(N_SUB):
        scales[j] = make_qx_quants(SUB, 32, x[SUB * j:], L[SUB * j:], 1, qw[SUB * j:])
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
def _quantize_q6_k(x, imatrix, use_imatrix, out):
    """Rows x (n_rows, n_cols) float32 -> out (n_rows, n_blocks * 210) uint8."""
    n_blocks = x.shape[1] // QK_K
    for r in prange(x.shape[0]):
        L = np.zeros(QK_K, dtype=np.int8)
        sc = np.zeros(N_SUB, dtype=np.int8)
        scales = np.zeros(N_SUB, dtype=np.float32)
        weight = np.zeros(QK_K, dtype=np.float32)
        for i in range(n_blocks):
            qw = imatrix[QK_K * i:QK_K * (i + 1)] if use_imatrix else imatrix
            _q6_k_block(x[r, QK_K * i:QK_K * (i + 1)], qw, use_imatrix, L, scales, sc, weight,
                        out[r, Q6_K_SIZE * i:Q6_K_SIZE * (i + 1)])


@njit(parallel=True, **JIT_OPTIONS)
def _dequantize_q6_k(packed, y):
    """packed (n_rows, n_blocks * 210) uint8 -> y (n_rows, n_blocks * 256) float32."""
    n_blocks = y.shape[1] // QK_K
    for r in prange(packed.shape[0]):
        for i in range(n_blocks):
            b = packed[r, Q6_K_SIZE * i:Q6_K_SIZE * (i + 1)]
            yb = y[r, QK_K * i:QK_K * (i + 1)]
            d = _fp16(np.int64(b[208]) | (np.int64(b[209]) << 8))
            for j in range(N_SUB):  # sub-block j: half h, quarter k, l from l0
                h, k, l0 = j // 8, (j % 8) // 2, SUB * (j % 2)
                ql = b[64 * h + 32 * (k % 2):]
                qh = b[128 + 32 * h:]
                s = d * np.float32(np.int8(b[192 + j]))
                for l in range(l0, l0 + SUB):
                    lo = (np.int64(ql[l]) >> (4 * (k // 2))) & 0xF
                    hi = (np.int64(qh[l]) >> (2 * k)) & 3
                    yb[128 * h + 32 * k + l] = s * np.float32((lo | (hi << 4)) - 32)


# ---------------------------------------------------------------- public

def _imatrix_arg(imatrix):
    """(array, flag) for the kernels: numba gets an empty array when there is no imatrix."""
    if imatrix is None:
        return np.zeros(0, dtype=np.float32), False
    return imatrix, True


def quantize_q3_k(x: npt.NDArray[np.float32],
                  imatrix: npt.NDArray[np.float32] | None = None) -> npt.NDArray[np.uint8]:
    """Quantize rows to Q3_K, byte-identical to ggml (see :func:`qviz.formats.gguf_k_sym.quantize_q3_k`).

    Parameters
    ----------
    x : ndarray, shape (n_rows, n_cols), float32
        C-contiguous; n_cols a multiple of 256.
    imatrix : ndarray, shape (n_cols,), float32, or None
        Importance of each column.

    Returns
    -------
    ndarray, shape (n_rows, n_cols // 256 * 110), uint8

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    >>> quantize_q3_k(x).shape
    (4, 110)
    """
    out = np.empty((x.shape[0], x.shape[1] // QK_K * Q3_K_SIZE), dtype=np.uint8)
    _quantize_q3_k(x, *_imatrix_arg(imatrix), out)
    return out


def dequantize_q3_k(packed: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """ggml's ``dequantize_row_q3_K`` over rows.

    Parameters
    ----------
    packed : ndarray, shape (n_rows, n_blocks * 110), uint8

    Returns
    -------
    ndarray, shape (n_rows, n_blocks * 256), float32

    Examples
    --------
    >>> dequantize_q3_k(np.zeros((2, 110), dtype=np.uint8)).shape
    (2, 256)
    """
    y = np.empty((packed.shape[0], packed.shape[1] // Q3_K_SIZE * QK_K), dtype=np.float32)
    _dequantize_q3_k(packed, y)
    return y


def quantize_q6_k(x: npt.NDArray[np.float32],
                  imatrix: npt.NDArray[np.float32] | None = None) -> npt.NDArray[np.uint8]:
    """Quantize rows to Q6_K, byte-identical to ggml (see :func:`qviz.formats.gguf_k_sym.quantize_q6_k`).

    Parameters
    ----------
    x : ndarray, shape (n_rows, n_cols), float32
        C-contiguous; n_cols a multiple of 256.
    imatrix : ndarray, shape (n_cols,), float32, or None
        Importance of each column.

    Returns
    -------
    ndarray, shape (n_rows, n_cols // 256 * 210), uint8

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    >>> quantize_q6_k(x).shape
    (4, 210)
    """
    out = np.empty((x.shape[0], x.shape[1] // QK_K * Q6_K_SIZE), dtype=np.uint8)
    _quantize_q6_k(x, *_imatrix_arg(imatrix), out)
    return out


def dequantize_q6_k(packed: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """ggml's ``dequantize_row_q6_K`` over rows.

    Parameters
    ----------
    packed : ndarray, shape (n_rows, n_blocks * 210), uint8

    Returns
    -------
    ndarray, shape (n_rows, n_blocks * 256), float32

    Examples
    --------
    >>> dequantize_q6_k(np.zeros((2, 210), dtype=np.uint8)).shape
    (2, 256)
    """
    y = np.empty((packed.shape[0], packed.shape[1] // Q6_K_SIZE * QK_K), dtype=np.float32)
    _dequantize_q6_k(packed, y)
    return y

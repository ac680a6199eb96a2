"""Numba twin of :mod:`qviz.formats.bnb4`: the same codes, absmax and double quantization, bit for bit.

:func:`quantize_blocks` takes two passes per row (``prange`` over rows): each
block's ``max |w|``, then (after the optional fp16 rounding, in numpy) each
weight's bucket among the table's float32 midpoints, a branch-free count of
the 15 bounds below it, mapped to its code by the table's ascending order. The
arithmetic is the reference's, in float32 and in the same order: a whole
block is multiplied by the float32 reciprocal of ``max(absmax, 1e-38)``, a
row's short last block divided by it; then clamped to [-1, 1].

:func:`quantize_absmax` sums the absmax in torch's order (:func:`torch_sum`,
compiled) and quantizes ``absmax - offset`` with the reference's
vectorized :func:`qviz.formats.bnb4.quantize_dynamic`.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from qviz.formats.bnb4 import (ABSMAX_FLOOR, BOUNDS, DQ_BLOCKSIZE, SUM_ILP, SUM_LANES, SUM_LEVELS,
                               quantize_dynamic)

F32 = np.float32
JIT_OPTIONS = {"cache": True, "error_model": "numpy"}  # C's x/0, no fastmath


@njit(parallel=True, **JIT_OPTIONS)
def _absmax(w, g):
    """``max |w|`` of every block of ``g`` columns of each row; (n_rows, n_groups) float32."""
    n_rows, n_cols = w.shape
    n_groups = (n_cols + g - 1) // g
    out = np.empty((n_rows, n_groups), dtype=F32)
    for r in prange(n_rows):
        for b in range(n_groups):
            m = F32(0)
            for j in range(b * g, min(b * g + g, n_cols)):
                a = abs(w[r, j])
                if a > m:
                    m = a
            out[r, b] = m
    return out


@njit(**JIT_OPTIONS)
def _bucket_row(x, start, stop, scale, divide, bounds, order, out):
    """Codes of ``x[start:stop]`` scaled by ``scale`` (a product, or a quotient when ``divide``).

    The bucket is the number of ``bounds`` below the clamped value (a branch-free count
    over the 15 bounds, ``searchsorted(bounds, v, "left")``), the code ``order[bucket]``.
    """
    lo, hi = F32(-1), F32(1)
    nb = bounds.shape[0]
    for j in range(start, stop):
        v = x[j] / scale if divide else x[j] * scale
        v = min(max(v, lo), hi)
        k = 0
        for m in range(nb):
            k += bounds[m] < v
        out[j] = order[k]


@njit(parallel=True, **JIT_OPTIONS)
def _codes(w, g, absmax, bounds, order, floor):
    """Codes of every weight given its block's absmax; (n_rows, n_cols) uint8."""
    n_rows, n_cols = w.shape
    full = n_cols // g * g
    out = np.empty((n_rows, n_cols), dtype=np.uint8)
    one = F32(1)
    for r in prange(n_rows):
        for b in range(absmax.shape[1]):
            den = max(absmax[r, b], floor)
            start = b * g
            if start < full:  # a whole block: times the float32 reciprocal
                _bucket_row(w[r], start, start + g, one / den, False, bounds, order, out[r])
            else:  # the short last block: divided
                _bucket_row(w[r], start, n_cols, den, True, bounds, order, out[r])
    return out


def quantize_blocks(w: np.ndarray, group_size: int, quant_type: str = "nf4",
                    absmax: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """Codes uint8 (n_rows, n_cols) and absmax float32 (n_rows, n_groups): :func:`qviz.formats.bnb4.quantize_blocks`."""
    w = np.ascontiguousarray(w, dtype=F32)
    g = int(group_size)
    amax = _absmax(w, g)
    if absmax == "float16":
        amax = amax.astype(np.float16).astype(F32)
    elif w.shape[1] % g:  # the short last block's absmax is kept clamped
        amax[:, -1] = np.maximum(amax[:, -1], ABSMAX_FLOOR)
    bounds, order = BOUNDS[quant_type]
    codes = _codes(w, g, amax, bounds, order.astype(np.uint8), ABSMAX_FLOOR)
    return codes, amax


@njit(**JIT_OPTIONS)
def _multi_row_sum(x, start, size, stride, width):
    """torch's ``multi_row_sum`` of ``size`` rows of ``width`` float32 at ``x[start + i*stride + k]``."""
    levels = SUM_LEVELS
    n = size - 1
    log2 = 0
    while n > 0:
        log2 += 1
        n >>= 1
    power = max(4, log2 // levels)
    step = 1 << power
    mask = step - 1
    acc = np.zeros((levels, width), dtype=F32)
    i = 0
    while i + step <= size:
        for _ in range(step):
            base = start + i * stride
            for k in range(width):
                acc[0, k] += x[base + k]
            i += 1
        for j in range(1, levels):
            for k in range(width):
                acc[j, k] += acc[j - 1, k]
                acc[j - 1, k] = F32(0)
            if i & (mask << (j * power)):
                break
    while i < size:
        base = start + i * stride
        for k in range(width):
            acc[0, k] += x[base + k]
        i += 1
    for j in range(1, levels):
        for k in range(width):
            acc[0, k] += acc[j, k]
    return acc[0]


@njit(**JIT_OPTIONS)
def _row_sum(x, size, lanes):
    """torch's ``row_sum`` of ``size`` vectors of ``lanes`` float32 (``lanes`` = 1: scalars)."""
    ilp = SUM_ILP
    n_ilp = size // ilp
    partial = _multi_row_sum(x, 0, n_ilp, ilp * lanes, ilp * lanes)  # (ilp * lanes,): ilp vectors side by side
    for i in range(n_ilp * ilp, size):
        for k in range(lanes):
            partial[k] += x[i * lanes + k]
    for m in range(1, ilp):
        for k in range(lanes):
            partial[k] += partial[m * lanes + k]
    return partial[:lanes]


@njit(**JIT_OPTIONS)
def torch_sum(x):
    """:func:`qviz.formats.bnb4.torch_sum` compiled: x (n,) float32 -> float32."""
    n = x.shape[0]
    lanes = SUM_LANES
    if n < lanes:
        return F32(0) + _row_sum(x, n, 1)[0]
    n_vec = n // lanes
    v = _row_sum(x, n_vec, lanes)
    acc = F32(0)
    for i in range(n_vec * lanes, n):
        acc += x[i]
    for k in range(lanes):
        acc += v[k]
    return F32(0) + acc


def quantize_absmax(absmax: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """:func:`qviz.formats.bnb4.quantize_absmax` with the sum compiled: (q uint8, absmax2 float32, offset)."""
    a = np.ascontiguousarray(absmax, dtype=F32).reshape(-1)
    offset = F32(torch_sum(a) / F32(a.size))
    q, absmax2 = quantize_dynamic((a - offset).astype(F32), DQ_BLOCKSIZE)
    return q, absmax2, offset

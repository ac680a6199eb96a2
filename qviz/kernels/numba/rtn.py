"""Numba twin of :mod:`qviz.formats.rtn`: the same scales, zeros and codes, bit for bit.

One fused pass per row (``prange`` over rows): for each group, its min and
max, then its scale and zero, then its codes, while the group is still in
cache. The arithmetic is the reference's, in float32 and in the same order:

* ``lo = min(min(w), 0)``, ``hi = max(max(w), 0)``; the symmetric range;
* ``scale = (hi - lo) / maxq``, and where that is 0 (an all-zero group, or a
  subnormal range whose step underflows) the range [-1, 1] instead;
* ``zero = rint(-lo / scale)`` or ``(maxq + 1) / 2``;
* ``code = clamp(rint(w / scale) + zero, 0, maxq)``.

``np.rint`` is round half to even, as in the reference. A range near float32's
maximum gives an inf scale here as there; the wrapper then raises the
reference's error (:func:`qviz.formats.rtn.check_grid`, run on the scales and
zeros). The sign of a zero minimum never shows: like numpy's
``minimum(-0.0, 0.0)``, ``lo`` is then +0.0.

:func:`dequantize` decodes ``scale * (code - zero)`` in float32, bit for bit
:meth:`qviz.result.QuantResult.dequantize` of such a result.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit, prange

from qviz.formats.rtn import check_grid
from qviz.kernels.numba.buffers import float_output

F32 = np.float32
JIT_OPTIONS = {"cache": True, "error_model": "numpy"}  # C's x/0 (inf or nan), no fastmath


@njit(**JIT_OPTIONS)
def _params(mn, mx, maxq, sym):
    """Scale and zero of a group whose raw min and max are ``mn``, ``mx`` (float32 scalars)."""
    lo = mn if mn < F32(0) else F32(0)  # np.minimum(mn, 0): +0.0 unless negative
    hi = mx if mx > F32(0) else F32(0)
    if sym:
        hi = max(abs(lo), hi)
        if lo < F32(0):
            lo = -hi
    scale = (hi - lo) / maxq
    if scale == F32(0):  # all zero, or a step that underflows: [-1, 1]
        lo, hi = F32(-1), F32(1)
        scale = (hi - lo) / maxq
    if sym:
        zero = (maxq + F32(1)) / F32(2)
    else:
        zero = np.rint(-lo / scale)
    return scale, zero


@njit(**JIT_OPTIONS)
def _min_max(w):
    """Min and max of a float32 vector."""
    mn = w[0]
    mx = mn
    for j in range(1, w.shape[0]):
        v = w[j]
        mn = v if v < mn else mn
        mx = v if v > mx else mx
    return mn, mx


@njit(**JIT_OPTIONS)
def _encode(w, scale, zero, maxq, codes):
    """``codes[j] = clamp(rint(w[j] / scale) + zero, 0, maxq)`` (nan -> 0); float32 in, uint8 out."""
    for j in range(w.shape[0]):
        q = np.rint(w[j] / scale) + zero
        q = q if q > F32(0) else F32(0)  # also nan -> 0
        q = q if q < maxq else maxq
        codes[j] = np.uint8(q)


# The helpers loop over contiguous 1-D slices: LLVM vectorizes those loops,
# not the same loops written with 2-D indices w[r, j] (ten times slower).

@njit(parallel=True, **JIT_OPTIONS)
def _quantize_groups(w, maxq, sym, group_size, scales, zeros, codes):
    """Per-group RTN of every row.

    w : float32 (n_rows, n_cols); maxq : float32; sym : bool; group_size : int
    scales, zeros : float32 (n_rows, n_groups), written; codes : uint8 (n_rows, n_cols), written
    """
    n_rows, n_cols = w.shape
    for r in prange(n_rows):
        for g in range(scales.shape[1]):
            start = g * group_size
            stop = min(start + group_size, n_cols)
            mn, mx = _min_max(w[r, start:stop])
            scale, zero = _params(mn, mx, maxq, sym)
            scales[r, g] = scale
            zeros[r, g] = zero
            _encode(w[r, start:stop], scale, zero, maxq, codes[r, start:stop])


@njit(parallel=True, **JIT_OPTIONS)
def _tensor_min_max(w):
    """Min and max of all of ``w`` (float32 (n_rows, n_cols)), rows in parallel."""
    n_rows = w.shape[0]
    row_min = np.empty(n_rows, np.float32)
    row_max = np.empty(n_rows, np.float32)
    for r in prange(n_rows):
        row_min[r], row_max[r] = _min_max(w[r])
    return row_min.min(), row_max.max()


@njit(parallel=True, **JIT_OPTIONS)
def _encode_rows(w, scale, zero, maxq, codes):
    """Codes of every row with one scale and zero (per tensor)."""
    for r in prange(w.shape[0]):
        _encode(w[r], scale, zero, maxq, codes[r])


def choose_params_and_quantize(w: npt.NDArray[np.float32], bits: int, *, sym: bool = False,
                               group_size: int = 128, per_tensor: bool = False
                               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`qviz.formats.rtn.choose_params` then :func:`qviz.formats.rtn.quantize`, fused.

    Parameters
    ----------
    w : ndarray, shape (n_rows, n_cols), float32, C-contiguous
    bits : int
        2..8.
    sym : bool
    group_size : int
        1..n_cols columns per group (n_cols: per channel); the last group may be shorter.
    per_tensor : bool
        One scale and zero for the whole matrix (``group_size`` is then ignored).

    Returns
    -------
    codes : ndarray, shape (n_rows, n_cols), uint8
    scales, zeros : ndarray, shape (n_rows, n_groups) or (1, 1), float32

    Raises
    ------
    ValueError
        A group whose grid does not fit float32, as the reference
        (:func:`qviz.formats.rtn.check_grid`).

    Examples
    --------
    >>> w = np.array([[-1.0, 0.5, 2.0]], dtype=np.float32)
    >>> codes, s, z = choose_params_and_quantize(w, 2, group_size=3)
    >>> codes.tolist(), float(s[0, 0]), float(z[0, 0])
    ([[0, 1, 3]], 1.0, 1.0)
    """
    w = np.ascontiguousarray(w, dtype=np.float32)
    n_rows, n_cols = w.shape
    maxq = F32(2**bits - 1)
    codes = np.empty((n_rows, n_cols), np.uint8)
    if per_tensor:
        mn, mx = _tensor_min_max(w)  # numba returns Python floats: back to float32
        scale, zero = _params(F32(mn), F32(mx), maxq, bool(sym))
        scales, zeros = np.full((1, 1), scale, np.float32), np.full((1, 1), zero, np.float32)
        check_grid(scales, zeros, bits, None)
        _encode_rows(w, F32(scale), F32(zero), maxq, codes)
        return codes, scales, zeros
    n_groups = -(-n_cols // group_size)
    scales = np.empty((n_rows, n_groups), np.float32)
    zeros = np.empty((n_rows, n_groups), np.float32)
    _quantize_groups(w, maxq, bool(sym), int(group_size), scales, zeros, codes)
    check_grid(scales, zeros, bits, group_size)
    return codes, scales, zeros


@njit(**JIT_OPTIONS)
def _decode(codes, scale, zero, out):
    """``out[j] = scale * (codes[j] - zero)`` in float32 (1-D slices)."""
    for j in range(codes.shape[0]):
        out[j] = scale * (F32(codes[j]) - zero)


@njit(parallel=True, **JIT_OPTIONS)
def _dequantize_groups(codes, scales, zeros, group_size, out):
    """Decode every row.

    codes : uint8 (n_rows, n_cols); scales, zeros : float32 (n_rows | 1, n_groups); out : float32, written
    """
    n_rows, n_cols = codes.shape
    param_step = 0 if scales.shape[0] == 1 else 1  # per tensor: one row of parameters for all rows
    for r in prange(n_rows):
        p = r * param_step
        for g in range(scales.shape[1]):
            start = g * group_size
            stop = min(start + group_size, n_cols)
            _decode(codes[r, start:stop], scales[p, g], zeros[p, g], out[r, start:stop])


def dequantize(codes: npt.NDArray[np.uint8], scales: np.ndarray, zeros: np.ndarray,
               group_size: int, out: np.ndarray | None = None) -> np.ndarray:
    """``scale * (code - zero)`` per group, in float32.

    Parameters
    ----------
    codes : ndarray, shape (n_rows, n_cols), uint8
    scales, zeros : ndarray, shape (n_rows, n_groups) or (1, n_groups), float32
        A symmetric result's zeros are its implied zero, ``2**(bits-1)``, everywhere.
    group_size : int
        Consecutive columns per group (the last group may be shorter).
    out : ndarray, shape (n_rows, n_cols), float32, C-contiguous, optional
        Written instead of a new array (see :mod:`qviz.kernels.numba.buffers`).

    Returns
    -------
    ndarray, shape (n_rows, n_cols), float32
        Bit for bit :meth:`qviz.result.QuantResult.dequantize`.

    Examples
    --------
    >>> s, z = np.array([[1.0]], np.float32), np.array([[1.0]], np.float32)
    >>> dequantize(np.array([[0, 2, 3]], np.uint8), s, z, 3).tolist()
    [[-1.0, 1.0, 2.0]]
    """
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    out = float_output(codes.shape, out)
    _dequantize_groups(codes, np.ascontiguousarray(scales, dtype=np.float32),
                       np.ascontiguousarray(zeros, dtype=np.float32), int(group_size), out)
    return out

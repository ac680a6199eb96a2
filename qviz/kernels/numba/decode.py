"""Numba twin of :meth:`qviz.result.QuantResult.dequantize` for a fixed codebook: ``scale · codebook[code]``.

The decode of NF4, FP4, the float tensor formats (FP8, MX, NVFP4) and any
result with a 1-D codebook and groups of consecutive columns: one float32
product per weight, as the reference computes it, so the same bits. Rows run
in parallel (``prange``); the affine rule's twin is
:func:`qviz.kernels.numba.rtn.dequantize`.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit, prange

from qviz.kernels.numba.buffers import float_output


@njit(parallel=True, cache=True)
def _decode_rows(codes, scales, codebook, group_size, out):
    n_rows, n_cols = codes.shape
    param_step = 0 if scales.shape[0] == 1 else 1  # per tensor: one row of scales for all rows
    for r in prange(n_rows):
        p = r * param_step
        for g in range(scales.shape[1]):
            s = scales[p, g]
            for j in range(g * group_size, min((g + 1) * group_size, n_cols)):
                out[r, j] = s * codebook[codes[r, j]]
    return out


def dequantize_codebook(codes: npt.NDArray[np.uint8], scales: np.ndarray, codebook: np.ndarray,
                        group_size: int, out: np.ndarray | None = None) -> np.ndarray:
    """``scale · codebook[code]`` per group, in float32.

    Parameters
    ----------
    codes : ndarray, shape (n_rows, n_cols), uint8
    scales : ndarray, shape (n_rows, n_groups) or (1, n_groups), float32
    codebook : ndarray, shape (n_levels,), float32
        Indexed by every code (``n_levels`` > the largest code).
    group_size : int
        Consecutive columns per group (the last group may be shorter).
    out : ndarray, shape (n_rows, n_cols), float32, C-contiguous, optional

    Returns
    -------
    ndarray, shape (n_rows, n_cols), float32
        Bit for bit :meth:`qviz.result.QuantResult.dequantize` of such a result.

    Examples
    --------
    >>> cb = np.array([-1.0, 0.0, 0.5, 2.0], np.float32)
    >>> dequantize_codebook(np.array([[0, 3, 2]], np.uint8), np.array([[2.0]], np.float32), cb, 3).tolist()
    [[-2.0, 4.0, 1.0]]
    """
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    out = float_output(codes.shape, out)
    return _decode_rows(codes, np.ascontiguousarray(scales, dtype=np.float32),
                        np.ascontiguousarray(codebook, dtype=np.float32), int(group_size), out)

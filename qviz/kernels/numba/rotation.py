"""Numba twin of :func:`qviz.rotation.fwht` with the signs of a rotation: the same bits.

Each row (``prange``) is copied into a scratch row, multiplied by its signs
(``apply``) or not (``restore``), transformed by the same float32 butterfly
stages as the reference, in the same order (stage by stage, ``(a + b, a - b)``),
scaled by ``float32(1/sqrt(block))``, and multiplied by its signs last for
``restore``. Sign flips are exact, so only the butterflies and the one scale
round, identically in both.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

F32 = np.float32


@njit(cache=True, parallel=True)
def _rotate(x, signs, block, signs_first, out):
    rows, cols = x.shape
    scale = F32(1.0 / np.sqrt(block))
    for i in prange(rows):
        y = out[i]
        for j in range(cols):
            y[j] = x[i, j] * signs[j] if signs_first else x[i, j]
        for start in range(0, cols, block):
            h = 1
            while h < block:
                for k in range(start, start + block, 2 * h):
                    for j in range(k, k + h):
                        a = y[j]
                        b = y[j + h]
                        y[j] = a + b
                        y[j + h] = a - b
                h *= 2
        for j in range(cols):
            y[j] = y[j] * scale
            if not signs_first:
                y[j] = y[j] * signs[j]
    return out


def rotate_rows(x: np.ndarray, signs: np.ndarray, block: int, signs_first: bool) -> np.ndarray:
    """``fwht(x ⊙ signs)`` (``signs_first``) or ``fwht(x) ⊙ signs`` of every row.

    Parameters
    ----------
    x : ndarray, shape (n_rows, n_cols), float32, C-contiguous
    signs : ndarray, shape (n_cols,), float32
    block : int
        A power of two dividing ``n_cols``.
    signs_first : bool

    Returns
    -------
    ndarray, shape (n_rows, n_cols), float32
    """
    out = np.empty(x.shape, dtype=np.float32)
    return _rotate(np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(signs, dtype=np.float32),
                   int(block), bool(signs_first), out)

"""Calibration statistics of a layer's input activations.

llama.cpp's importance matrix is the per-column mean of squared activations
(``llama-imatrix`` accumulates Σx² and divides by the count); GPTQ's Hessian
and AWQ's mean |x| come from the same activations.
"""
from __future__ import annotations

import numpy as np

from qviz.arrays import as_activations


def imatrix(x, n_cols: int | None = None) -> np.ndarray:
    """llama.cpp's importance vector: the mean of squared activations per input column.

    Parameters
    ----------
    x : array_like, shape (n_samples, n_cols) or (batch, seq, n_cols)
        Inputs of one linear layer.
    n_cols : int, optional
        Expected width (the weight's input columns), checked when given.

    Returns
    -------
    ndarray, shape (n_cols,), float32
        Accumulated in float64, as ``mean(x**2, axis=0)``.

    Examples
    --------
    >>> imatrix(np.array([[1.0, 2.0], [3.0, 0.0]], dtype=np.float32))
    array([5., 2.], dtype=float32)
    """
    x = as_activations(x, np.shape(x)[-1] if n_cols is None else n_cols, name="x")
    return np.mean(np.square(x, dtype=np.float64), axis=0).astype(np.float32)

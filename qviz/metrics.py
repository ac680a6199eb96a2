"""Error and size measures of a quantized weight.

All functions take float32 arrays (or anything :func:`qviz.arrays.as_weight`
accepts) and accumulate in float64, so the numbers do not depend on the
summation order of a kernel.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from qviz.arrays import as_activations, as_weight


def _pair(w, w_hat):
    w = as_weight(w, name="w")
    w_hat = as_weight(w_hat, name="w_hat")
    if w.shape != w_hat.shape:
        raise ValueError(f"w has shape {w.shape} but w_hat has {w_hat.shape}")
    return w.astype(np.float64), w_hat.astype(np.float64)


def mse(w, w_hat) -> float:
    """Mean squared weight error ``mean((w - ŵ)²)``."""
    w, w_hat = _pair(w, w_hat)
    return float(np.mean((w - w_hat) ** 2))


def sqnr_db(w, w_hat) -> float:
    """Signal-to-quantization-noise ratio ``10·log10(Σw² / Σ(w - ŵ)²)`` in dB (inf if exact)."""
    w, w_hat = _pair(w, w_hat)
    noise = float(np.sum((w - w_hat) ** 2))
    signal = float(np.sum(w ** 2))
    if noise == 0.0:
        return float("inf")
    return float(10.0 * np.log10(signal / noise))


def max_abs_error(w, w_hat) -> float:
    """Largest ``|w - ŵ|``."""
    w, w_hat = _pair(w, w_hat)
    return float(np.max(np.abs(w - w_hat)))


def relative_output_error(w, w_hat, x) -> float:
    """Relative output error ``‖(W - Ŵ)Xᵀ‖² / ‖WXᵀ‖²`` on activations.

    Parameters
    ----------
    w, w_hat : array_like, shape (n_out, n_in)
    x : array_like, shape (n_samples, n_in)
        Inputs of the layer (higher ranks are flattened to rows).
    """
    w, w_hat = _pair(w, w_hat)
    x = as_activations(x, w.shape[1], name="x").astype(np.float64)
    ref = x @ w.T
    err = x @ (w - w_hat).T
    denom = float(np.sum(ref ** 2))
    if denom == 0.0:
        raise ValueError("W·Xᵀ is all zero: the relative output error is undefined")
    return float(np.sum(err ** 2)) / denom


class ModelMemory(NamedTuple):
    """Memory of a model at some bits per weight, in bytes (1 GB = 1e9 bytes)."""

    n_params: int
    bits_per_weight: float
    total_bytes: float
    code_bytes: float
    overhead_bytes: float

    def __str__(self) -> str:
        return (f"{self.n_params / 1e9:g}B params at {self.bits_per_weight:.4g} bpw: "
                f"{self.total_bytes / 1e9:.1f} GB ({self.code_bytes / 1e9:.1f} GB codes + "
                f"{self.overhead_bytes / 1e9:.1f} GB scales/zeros)")


def model_memory(n_params: float, bits_per_weight: float, code_bits: int | None = None) -> ModelMemory:
    """Memory of an ``n_params`` model stored at ``bits_per_weight``.

    Parameters
    ----------
    n_params : float
        Number of weights, e.g. 70e9.
    bits_per_weight : float
        Storage bits per weight including scales and zeros
        (``QuantResult.bits_per_weight``).
    code_bits : int, optional
        Bits of the codes alone; the rest is reported as overhead.

    Examples
    --------
    >>> print(model_memory(70e9, 16))
    70B params at 16 bpw: 140.0 GB (140.0 GB codes + 0.0 GB scales/zeros)
    >>> m = model_memory(70e9, 4 + 20 / 128, code_bits=4)  # INT4, g128, fp16 scale + 4-bit zero
    >>> round(m.total_bytes / 1e9, 2), round(m.overhead_bytes / 1e9, 2)
    (36.37, 1.37)
    """
    if n_params <= 0 or bits_per_weight <= 0:
        raise ValueError(f"n_params and bits_per_weight must be positive, got {n_params}, {bits_per_weight}")
    code_bits = bits_per_weight if code_bits is None else code_bits
    total = n_params * bits_per_weight / 8
    codes = n_params * code_bits / 8
    return ModelMemory(int(n_params), float(bits_per_weight), total, codes, total - codes)


def summary(result, w, x=None) -> dict:
    """The numbers the explorers show for one result.

    Parameters
    ----------
    result : QuantResult
    w : array_like, shape (n_rows, n_cols)
        The original weight.
    x : array_like, shape (n_samples, n_cols), optional
        Activations for the relative output error.

    Returns
    -------
    dict
        bits_per_weight, mse, sqnr_db, max_abs_error, and relative_output_error
        when ``x`` is given.
    """
    w_hat = result.dequantize()
    out = {
        "bits_per_weight": result.bits_per_weight,
        "mse": mse(w, w_hat),
        "sqnr_db": sqnr_db(w, w_hat),
        "max_abs_error": max_abs_error(w, w_hat),
    }
    if x is not None:
        out["relative_output_error"] = relative_output_error(w, w_hat, x)
    return out

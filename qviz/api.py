"""The public entry points: ``quantize`` and ``dequantize``.

``quantize`` validates and normalizes its input once, looks the method up in
:mod:`qviz.registry` (every registered method and quant type; the built-in
ones are in :mod:`qviz.quantizers`), checks the options against the method's
schema and returns the method's :class:`QuantResult`.
"""
from __future__ import annotations

import numpy as np

from qviz import registry
from qviz.arrays import as_weight
from qviz.result import QuantResult


def method_names() -> list[str]:
    """Every method ``quantize`` accepts: the registered methods, then the quant types."""
    return list(registry.methods())


def quantize(weight, method: str = "rtn", **options) -> QuantResult:
    """Quantize a 2-D weight.

    Parameters
    ----------
    weight : ndarray, torch.Tensor or nn.Linear, shape (n_rows, n_cols)
        out × in, float16/bfloat16/float32/float64. Never modified.
    method : str
        ``"rtn"``, ``"gptq"``, ``"awq"``, ``"kmeans"``, ``"nf4"`` or a quant
        type's name (``"Q4_K"``, ``"Q8_0"``, …): any name of
        :func:`qviz.methods`. A unique case-insensitive match is accepted
        (``"q4_k"``); an unknown name raises, naming the closest ones.
    **options
        The method's options, checked against its schema
        (``qviz.methods()[method].options``): for ``"rtn"`` ``bits``,
        ``group_size``, ``sym``, ``per_tensor``; for ``"awq"`` also ``calib``,
        ``duo_scaling``, ``clip``, ``device``; for ``"kmeans"`` ``bits``,
        ``importance``; for ``"nf4"`` ``group_size``; for quant types
        ``imatrix``, ``backend``, ``fallback``.

    Returns
    -------
    QuantResult

    Examples
    --------
    >>> import numpy as np, qviz
    >>> w = np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)
    >>> qviz.quantize(w, "rtn", bits=4, group_size=128).bits_per_weight
    4.15625
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a string such as 'rtn' or 'Q4_K', got {method!r}")
    m = registry.method(method)
    w = as_weight(weight)
    return m.call(w, **options)


def dequantize(result: QuantResult) -> np.ndarray:
    """Decode a :class:`QuantResult` to float32, shape (n_rows, n_cols)."""
    if not isinstance(result, QuantResult):
        raise TypeError(f"dequantize takes a QuantResult (from qviz.quantize), got {type(result).__name__}")
    return result.dequantize()

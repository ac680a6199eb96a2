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


def quantize(weight, method: str = "rtn", *, rotate: str | None = None, rotate_block: int | None = None,
             rotate_seed: int = 0, **options) -> QuantResult:
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
    rotate : {None, "hadamard"}
        Quantize ``W·R`` for a randomized Hadamard ``R`` of the input
        dimension (QuaRot/SpinQuant; :mod:`qviz.rotation`), with any method.
        Calibration activations are rotated the same way (``X·R``); the
        result records ``R`` and decodes back to the layer's basis. An
        importance per input column (``imatrix``) does not survive a rotation
        and is refused here: give the rotated activations' one to
        :func:`quantize_rotated`.
    rotate_block : int, optional
        Hadamard block, a power of two dividing the columns (default: the
        largest).
    rotate_seed : int
        Seed of the rotation's random signs.

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
    if rotate is None:
        if rotate_block is not None:
            raise ValueError("rotate_block is the Hadamard block of a rotation: pass rotate='hadamard' too")
        return m.call(w, **options)
    return _rotated(m, w, rotate, rotate_block, rotate_seed, options)


def dequantize(result: QuantResult) -> np.ndarray:
    """Decode a :class:`QuantResult` to float32, shape (n_rows, n_cols)."""
    if not isinstance(result, QuantResult):
        raise TypeError(f"dequantize takes a QuantResult (from qviz.quantize), got {type(result).__name__}")
    return result.dequantize()


def _rotated(m: registry.Method, w: np.ndarray, kind, block, seed, options: dict) -> QuantResult:
    """``m`` on ``W·R``, its calibration rotated alike (:func:`quantize_rotated`)."""
    from qviz import rotation
    from qviz.arrays import as_activations

    if kind not in rotation.KINDS:
        raise ValueError(f"rotate={kind!r}; valid rotations: {', '.join(map(repr, rotation.KINDS))} (or None)")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"rotate_seed={seed!r} must be an integer")
    R = rotation.hadamard(w.shape[1], block, int(seed))
    options = dict(options)
    importance = m.role("importance")
    if options.get(importance) is not None:
        raise ValueError(f"{m.name}: {importance}= weighs the layer's own input columns, which a rotation "
                         f"mixes; give the importance of the rotated activations to "
                         f"qviz.api.quantize_rotated(w, {m.name!r}, R, {importance}=qviz.imatrix(R.apply(x))) "
                         f"with R = qviz.rotation.hadamard({w.shape[1]}, {R.block}, {R.seed}), or quantize "
                         f"without rotate=")
    if options.get("hessian") is not None:
        raise ValueError(f"{m.name}: a precomputed hessian= is in the layer's own basis; pass calib= "
                         f"(rotated with the weight) or quantize without rotate=")
    calib = m.role("calibration")
    if options.get(calib) is not None:
        options[calib] = R.apply(as_activations(options[calib], w.shape[1], name=calib))
    return quantize_rotated(w, m.name, R, **options)


def quantize_rotated(weight, method: str, R, **options) -> QuantResult:
    """Quantize ``W·R`` with options already in the rotated basis; the result keeps ``R``.

    What ``quantize(..., rotate="hadamard")`` runs after rotating the
    calibration activations. Call it directly to give an importance of the
    rotated columns (``imatrix=qviz.imatrix(R.apply(x))``).

    Parameters
    ----------
    weight : array_like, shape (n_rows, n_cols)
        In the layer's own basis. Never modified.
    method : str
    R : qviz.rotation.Rotation
        Acting on ``n_cols`` columns.
    **options
        The method's options; activations and importances of ``X·R``.
    """
    import dataclasses

    from qviz.rotation import Rotation

    if not isinstance(R, Rotation):
        raise TypeError(f"R must be a qviz.rotation.Rotation (qviz.rotation.hadamard(n_cols)), "
                        f"got {type(R).__name__}")
    m = registry.method(method)
    w = as_weight(weight)
    res = m.call(R.apply(w), **options)
    return dataclasses.replace(res, rotation=R, info={**res.info, "rotate": R.kind})

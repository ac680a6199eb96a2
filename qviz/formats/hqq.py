"""HQQ: Half-Quadratic Quantization, calibration-free, as the ``hqq`` package computes it on CPU.

HQQ keeps RTN's affine grid (a min-max scale per group) and moves only the
group's zero point, by a proximal solver that minimises an lp-norm (p < 1)
of the reconstruction error ``W - dequantize(quantize(W))``: the error is
split off as a sparse variable ``W_e`` (a generalised soft threshold of the
residual) and the zero is then the closed-form least-squares answer given
``W_e``. No activations are needed.

Layout
------
hqq's ``axis=1`` groups (``HQQLinear``'s default, ``BaseQuantizeConfig(axis=1)``)
are runs of ``group_size`` consecutive input columns of one row, which is what
:class:`~qviz.result.QuantResult` groups are::

    row i:  | w[i, 0 : g] | w[i, g : 2g] | ... |        g = group_size (64)
    group:  | code[0..g-1]: bits each, unsigned 0 .. 2**bits - 1          |
            | scale : float32   hqq's meta["scale"], the decode step      |
            | zero  : float32   hqq's meta["zero"], in code units, a float|

    decode  w ≈ (code - zero) * scale          (Quantizer.dequantize, float32)

hqq's ``axis=0`` (``Quantizer.quantize``'s own default) reshapes the flat
weight to ``(group_size, -1)`` and groups along the first dimension: a group
is ``group_size`` weights of one input column from rows spaced
``n_rows / group_size`` apart. Such groups are not runs of one row, so qviz
refuses ``axis=0`` with a message. A ``group_size`` that does not divide the
row is refused too: hqq's groups would then run on into the next row.

The arithmetic (hqq 0.2.8, ``hqq/core/quantize.py`` ``Quantizer.quantize``
and ``hqq/core/optimize.py`` ``optimize_weights_proximal_legacy``, the solver
``optimize=True`` uses), float32 on CPU, per group of weights ``w``:

1. start (RTN): ``inv = (1 / (max(w) - min(w))) * (2**bits - 1)``, 1 where the
   range is at most 1e-4, at most 2e4; ``zero = -min(w) * inv``, rounded to
   an integer when ``round_zero`` (``BaseQuantizeConfig`` does at 4 bits);
2. each iteration: ``q = clamp(round(w * inv + zero), 0, 2**bits - 1)``,
   ``r = (q - zero) / inv``, ``d = w - r``; the error is ``mean |d|`` over the
   whole weight; ``W_e = sign(d) * max(|d| - |d|**(p-1) / beta, 0)``;
   ``zero = mean over the group of (q - (w - W_e) * inv)``;
3. early stop: after the first iteration whose error is not below the best so
   far, stop, keeping that iteration's new zero (hqq does not roll back);
4. codes from the last zero; ``scale = 1 / inv``.

``round`` is half to even. The scale never changes; only zeros move.

Notes
-----
Badri, Shaji, "Half-Quadratic Quantization of Large Machine Learning Models",
Mobius Labs blog, 2023 (https://mobiusml.github.io/hqq_blog/), sections
"Optimization" (the half-quadratic splitting, eqs. 3-6: the generalised
soft-thresholding of the lp-norm prox and the closed-form zero). The blog's β
schedule ``beta *= kappa`` is the ``kappa`` option here; hqq 0.2.8's default
solver lists ``kappa=1.01`` in its parameters but never applies it, so the
default here is 1.0, which is what the package computes.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from qviz.arrays import check_group_size
from qviz.registry import Method, Option, register_method
from qviz.result import QuantResult

__all__ = ["LP_NORM", "BETA", "KAPPA", "ITERS", "initial_params", "solve", "codes_of",
           "check_layout", "quantize_hqq"]

#: hqq's solver defaults (``optimize_weights_proximal_legacy``'s ``opt_params``)
LP_NORM, BETA, ITERS = 0.7, 10.0, 20
#: β's growth per iteration; 1.0 is what hqq 0.2.8's default solver does (see the module notes)
KAPPA = 1.0
#: ranges at or below this get an inverse scale of 1 (hqq: "avoid small denom values")
MIN_RANGE = np.float32(1e-4)
#: the largest inverse scale (hqq: "clamp to avoid half-precision problems")
MAX_INV_SCALE = np.float32(2e4)


def check_layout(shape: tuple[int, int], group_size: int, axis: int) -> int:
    """The columns per group for a weight of ``shape``, or an error naming the fix.

    Parameters
    ----------
    shape : tuple of int
        (n_rows, n_cols).
    group_size : int
        Columns per group, -1 for one group per row.
    axis : int
        hqq's grouping axis; only 1 is a run of one row's columns.

    Returns
    -------
    int
        The group size, a divisor of ``n_cols``.
    """
    n_rows, n_cols = shape
    if axis != 1:
        raise ValueError(
            f"axis={axis!r}: hqq's axis=0 reshapes the weight to (group_size, -1) and groups "
            f"{group_size} weights of one input column taken from rows far apart; qviz's groups are "
            f"runs of consecutive input columns of one row, which is hqq's axis=1 (HQQLinear's "
            f"default, BaseQuantizeConfig(axis=1)): pass axis=1")
    g = check_group_size(group_size, n_cols)
    if n_cols % g:
        divisors = [d for d in range(min(g, n_cols), 0, -1) if n_cols % d == 0]
        raise ValueError(
            f"group_size={group_size} does not divide the rows of {n_cols} columns: hqq's groups "
            f"would run on into the next row; pass a divisor such as {divisors[0]}, or -1 for one "
            f"group per row")
    return g


def initial_params(groups: np.ndarray, bits: int, round_zero: bool) -> tuple[np.ndarray, np.ndarray]:
    """hqq's min-max start: the inverse scale and the zero of every group.

    Parameters
    ----------
    groups : ndarray, shape (n_groups, group_size), float32
        One group per row (the weight reshaped, hqq's ``axis=1``).
    bits : int
    round_zero : bool
        Round the zero to an integer (as AutoAWQ does; hqq's ``round_zero``).

    Returns
    -------
    inv_scale, zero : ndarray, shape (n_groups, 1), float32
        Quantize as ``w * inv_scale + zero``.

    Raises
    ------
    ValueError
        For a group whose range overflows float32.
    """
    lo = groups.min(axis=1, keepdims=True)  # (n_groups, 1)
    hi = groups.max(axis=1, keepdims=True)
    with np.errstate(over="ignore"):
        rng = hi - lo
    if not np.all(np.isfinite(rng)):
        g = int(np.argmax(~np.isfinite(rng)))
        raise ValueError(f"group {g} spans [{lo[g, 0]:g}, {hi[g, 0]:g}], a range beyond float32's "
                         f"largest value, where HQQ's scale would be 0; rescale the weight first")
    with np.errstate(divide="ignore", over="ignore"):  # a zero or subnormal range: replaced by 1 below
        # hqq writes max_v / denom; torch evaluates a number over a tensor as
        # reciprocal(denom) * max_v: two roundings, kept here
        inv = (np.float32(1) / rng) * np.float32((1 << bits) - 1)
    inv = np.where(np.abs(rng) <= MIN_RANGE, np.float32(1), inv)
    inv = np.minimum(inv, MAX_INV_SCALE).astype(np.float32)
    zero = (-lo * inv).astype(np.float32)
    if round_zero:
        zero = np.rint(zero)
    return inv, zero


def solve(groups: np.ndarray, inv_scale: np.ndarray, zero: np.ndarray, bits: int, *,
          iters: int = ITERS, lp_norm: float = LP_NORM, beta: float = BETA, kappa: float = KAPPA,
          early_stop: bool = True) -> tuple[np.ndarray, list[float]]:
    """The proximal solver for the zeros, in torch's float32 (the reference).

    Each tensor operation is one of hqq's, on tensors of the same shapes, so
    the rounding and the order of the sums are the package's.

    Parameters
    ----------
    groups : ndarray, shape (n_groups, group_size), float32
    inv_scale, zero : ndarray, shape (n_groups, 1), float32
        From :func:`initial_params`.
    bits : int
    iters : int
        At most this many iterations.
    lp_norm : float
        p of the lp-norm, in (0, 1].
    beta : float
        The half-quadratic penalty; the threshold is ``|d|**(p-1) / beta``.
    kappa : float
        β's growth per iteration (1.0: fixed, as hqq 0.2.8).
    early_stop : bool
        Stop after the first iteration whose error is not below the best.

    Returns
    -------
    zero : ndarray, shape (n_groups, 1), float32
        The optimised zeros.
    errors : list of float
        ``mean |w - r|`` at each iteration, before its zero update (the first
        is RTN's error on the same grid).
    """
    import torch

    w, inv, z = (torch.from_numpy(np.array(a, dtype=np.float32)) for a in (groups, inv_scale, zero))
    maxq = (1 << bits) - 1
    errors: list[float] = []
    best = math.inf
    for _ in range(iters):
        q = torch.round(w * inv + z).clamp(0, maxq)
        d = w - (q - z) / inv  # (n_groups, group_size): the residual
        a = torch.abs(d)
        err = float(a.mean())
        w_e = (a - (1.0 / beta) * a.pow(lp_norm - 1)).clamp_min(0.0) * torch.sign(d)  # lp shrink
        z = torch.mean(q - (w - w_e) * inv, dim=1, keepdim=True)
        beta *= kappa
        errors.append(err)
        if early_stop and not err < best:
            break
        best = min(best, err)
    return z.numpy(), errors


def codes_of(groups: np.ndarray, inv_scale: np.ndarray, zero: np.ndarray, bits: int) -> np.ndarray:
    """``clamp(round(w * inv_scale + zero), 0, 2**bits - 1)`` as uint8, shape of ``groups``."""
    q = np.rint(groups * inv_scale + zero)
    return np.clip(q, 0, (1 << bits) - 1).astype(np.uint8)


def quantize_hqq(w: np.ndarray, *, bits: int = 4, group_size: int = 64, axis: int = 1,
                 iters: int = ITERS, lp_norm: float = LP_NORM, beta: float = BETA, kappa: float = KAPPA,
                 round_zero: bool | None = None, early_stop: bool = True,
                 backend: str = "numba") -> QuantResult:
    """HQQ (calibration-free): RTN's grid with zeros optimised by the proximal solver.

    Equal to ``hqq.core.quantize.Quantizer.quantize(W, nbits=bits,
    group_size=group_size, axis=1, optimize=True, round_zero=round_zero,
    device="cpu")`` followed by ``Quantizer.dequantize``.

    Parameters
    ----------
    w : ndarray, shape (n_rows, n_cols), float32
    bits : int
        1..8 (hqq lists 1, 2, 3, 4, 5, 6, 8).
    group_size : int
        Consecutive input columns per group (64, ``BaseQuantizeConfig``'s),
        a divisor of ``n_cols``; -1 for one group per row.
    axis : int
        hqq's grouping axis: 1 (groups along the input columns); 0 is refused.
    iters : int
        At most this many solver iterations (hqq's 20).
    lp_norm, beta, kappa : float
        The solver's p (0.7), β (10) and β's growth per iteration (1.0; see
        the module notes).
    round_zero : bool, optional
        Round the starting zero to an integer; None: as ``BaseQuantizeConfig``
        (at 4 bits only).
    early_stop : bool
        hqq's early stop (True); False runs all ``iters``.
    backend : {"numba", "reference"}
        The fused numba solver or the readable torch one (same numbers).

    Returns
    -------
    QuantResult
        ``codes`` uint8; ``scales`` and ``zeros`` (n_rows, n_groups) float32,
        hqq's ``meta["scale"]`` and ``meta["zero"]``, also held in ``stored``
        as the package returns them (float32); ``info``: ``errors`` (the
        solver's ``mean |W - Ŵ|`` per iteration), ``rtn_error`` (that of the
        starting min-max grid, RTN at the same bits and group size),
        ``error`` (the result's) and ``iterations``.

    Examples
    --------
    >>> import numpy as np
    >>> w = np.random.default_rng(0).standard_normal((4, 128)).astype(np.float32)
    >>> r = quantize_hqq(w, bits=4, group_size=64, backend="reference")
    >>> r.codes.shape, r.scales.shape, r.bits_per_weight
    ((4, 128), (4, 2), 5.0625)
    >>> r.info["error"] < r.info["rtn_error"]
    True
    """
    n_rows, n_cols = w.shape
    g = check_layout(w.shape, group_size, axis)
    if round_zero is None:
        round_zero = bits == 4
    groups = w.reshape(-1, g)  # (n_rows * n_groups, g): hqq's W.reshape([-1, group_size])
    inv, zero0 = initial_params(groups, bits, bool(round_zero))
    params = dict(iters=iters, lp_norm=lp_norm, beta=beta, kappa=kappa, early_stop=early_stop)
    if backend == "numba":
        from qviz.kernels.numba import hqq as twin

        zero, errors = twin.solve(groups, inv, zero0, bits, **params)
        codes = twin.codes_of(groups, inv, zero, bits)
    elif backend == "reference":
        zero, errors = solve(groups, inv, zero0, bits, **params)
        codes = codes_of(groups, inv, zero, bits)
    else:
        raise ValueError(f"backend={backend!r}; valid backends: 'numba', 'reference'")
    n_groups = n_cols // g
    scales = (np.float32(1) / inv).reshape(n_rows, n_groups)  # hqq: scale = 1.0 / scale
    zeros = zero.reshape(n_rows, n_groups)
    result = QuantResult("hqq", (n_rows, n_cols), int(bits), g, codes.reshape(n_rows, n_cols),
                         scales, zeros, stored={"scale": scales, "zero": zeros})
    error = float(np.mean(np.abs(w - result.dequantize()), dtype=np.float64))
    return dataclasses.replace(result, info={
        "errors": errors, "rtn_error": errors[0], "error": error, "iterations": len(errors),
        "axis": axis, "round_zero": bool(round_zero), "lp_norm": lp_norm, "beta": beta, "kappa": kappa})


register_method(Method(
    "hqq", "HQQ", quantize_hqq,
    (Option("bits", "int", 4, "code width (hqq: 1, 2, 3, 4, 5, 6, 8)", low=1, high=8, control=True),
     Option("group_size", "int", 64, "consecutive input columns per group, a divisor of the row; "
                                      "-1 for one group per row", control=True),
     Option("axis", "int", 1, "hqq's grouping axis: 1 groups input columns (0 is not a run of "
                              "one row and is refused)", choices=(0, 1)),
     Option("iters", "int", ITERS, "at most this many solver iterations", low=1, high=1000, control=True),
     Option("lp_norm", "float", LP_NORM, "p of the lp-norm the solver minimises", low=0.1, high=1.0),
     Option("beta", "float", BETA, "the half-quadratic penalty β", low=1e-3, high=1e6),
     Option("kappa", "float", KAPPA, "β's growth per iteration (hqq 0.2.8 keeps β fixed: 1.0)",
            low=1.0, high=2.0),
     Option("round_zero", "bool", None, "round the starting zero; None: at 4 bits, as "
                                        "BaseQuantizeConfig", optional=True),
     Option("early_stop", "bool", True, "stop once the error stops falling, as hqq"),
     Option("backend", "str", "numba", "the fused numba solver or the readable torch one",
            choices=("numba", "reference"))),
    needs_calibration=False))

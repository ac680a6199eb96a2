"""Round-to-nearest affine integer quantization, as the GPTQ reference does it.

The conventions are those of IST-DASLab/gptq ``quant.py`` (``Quantizer.find_params``)
so that RTN and GPTQ results compare exactly:

* the range always includes zero: ``xmin = min(min(w), 0)``, ``xmax = max(max(w), 0)``;
  an all-zero group uses [-1, 1], and so does a group whose step underflows to 0
  (subnormal weights such as 1e-45; the reference's ``rint(-0/0)`` zero would be NaN);
* asymmetric: ``scale = (xmax - xmin) / maxq`` and ``zero = round(-xmin / scale)``;
* symmetric: the range is ±max|w| (a group with no negative weight keeps
  ``xmin = 0``, as the reference does) and ``zero = (maxq + 1) / 2``;
* codes: ``q = clamp(round(w / scale) + zero, 0, maxq)``; decode ``scale * (q - zero)``.

``round`` is round-half-to-even (``torch.round``/``np.rint``), in float32.

A range near float32's maximum (±3e38) leaves no room for the grid: ``xmax -
xmin`` or the decoded ends ``scale * (0 - zero)``, ``scale * (maxq - zero)``
overflow. :func:`check_grid` refuses such a group with an error naming its row
and group, instead of returning an inf scale that decodes to NaN. For every
other input the numbers are the reference's, bit for bit.

Granularity is a value: ``group_size`` consecutive input columns share
parameters (the last group of a row may be shorter, as the GPTQ reference
allows), ``group_size == n_cols`` is per channel, and ``per_tensor`` gives one
(1, 1) pair for the whole matrix.
"""
from __future__ import annotations

import numpy as np


def group_starts(n_cols: int, group_size: int) -> np.ndarray:
    """First column of each group: 0, g, 2g, … (the last group may be shorter)."""
    return np.arange(0, n_cols, group_size)


def expand(p: np.ndarray, group_size: int, n_cols: int) -> np.ndarray:
    """Per-group parameters (rows, n_groups) -> per-weight (rows, n_cols)."""
    return np.repeat(p, group_size, axis=1)[:, :n_cols]


def choose_params(w: np.ndarray, bits: int, *, sym: bool = False, group_size: int = 128,
                  per_tensor: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Scales and zero points of each group.

    Parameters
    ----------
    w : ndarray, shape (n_rows, n_cols), float32
    bits : int
        2..8; ``maxq = 2**bits - 1``.
    sym : bool
        Symmetric range ±max|w| with the fixed zero ``(maxq + 1) / 2``.
    group_size : int
        Columns per group (>= 1; ``n_cols`` for per channel).
    per_tensor : bool
        One scale and zero for the whole matrix.

    Returns
    -------
    scales, zeros : ndarray, shape (n_rows, n_groups) or (1, 1), float32
        Zeros are whole numbers stored as float32.

    Raises
    ------
    ValueError
        A group whose grid does not fit float32 (:func:`check_grid`).

    Examples
    --------
    >>> w = np.array([[-1.0, 0.5, 2.0]], dtype=np.float32)
    >>> s, z = choose_params(w, 2, group_size=3)
    >>> float(s[0, 0]), float(z[0, 0])
    (1.0, 1.0)
    """
    maxq = np.float32(2**bits - 1)
    if per_tensor:
        lo = np.minimum(w.min(), 0).reshape(1, 1).astype(np.float32)
        hi = np.maximum(w.max(), 0).reshape(1, 1).astype(np.float32)
    else:
        starts = group_starts(w.shape[1], group_size)
        lo = np.minimum(np.minimum.reduceat(w, starts, axis=1), np.float32(0))
        hi = np.maximum(np.maximum.reduceat(w, starts, axis=1), np.float32(0))
    if sym:
        hi = np.maximum(np.abs(lo), hi)
        lo = np.where(lo < 0, -hi, lo)
    with np.errstate(over="ignore", under="ignore"):  # an overflowing range is refused below
        scales = ((hi - lo) / maxq).astype(np.float32)
    # all-zero groups, and ranges so small that their step underflows to 0: [-1, 1]
    empty = scales == 0
    lo = np.where(empty, np.float32(-1), lo)
    hi = np.where(empty, np.float32(1), hi)
    with np.errstate(over="ignore"):
        scales = np.where(empty, (hi - lo) / maxq, scales).astype(np.float32)
    if sym:
        zeros = np.full_like(scales, (maxq + 1) / 2)
    else:
        with np.errstate(invalid="ignore"):  # -lo / inf: refused below
            zeros = np.rint(-lo / scales).astype(np.float32)
    check_grid(scales, zeros, bits, None if per_tensor else group_size)
    return scales, zeros


def check_grid(scales: np.ndarray, zeros: np.ndarray, bits: int, group_size: int | None) -> None:
    """Refuse groups whose grid ``scale * (q - zero)``, q = 0 … maxq, leaves float32.

    Parameters
    ----------
    scales, zeros : ndarray, shape (n_rows, n_groups) or (1, 1), float32
    bits : int
    group_size : int or None
        Columns per group, to name the columns of a bad group; None for per tensor.

    Raises
    ------
    ValueError
        Naming the first such group (row, group, columns), its step, and the
        fix: scale the weight down (its range reaches float32's maximum).

    Examples
    --------
    >>> check_grid(np.float32([[1.0]]), np.float32([[2.0]]), 2, 4)  # a grid of -2 … 1: fine
    """
    maxq = np.float32(2**bits - 1)
    with np.errstate(over="ignore", invalid="ignore"):
        ends_fit = np.isfinite(scales * (np.float32(0) - zeros)) & np.isfinite(scales * (maxq - zeros))
    if ends_fit.all():
        return
    r, g = (int(i) for i in np.argwhere(~ends_fit)[0])
    where = ("the tensor (per_tensor=True)" if group_size is None else
             f"row {r}, group {g} (columns {g * group_size} to {(g + 1) * group_size - 1})")
    raise ValueError(
        f"rtn: the range of {where} reaches float32's maximum ({float(np.finfo(np.float32).max):.7g}): "
        f"its step {float(scales[r, g]):g} times {int(maxq)} levels does not fit float32 "
        f"({int((~ends_fit).sum())} such groups). Scale the weight down first (e.g. w / 2**32) "
        f"and the decoded values back up")


def quantize(w: np.ndarray, scales: np.ndarray, zeros: np.ndarray, bits: int,
             group_size: int) -> np.ndarray:
    """Codes ``clamp(round(w / scale) + zero, 0, maxq)``.

    Parameters
    ----------
    w : ndarray, shape (n_rows, n_cols), float32
    scales, zeros : ndarray, shape (n_rows, n_groups) or (1, 1), float32
    bits : int
    group_size : int

    Returns
    -------
    ndarray, shape (n_rows, n_cols), uint8
    """
    n_cols = w.shape[1]
    s = expand(scales, group_size, n_cols)
    z = expand(zeros, group_size, n_cols)
    q = np.rint(w / s) + z
    return np.clip(q, 0, 2**bits - 1).astype(np.uint8)

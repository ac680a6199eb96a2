"""Numba twins of the reductions in :mod:`qviz.plots.summary`: histograms and the error pass.

* :func:`histogram_counts` gives exactly the counts of
  ``qviz.plots.summary.histogram``: ``numpy.histogram``'s uniform-bin path
  (numpy 2, ``lib/_histograms_impl.py``), with values below or above the range
  counted in the end bins and nan left out.
* :func:`error_pass` reduces a chunk of rows of a weight ``w`` and its
  decoding ``ŵ`` in one pass: ``err = w − ŵ`` (written), ŵ counted into the
  weight's bins, Σerr² (float64), max|err| and the mean |err| of every group.

numpy's bin of a value ``x`` in [first, last] (float64 arithmetic)::

    i = int(((x - first) / (last - first)) * n_bins)     # then i == n_bins -> n_bins - 1
    if x < edges[i]: i -= 1                               # the index may be 1 off near an edge
    if x >= edges[i + 1] and i != n_bins - 1: i += 1      # the last bin is closed

``edges`` are ``np.linspace(first, last, n_bins + 1)``, which numpy computes as
``i * step + first`` with ``step = (last - first) / n_bins`` and the last edge
set to ``last``; the kernel computes them the same way in registers instead
of loading them (:func:`uniform_bins` checks that numpy agrees). A value
outside the range is first clamped to it, which lands it in the end bin.

Bin indices of a block of values are computed in one loop without branches
(LLVM vectorizes it) and counted in a second. Float sums keep float64
accumulators in order within a row; they differ from numpy's pairwise sums
only by rounding (relative ~1e-13).
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit, prange

F32 = np.float32
JIT_OPTIONS = {"cache": True, "error_model": "numpy"}  # C's x/0 (inf or nan), no fastmath

#: values whose bin indices are computed in one vectorized loop
BLOCK = 512
#: values per parallel task of :func:`histogram_counts`
TASK = 1 << 16
#: rows per parallel task of :func:`error_pass`
ROWS_PER_TASK = 16


def uniform_bins(edges: np.ndarray) -> tuple[float, float, float]:
    """``(first, last, step)`` of uniform histogram edges, as numpy's histogram sees them.

    Parameters
    ----------
    edges : ndarray, shape (n_bins + 1,), float64, ascending
        Only the first and last edge count: ``numpy.histogram(values, n_bins,
        (first, last))`` places its own ``np.linspace`` edges between them.

    Raises
    ------
    ValueError
        When ``edges`` are not ascending.
    RuntimeError
        If this numpy's ``linspace`` is not ``i * step + first`` (the kernels'
        edges would then differ from numpy's).
    """
    edges = np.asarray(edges, dtype=np.float64)
    n_bins = len(edges) - 1
    first, last = float(edges[0]), float(edges[-1])
    if n_bins < 1 or not last > first:
        raise ValueError(f"histogram edges must ascend, got {n_bins + 1} edges from {first} to {last}")
    step = (last - first) / n_bins
    formula = np.arange(n_bins + 1) * step + first
    formula[-1] = last
    if not np.array_equal(formula, np.linspace(first, last, n_bins + 1)):
        raise RuntimeError(f"numpy {np.__version__}'s linspace no longer computes i * step + first; "
                           f"update qviz.kernels.numba.summary to its edges")
    return first, last, step


@njit(**JIT_OPTIONS)
def _bin_indices(values, first, last, step, n_bins, idx):
    """numpy's bin of every value (1-D, any float) into ``idx`` (int64); nan -> ``n_bins``."""
    top = n_bins - 1
    denom = last - first
    for k in range(values.shape[0]):
        x = np.float64(values[k])
        c = x if x > first else first  # below the range: the first bin
        c = c if c < last else last  # above: the last
        i = np.int64(((c - first) / denom) * n_bins)
        i = i if i < n_bins else top
        i = i - 1 if c < np.float64(i) * step + first else i  # edges[i]
        upper = np.float64(i + 1) * step + first if i < top else last  # edges[i + 1]
        i = i + 1 if (c >= upper and i < top) else i
        idx[k] = i if x == x else n_bins


@njit(**JIT_OPTIONS)
def _count(values, first, last, step, counts):
    """Add the bins of ``values`` (1-D) to ``counts`` (int64, n_bins + 1; the last slot takes nan)."""
    n_bins = counts.shape[0] - 1
    idx = np.empty(BLOCK, np.int64)
    n = values.shape[0]
    for start in range(0, n, BLOCK):
        m = min(BLOCK, n - start)
        _bin_indices(values[start:start + m], first, last, step, n_bins, idx)
        for k in range(m):
            counts[idx[k]] += 1


@njit(parallel=True, **JIT_OPTIONS)
def _histogram(values, first, last, step, counts):
    """Per-task counts of ``values`` (1-D): task t counts ``values[t*TASK:(t+1)*TASK]`` into ``counts[t]``."""
    n = values.shape[0]
    for t in prange(counts.shape[0]):
        start = t * TASK
        _count(values[start:min(start + TASK, n)], first, last, step, counts[t])


def histogram_counts(values: npt.NDArray, edges: np.ndarray) -> np.ndarray:
    """Counts of ``values`` in uniform bins; values outside fall into the end bins.

    Parameters
    ----------
    values : ndarray, any shape, float32 or float64
    edges : ndarray, shape (n_bins + 1,), float64
        Uniform ascending edges (``qviz.plots.summary.uniform_edges``).

    Returns
    -------
    ndarray, shape (n_bins,), int64
        Equal to ``qviz.plots.summary.histogram(values, edges).counts``.

    Examples
    --------
    >>> histogram_counts(np.array([-9, 0, 0.5, 1, 9], np.float32), np.linspace(0, 1, 3)).tolist()
    [2, 3]
    """
    first, last, step = uniform_bins(edges)
    flat = np.ascontiguousarray(values).reshape(-1)
    n_tasks = max(1, -(-flat.size // TASK))
    counts = np.zeros((n_tasks, len(edges)), np.int64)
    _histogram(flat, first, last, step, counts)
    return counts[:, :-1].sum(axis=0)


@njit(**JIT_OPTIONS)
def _error_sums(w, dq, err):
    """``err = w − dq`` (float32, 1-D slices, err may be dq).

    Returns Σerr² (float64), Σ|err| (float64) and max|err| (float32); the max
    skips nan errors, the sums do not.
    """
    sq = 0.0
    total = 0.0
    mx = F32(0)
    for j in range(w.shape[0]):
        e = w[j] - dq[j]
        err[j] = e
        a = abs(e)
        x = np.float64(a)
        sq += x * x
        total += x
        mx = a if a > mx else mx
    return sq, total, mx


@njit(parallel=True, **JIT_OPTIONS)
def _error_rows(w, dq, group_size, first, last, step, err, group_error, counts, row_sq, row_max):
    """Per row: dq's bins, then err = w − dq (err may be dq), its group means, Σerr² and max|err|.

    w, dq, err : float32 (n_rows, n_cols); group_error : float32 (n_rows, n_groups)
    counts : int64 (n_tasks, n_bins + 1), task t counting rows [t*ROWS_PER_TASK, (t+1)*ROWS_PER_TASK)
    row_sq : float64 (n_rows,); row_max : float32 (n_rows,)
    """
    n_rows, n_cols = w.shape
    for t in prange(counts.shape[0]):
        for r in range(t * ROWS_PER_TASK, min((t + 1) * ROWS_PER_TASK, n_rows)):
            _count(dq[r], first, last, step, counts[t])
            sq = 0.0
            mx = F32(0)
            for g in range(group_error.shape[1]):
                start = g * group_size
                stop = min(start + group_size, n_cols)
                s, total, m = _error_sums(w[r, start:stop], dq[r, start:stop], err[r, start:stop])
                sq += s
                mx = m if m > mx else mx
                group_error[r, g] = F32(total / (stop - start))
            row_sq[r] = sq
            row_max[r] = mx


def error_pass(w: npt.NDArray[np.float32], dq: npt.NDArray[np.float32], group_size: int,
               edges: np.ndarray, err: np.ndarray, group_error: np.ndarray
               ) -> tuple[np.ndarray, float, float]:
    """One pass over rows of a weight and its decoding.

    Parameters
    ----------
    w, dq : ndarray, shape (n_rows, n_cols), float32
        The weight and its dequantization ŵ.
    group_size : int
        Consecutive columns per group (the last group may be shorter).
    edges : ndarray, shape (n_bins + 1,), float64
        Uniform bins for ŵ (the weight histogram's).
    err : ndarray, shape (n_rows, n_cols), float32, C-contiguous
        Written: ``w − ŵ``. May be ``dq`` itself: ŵ is then replaced by the error.
    group_error : ndarray, shape (n_rows, ceil(n_cols / group_size)), float32, C-contiguous
        Written: mean |w − ŵ| of every group.

    Returns
    -------
    counts : ndarray, shape (n_bins,), int64
        ŵ in ``edges`` (as ``qviz.plots.summary.histogram``).
    sum_sq : float
        Σ(w − ŵ)², float64.
    max_abs : float
        max |w − ŵ| (of the errors that are not nan).
    """
    first, last, step = uniform_bins(edges)
    w = np.ascontiguousarray(w, dtype=np.float32)
    dq = np.ascontiguousarray(dq, dtype=np.float32)
    n_rows = w.shape[0]
    counts = np.zeros((max(1, -(-n_rows // ROWS_PER_TASK)), len(edges)), np.int64)
    row_sq = np.empty(n_rows, np.float64)
    row_max = np.empty(n_rows, np.float32)
    _error_rows(w, dq, int(group_size), first, last, step, err, group_error, counts, row_sq, row_max)
    return counts[:, :-1].sum(axis=0), float(row_sq.sum()), float(row_max.max())


@njit(parallel=True, **JIT_OPTIONS)
def _row_sum_squares(a, out):
    """out[r] = Σ a[r, j]² in float64 (a float32 (n_rows, n_cols))."""
    for r in prange(a.shape[0]):
        row = a[r]
        s = 0.0
        for j in range(row.shape[0]):
            x = np.float64(row[j])
            s += x * x
        out[r] = s


def sum_squares(a: npt.NDArray[np.float32]) -> float:
    """Σ a² in float64 of a 2-D float32 array (rows summed in parallel).

    Examples
    --------
    >>> sum_squares(np.array([[1, 2], [3, 4]], np.float32))
    30.0
    """
    a = np.ascontiguousarray(a, dtype=np.float32)
    out = np.empty(a.shape[0], np.float64)
    _row_sum_squares(a, out)
    return float(out.sum())

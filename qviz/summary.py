"""Results → numbers: the histograms, per-group errors and pooled grids the layer figures draw.

No plotly. A figure never receives raw weights and never decodes:
:func:`summarize` reduces one :class:`~qviz.result.QuantResult` against its
original weight to a :class:`LayerSummary` of bins, per-group errors and
metrics, once per setting, and :func:`group_detail` picks out one group's
weights, decoded weights and levels; the figures of :mod:`qviz.plots.layer`
draw from those. Everything a summary keeps is bounded by the number of bins
and groups, not weights.

The weight is decoded by numba's kernels (a registered quant type's
``dequantize_<type>`` twin, plain affine results) or by
``QuantResult.dequantize`` in chunks of rows, into one float32 matrix
that then becomes the error ``W − Ŵ`` in place: the temporary memory is one
weight-sized matrix plus at most a chunk. The passes over the weights run in
numba (:mod:`qviz.kernels.numba.summary`); :func:`histogram` and
:func:`group_mean_abs_error` are the numpy definitions they are tested against.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import numpy as np

from qviz import registry
from qviz.formats.iq_lattice import lattice
from qviz.kernels.numba.buffers import float_output
from qviz.result import QuantResult

#: bins of every histogram
N_BINS = 120
#: a heatmap has at most this many cells along each axis
MAX_CELLS = 256
#: weights decoded at once
CHUNK = 1 << 20
#: fewer weights than this are decoded in numpy, not by a parallel kernel
FEW = 1 << 16


class Histogram(NamedTuple):
    """Counts in uniform bins.

    edges : float64, (n_bins + 1,)   bin edges, ascending
    counts : int64, (n_bins,)        values per bin
    """

    edges: np.ndarray
    counts: np.ndarray

    @property
    def centers(self) -> np.ndarray:
        """Bin centres, float64 (n_bins,)."""
        return (self.edges[:-1] + self.edges[1:]) / 2

    @property
    def width(self) -> float:
        """Width of one bin."""
        return float(self.edges[1] - self.edges[0])


def uniform_edges(lo: float, hi: float, n_bins: int = N_BINS) -> np.ndarray:
    """``n_bins`` uniform bins over [lo, hi] (widened to ±0.5 around a single value)."""
    lo, hi = float(lo), float(hi)
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, n_bins + 1)


def histogram(values: np.ndarray, edges: np.ndarray) -> Histogram:
    """Count ``values`` into ``edges``; values outside fall into the end bins.

    Parameters
    ----------
    values : ndarray, any shape, float
    edges : ndarray, shape (n_bins + 1,), float64
        Uniform ascending edges from :func:`uniform_edges` (``numpy.histogram``'s
        convention: the last bin is closed).
    """
    lo, hi = edges[0], edges[-1]
    # bins + range, not the edges: numpy's uniform-bin path (no sort), same edges
    counts, _ = np.histogram(values, len(edges) - 1, (lo, hi))
    counts = counts.astype(np.int64)
    counts[0] += np.count_nonzero(values < lo)
    counts[-1] += np.count_nonzero(values > hi)
    return Histogram(edges, counts)


#: the weight histogram spans the central 1 - 2·TAIL of the weights (widened by WIDEN of that
#: span, within [min, max]); rarer outliers land in the end bins instead of squeezing the bulk
TAIL = 1e-4
WIDEN = 0.25


def histogram_range(w: np.ndarray) -> tuple[float, float]:
    """The range of the weight histogram: [min, max], cut to the central weights when outliers dominate.

    Parameters
    ----------
    w : ndarray, any shape, float32

    Returns
    -------
    (float, float)
        ``[q_TAIL − WIDEN·span, q_(1−TAIL) + WIDEN·span]`` clipped to
        ``[min, max]``; quantiles of at most 2**20 evenly strided weights.
    """
    flat = w.reshape(-1)
    sample = flat[:: max(1, flat.size >> 20)]
    q_lo, q_hi = np.quantile(sample, [TAIL, 1 - TAIL])
    span = float(q_hi - q_lo)
    return (max(float(w.min()), float(q_lo) - WIDEN * span),
            min(float(w.max()), float(q_hi) + WIDEN * span))


class WeightStats(NamedTuple):
    """What :func:`summarize` needs of the original weight, computed once.

    hist : Histogram                   of the weights, N_BINS bins over :func:`histogram_range`
    sum_sq : float                     Σ w², float64
    x_reduced : float32 (k, n_cols) or None
        Activations with the same Gram matrix as the given ones (``R`` of
        ``X = QR`` when there are more samples than columns): ``‖X Eᵀ‖ = ‖R Eᵀ‖``.
    output_sq : float                  ‖W Xᵀ‖², float64 (nan without activations)
    crest : float                      max|w| / RMS(w): how far the outliers stand out
    """

    hist: Histogram
    sum_sq: float
    x_reduced: np.ndarray | None
    output_sq: float
    crest: float = float("nan")


def _row_step(n_cols: int) -> int:
    return max(1, CHUNK // n_cols)


def _sum_sq_output(x: np.ndarray, m: np.ndarray) -> float:
    """‖x mᵀ‖² in float64, over chunks of rows of ``m`` (float32 products).

    Chunks are as large as an output of 4·CHUNK floats allows: few large
    BLAS calls (many small ones thrash OpenBLAS's threads on a busy machine).
    numpy's OpenBLAS, not torch's MKL: on the AMD machine the benchmarks ran
    on, 128 × 4096 @ 4096 × 4096 took 39 ms against 46–88 ms (one thread).
    """
    total = 0.0
    x_t = np.ascontiguousarray(x.T)  # (n_cols, k): m @ x_t, each product row a row of m
    step = max(1, 4 * CHUNK // x.shape[0])
    for start in range(0, m.shape[0], step):
        y = m[start:start + step] @ x_t
        total += float(np.square(y, dtype=np.float64).sum())
    return total


def weight_stats(w: np.ndarray, x: np.ndarray | None = None, n_bins: int = N_BINS) -> WeightStats:
    """Histogram, Σw² and the output norm of a weight, for :func:`summarize`.

    Parameters
    ----------
    w : ndarray, shape (n_rows, n_cols), float32
    x : ndarray, shape (n_samples, n_cols), float32, optional
        Activations for the relative output error.
    n_bins : int
    """
    from qviz.kernels.numba import summary as kernel

    edges = uniform_edges(*histogram_range(w), n_bins)
    counts = kernel.histogram_counts(w, edges)
    sum_sq = kernel.sum_squares(w)
    x_reduced, output_sq = None, float("nan")
    if x is not None:
        x_reduced = x
        if x.shape[0] > x.shape[1]:  # same Gram matrix, fewer rows: XᵀX = RᵀR
            x_reduced = np.linalg.qr(x.astype(np.float64), mode="r").astype(np.float32)
        output_sq = _sum_sq_output(x_reduced, w)
    rms = np.sqrt(sum_sq / max(w.size, 1))
    crest = float(max(-float(w.min()), float(w.max())) / rms) if rms > 0 else 0.0
    return WeightStats(Histogram(edges, counts), sum_sq, x_reduced, output_sq, crest)


def rows_of(result: QuantResult, start: int, stop: int) -> QuantResult:
    """Rows ``start:stop`` of a result, as a result of its own (views, no copies)."""
    def cut(p):
        if p is None or p.ndim == 1 or p.shape[0] == 1:
            return p  # per-tensor parameters and shared codebooks broadcast
        return p[start:stop]

    stop = min(stop, result.shape[0])
    return dataclasses.replace(
        result, shape=(stop - start, result.shape[1]), codes=result.codes[start:stop],
        scales=cut(result.scales), zeros=cut(result.zeros), mins=cut(result.mins),
        codebook=cut(result.codebook),
        packed=None if result.packed is None else result.packed[start:stop])


def _affine(result: QuantResult) -> bool:
    """Decoded as ``scale * (code - zero)`` with contiguous groups (RTN, GPTQ without act-order)."""
    return result.codes.dtype == np.uint8 and all(
        p is None for p in (result.mins, result.codebook, result.g_idx, result.input_scale))


def _fixed_codebook(result: QuantResult) -> bool:
    """Decoded as ``scale * codebook[code]`` with one codebook and contiguous groups (NF4, FP4, FP8, MX, NVFP4)."""
    return (result.codes.dtype == np.uint8 and result.codebook is not None and result.codebook.ndim == 1
            and all(p is None for p in (result.mins, result.zeros, result.g_idx, result.input_scale)))


def _type_kernel(result: QuantResult) -> Callable | None:
    """The numba ``dequantize_<type>(packed, out)`` of a result holding a registered type's bytes, or None."""
    if result.packed is None or result.method not in registry.TYPES:
        return None
    t = registry.quant_type(result.method)
    if t.module_of("numba") is None:  # the reference's dequantize takes no out=
        return None
    return t.function("dequantize", "numba")


def decode_all(result: QuantResult, out: np.ndarray | None = None, rotated: bool = False) -> np.ndarray:
    """All rows dequantized, float32 (n_rows, n_cols): into ``out`` when given, else a new array.

    One numba call where a kernel decodes the format (:func:`decode_rows`);
    otherwise chunk by chunk, so numpy's temporaries stay the size of a chunk.
    A rotated result returns to the layer's basis unless ``rotated``.
    """
    n_rows, n_cols = result.shape
    if _type_kernel(result) is not None or _affine(result) or _fixed_codebook(result):
        return decode_rows(result, 0, n_rows, out, rotated)
    out = float_output((n_rows, n_cols), out)
    step = _row_step(n_cols)
    for start in range(0, n_rows, step):
        out[start:start + step] = decode_rows(result, start, start + step, rotated=rotated)
    return out


def decode_rows(result: QuantResult, start: int, stop: int, out: np.ndarray | None = None,
                rotated: bool = False) -> np.ndarray:
    """Dequantized rows ``start:stop``, float32 (stop - start, n_cols), into ``out`` when given.

    Registered quant types decode their packed bytes with their numba twin
    (``registry.quant_type(name).function("dequantize", "numba")``,
    bit-identical to ``QuantResult.dequantize`` and ggml's to_float), plain affine results
    (RTN, GPTQ without act-order) with numba's ``scale * (code - zero)``, results
    with one fixed codebook (NF4, FP4, FP8, MX, NVFP4) with numba's
    ``scale * codebook[code]``; the rest, and a few rows of any (where starting
    the kernel's threads costs more than it saves), through
    ``QuantResult.dequantize`` of the rows. A
    rotated result returns to the layer's basis unless ``rotated``.
    """
    out = _decode_rows(result, start, stop, out, rotated)
    if result.rotation is not None and not rotated:
        out[...] = result.rotation.restore(out)
    return out


def _decode_rows(result: QuantResult, start: int, stop: int, out: np.ndarray | None,
                 rotated: bool) -> np.ndarray:
    """:func:`decode_rows` before a rotation's restore (``QuantResult.dequantize`` leaves it too)."""
    few = (stop - start) * result.shape[1] < FEW
    kernel = None if few else _type_kernel(result)
    if kernel is not None:
        return kernel(np.ascontiguousarray(result.packed[start:stop]), out)
    part = rows_of(result, start, stop)
    if _affine(result) and not few:
        from qviz.kernels.numba.rtn import dequantize

        zeros = part.zeros
        if zeros is None:  # symmetric: the implied zero everywhere
            zeros = np.full(part.scales.shape, part.implied_zero, np.float32)
        return dequantize(part.codes, part.scales, zeros, part.group_size, out)
    if _fixed_codebook(result) and not few:
        from qviz.kernels.numba.decode import dequantize_codebook

        return dequantize_codebook(part.codes, part.scales, part.codebook, part.group_size, out)
    out = float_output(part.shape, out)
    out[...] = part.dequantize(rotated=True)
    return out


def group_columns(result: QuantResult, group: int) -> np.ndarray:
    """Column indices of group ``group`` (int64, ascending)."""
    if result.g_idx is not None:
        return np.flatnonzero(result.g_idx == group)
    g = result.group_size
    return np.arange(group * g, min((group + 1) * g, result.shape[1]))


class LatticeRuns(NamedTuple):
    """The grid points an i-quant group chose, one per run of ``dims`` weights.

    lattice : str                      the lattice's name (:func:`qviz.formats.iq_lattice.lattice`)
    numbers : int64 (k,)               the grid point number of each run (k = n // dims)
    values : int8 (k, dims)            each point's decode values (ggml's grid table entry)
    negative : bool (n,)               the sign bit of each weight of the group
    """

    lattice: str
    numbers: np.ndarray
    values: np.ndarray
    negative: np.ndarray


class GroupDetail(NamedTuple):
    """One group of one row, decoded: what :func:`qviz.plots.layer.group_detail` draws.

    row, group : int
    levels : float32 (n_levels,)      every value the group's codes can decode to, ascending
    columns : int64 (n,)              the group's input columns, ascending
    w : float32 (n,)                  the original weights at those columns
    w_hat : float32 (n,)              their dequantized values
    lattice : LatticeRuns or None     the grid points chosen, for lattice types (IQ1/IQ2/IQ3)
    """

    row: int
    group: int
    levels: np.ndarray
    columns: np.ndarray
    w: np.ndarray
    w_hat: np.ndarray
    lattice: LatticeRuns | None = None


def lattice_runs(result: QuantResult, row: int, columns: np.ndarray) -> LatticeRuns | None:
    """The grid points row ``row`` chose at ``columns`` (consecutive, run-aligned), or None.

    None unless ``result`` is a registered lattice type with packed bytes (its
    format module defines ``points_<type>``, returning a
    :class:`~qviz.formats.iq_lattice.LatticePoints`).
    """
    if result.packed is None or result.method not in registry.TYPES:
        return None
    t = registry.quant_type(result.method)
    if not t.provides("points"):
        return None
    pts = t.function("points", "numpy")(result.packed[row:row + 1])
    lat = lattice(pts.lattice)
    runs = np.arange(columns[0] // lat.dims, (columns[-1] + 1) // lat.dims)
    numbers = pts.index[0, runs].astype(np.int64)
    return LatticeRuns(pts.lattice, numbers, lat.values[numbers], pts.negative[0, columns])


def group_detail(result: QuantResult, w: np.ndarray, row: int, group: int) -> GroupDetail:
    """The weights of group ``group`` of row ``row``, their decoding and the group's levels.

    Parameters
    ----------
    result : QuantResult
    w : ndarray, shape result.shape, float32
        The original weight. For a rotated result the group is shown where it
        was quantized: ``w`` and ``w_hat`` of the detail are rows of ``W·R``
        and ``Q(W·R)``.
    row, group : int

    Examples
    --------
    >>> import numpy as np, qviz
    >>> w = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    >>> d = group_detail(qviz.quantize(w, "Q4_K"), w, 1, 2)
    >>> d.columns[[0, -1]].tolist(), len(d.levels), d.w_hat.shape
    ([64, 95], 16, (32,))
    """
    levels = result.levels(row, group)  # IndexError for a group outside the result
    cols = group_columns(result, group)
    rotated = result.rotation is not None  # the levels are those of W·R: show the group there
    w_row = result.rotation.apply(w[row:row + 1])[0] if rotated else w[row]
    w_hat = decode_rows(result, row, row + 1, rotated=rotated)[0, cols]
    return GroupDetail(row, group, levels, cols, w_row[cols], w_hat, lattice_runs(result, row, cols))


def group_mean_abs_error(abs_err: np.ndarray, result: QuantResult) -> np.ndarray:
    """Mean |error| of every group.

    Parameters
    ----------
    abs_err : ndarray, shape (n_rows, n_cols), float32
        |W − Ŵ| of some rows.
    result : QuantResult
        Gives the grouping (``group_size``, or ``g_idx``).

    Returns
    -------
    ndarray, shape (n_rows, n_groups), float32
    """
    n_rows, n_cols = abs_err.shape
    n_groups = result.n_groups
    if result.g_idx is not None:  # groups follow GPTQ's visiting order
        onehot = np.zeros((n_cols, n_groups), np.float32)
        onehot[np.arange(n_cols), result.g_idx] = 1
        counts = onehot.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (abs_err @ onehot / counts).astype(np.float32)
    g = result.group_size
    if n_cols % g == 0:
        return abs_err.reshape(n_rows, n_groups, g).mean(axis=2, dtype=np.float32)
    starts = np.arange(0, n_cols, g)
    sizes = np.diff(np.append(starts, n_cols)).astype(np.float32)
    return (np.add.reduceat(abs_err, starts, axis=1) / sizes).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class LayerSummary:
    """One result measured against its original weight: what the figures draw.

    Attributes
    ----------
    result : QuantResult
    weight_hist : Histogram
        Original weights (shared by every setting of a layer).
    dequant_hist : Histogram
        Dequantized weights, in the same bins (values beyond them in the end bins).
    error_hist : Histogram
        W − Ŵ, in N_BINS bins over [−max|error|, max|error|].
    group_error : ndarray, shape (n_rows, n_groups), float32
        Mean |W − Ŵ| of every group.
    metrics : dict
        ``bits_per_weight``, ``mse``, ``sqnr_db``, ``max_abs_error``,
        ``weight_crest`` (max|w|/RMS of the weight in the result's basis: lower
        after a rotation) and, with activations, ``relative_output_error`` (as :func:`qviz.metrics.summary`).
    """

    result: QuantResult
    weight_hist: Histogram
    dequant_hist: Histogram
    error_hist: Histogram
    group_error: np.ndarray
    metrics: dict

    @property
    def worst_group(self) -> tuple[int, int]:
        """(row, group) with the largest mean |error|."""
        return worst_in_block(self.group_error, 0, 0, self.group_error.shape)


def summarize(result: QuantResult, w: np.ndarray, stats: WeightStats | None = None,
              scratch: np.ndarray | None = None, rotated_weight: np.ndarray | None = None) -> LayerSummary:
    """Measure ``result`` against the weight it came from.

    Parameters
    ----------
    result : QuantResult
    w : ndarray, shape result.shape, float32
        The original weight. A rotated result is measured where it was
        quantized: against ``W·R`` (histograms, group errors); the weight and
        output errors are the same in either basis.
    stats : WeightStats, optional
        :func:`weight_stats` of the weight in the result's basis (``W·R`` and
        ``X·R`` for a rotated one) and the activations; computed here when not
        given, without activations.
    scratch : ndarray, shape result.shape, float32, C-contiguous, optional
        Overwritten with W − Ŵ instead of a new array: a caller that
        summarizes often keeps one (a new 64 MB array costs tens of ms of
        page faults).
    rotated_weight : ndarray, shape result.shape, float32, optional
        ``result.rotation.apply(w)``, when the caller keeps it (rotating a
        4096 × 4096 weight costs tens of ms).

    Returns
    -------
    LayerSummary

    Notes
    -----
    The metrics match :func:`qviz.metrics.summary`: sums of squares in float64;
    the output error's products ``X Eᵀ`` are float32 matrix products (relative
    difference ~1e-6), on the QR-reduced activations of :class:`WeightStats`.
    """
    if tuple(w.shape) != tuple(result.shape):
        raise ValueError(f"the weight has shape {w.shape} but the result is {result.shape}")
    from qviz.kernels.numba import summary as kernel

    if result.rotation is not None:
        w = result.rotation.apply(w) if rotated_weight is None else rotated_weight
    stats = weight_stats(w) if stats is None else stats
    edges = stats.hist.edges
    n_rows, n_cols = result.shape
    err = decode_all(result, scratch, rotated=True)  # Ŵ, then W − Ŵ in place: the one full-size temporary
    if result.g_idx is None:
        group_error = np.empty((n_rows, result.n_groups), np.float32)
        dq_counts, err_sq, max_err = kernel.error_pass(w, err, result.group_size, edges, err, group_error)
    else:  # act-order groups follow g_idx: the kernel sees one group per row, numpy averages
        dq_counts, err_sq, max_err = kernel.error_pass(w, err, n_cols, edges, err,
                                                       np.empty((n_rows, 1), np.float32))
        step = _row_step(n_cols)
        group_error = np.concatenate([group_mean_abs_error(np.abs(err[start:start + step]), result)
                                      for start in range(0, n_rows, step)])
    n = n_rows * n_cols
    metrics = {
        "bits_per_weight": result.bits_per_weight,
        "mse": err_sq / n,
        "sqnr_db": float("inf") if err_sq == 0 else float(10 * np.log10(stats.sum_sq / err_sq)),
        "max_abs_error": max_err,
        "weight_crest": stats.crest,
    }
    if stats.x_reduced is not None and stats.output_sq > 0:
        metrics["relative_output_error"] = _sum_sq_output(stats.x_reduced, err) / stats.output_sq
    err_edges = uniform_edges(-max_err, max_err)
    return LayerSummary(result, stats.hist, Histogram(edges, dq_counts),
                        Histogram(err_edges, kernel.histogram_counts(err, err_edges)), group_error, metrics)


def block_shape(n_rows: int, n_cols: int, max_cells: int = MAX_CELLS) -> tuple[int, int]:
    """Rows and columns of a grid pooled into one heatmap cell."""
    return math.ceil(n_rows / max_cells), math.ceil(n_cols / max_cells)


class Pooled(NamedTuple):
    """A grid aggregated to at most MAX_CELLS × MAX_CELLS cells.

    values : float32 (n_y, n_x)     max or mean of each block
    row_starts : int64 (n_y,)       first row of each cell
    col_starts : int64 (n_x,)       first column (group) of each cell
    block : (int, int)              rows × columns of a block (1 × 1: not pooled)
    """

    values: np.ndarray
    row_starts: np.ndarray
    col_starts: np.ndarray
    block: tuple[int, int]


def pool(grid: np.ndarray, how: str = "max", max_cells: int = MAX_CELLS) -> Pooled:
    """Aggregate a (rows × groups) grid into blocks so that a heatmap stays small.

    Parameters
    ----------
    grid : ndarray, shape (n_rows, n_cols), float
    how : {"max", "mean"}
        Max-pooling shows the worst cell of a block; mean the typical one.
    max_cells : int

    Returns
    -------
    Pooled
        The last block of each axis may be partial; it aggregates what it has.
    """
    if how not in ("max", "mean"):
        raise ValueError(f"how={how!r}; use 'max' or 'mean'")
    n_rows, n_cols = grid.shape
    br, bc = block_shape(n_rows, n_cols, max_cells)
    ny, nx = math.ceil(n_rows / br), math.ceil(n_cols / bc)
    padded = np.full((ny * br, nx * bc), np.nan, np.float32)
    padded[:n_rows, :n_cols] = grid
    blocks = padded.reshape(ny, br, nx, bc)
    with np.errstate(invalid="ignore"):
        values = np.nanmax(blocks, axis=(1, 3)) if how == "max" else np.nanmean(blocks, axis=(1, 3))
    return Pooled(values.astype(np.float32), np.arange(ny) * br, np.arange(nx) * bc, (br, bc))


def worst_in_block(group_error: np.ndarray, row: int, group: int,
                   block: tuple[int, int]) -> tuple[int, int]:
    """(row, group) of the largest mean |error| in the block starting at (row, group)."""
    part = group_error[row:row + block[0], group:group + block[1]]
    if part.size == 0:
        raise IndexError(f"no group at (row, group) = ({row}, {group}) of a "
                         f"{group_error.shape[0]} × {group_error.shape[1]} grid")
    i, j = np.unravel_index(int(np.argmax(np.nan_to_num(part, nan=-1.0))), part.shape)
    return row + int(i), group + int(j)

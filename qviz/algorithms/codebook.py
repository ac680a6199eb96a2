"""Non-uniform grids: a per-row k-means codebook (SqueezeLLM) and the fixed NF4 codebook (QLoRA).

Both decode as ``scale · codebook[code]`` (see :class:`~qviz.result.QuantResult`):

* ``kmeans``: every output row gets its own ``2**bits`` centroids, found by
  weighted k-means over the row's weights (scikit-learn ``KMeans``). The
  weight of column ``j`` is its importance, e.g. the mean squared activation
  (llama.cpp's imatrix) or SqueezeLLM's Fisher information, so the centroids
  settle where the important weights are. The centroids are stored in fp16
  (rounded here, so decoding is what a file would give), every weight takes
  the code of its nearest rounded centroid (:func:`nearest`), and the scale is 1.
* ``nf4``: the 16 "normal float" levels of QLoRA, quantiles of N(0, 1) scaled
  to [-1, 1] with an exact zero, times each block's absmax, computed as
  bitsandbytes computes it (``quantize_4bit(..., quant_type="nf4")``, its
  CPU backend ``backends/default/ops.py``): the absmax is kept in float32,
  each weight is scaled by the float32 reciprocal of its block's absmax,
  clamped to [-1, 1], and takes the level whose bucket between float32
  midpoints of adjacent levels holds it (a value on a midpoint goes to the
  lower level). ``absmax="float16"`` rounds the absmax to fp16 first (half
  the parameter storage).

Notes
-----
Kim, Hooper, Gholami, Dong, Li, Shen, Mahoney, Keutzer, "SqueezeLLM:
Dense-and-Sparse Quantization", ICML 2024, arXiv:2306.07629, Section 4.1
(sensitivity-based weighted k-means; the reference ``quantization/nuq.py`` runs
``KMeans(n_clusters=2**bit, random_state=0, n_init="auto", max_iter=50)`` per row).
Dettmers, Pagnoni, Holtzman, Zettlemoyer, "QLoRA: Efficient Finetuning of
Quantized LLMs", NeurIPS 2023, arXiv:2305.14314, Section 3 ("4-bit NormalFloat")
and Appendix E (the NF4 values, as in bitsandbytes ``functional.py``).
"""
from __future__ import annotations

import numpy as np

from qviz.arrays import as_importance, as_weight, check_group_size
from qviz.result import QuantResult

__all__ = ["NF4", "NF4_MIDPOINTS", "kmeans", "nearest", "nf4", "pack_nf4"]

#: QLoRA's NF4 levels (Appendix E; bitsandbytes ``get_4bit_type("nf4")``), code 0 … 15.
NF4 = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=np.float32)

#: bucket bounds between adjacent NF4 levels, ``(NF4[i] + NF4[i+1]) / 2`` in float32 as bitsandbytes
#: computes them (``_get_4bit_quantize_bounds``); (15,) float32
NF4_MIDPOINTS = ((NF4[:-1] + NF4[1:]) / np.float32(2)).astype(np.float32)

#: the smallest absmax bitsandbytes divides by (``absmax.clamp(min=1e-38)``), float32
ABSMAX_FLOOR = np.float32(1e-38)

#: the largest finite fp16 value: centroids and scales must fit
FP16_MAX = 65504.0

#: values handled per step by :func:`nearest` and :func:`nf4`, so temporaries stay a few MB
CHUNK = 1 << 18


def _fp16(x: np.ndarray) -> np.ndarray:
    """``x`` as stored in fp16 and read back (numpy's cast rounds to nearest even)."""
    return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


def _check_fp16_range(w: np.ndarray) -> None:
    big = max(float(w.max()), -float(w.min()))  # max |w| without a copy of w
    if big > FP16_MAX:
        raise ValueError(f"the weight reaches |w| = {big:g}, beyond fp16's {FP16_MAX:g}, where "
                         f"qviz stores codebooks and scales; rescale the weight first")


def _nearest_sorted(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """:func:`nearest` of a 1-D float64 ``values`` among 1-D ascending float64 ``levels``; intp."""
    k = levels.shape[0]
    hi = np.searchsorted(levels, values, side="left")  # (n,) first level >= value
    lo = np.maximum(hi - 1, 0)  # (n,) the level below (or the first)
    np.minimum(hi, k - 1, out=hi)
    pick = np.where(np.abs(values - levels[hi]) < np.abs(values - levels[lo]), hi, lo)  # ties: lower
    return np.searchsorted(levels, levels[pick], side="left")  # the first of repeated levels


def nearest(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Index of the level nearest to each value; ties to the lower index.

    Parameters
    ----------
    values : ndarray, shape (n,) or (n_rows, n), float, finite
    levels : ndarray, shape (k,) or (n_rows, k), float
        Ascending (repeats allowed) along the last axis, ``k <= 256``; one
        row of levels per row of values when 2-D.

    Returns
    -------
    ndarray, shape of ``values``, uint8
        ``argmin_j |value - levels[j]|`` with the distances in float64; of
        equal distances (a tie, or a repeated level) the lowest index.

    Raises
    ------
    ValueError
        Levels not ascending, or 2-D levels whose rows do not pair with the
        rows of ``values``.

    Notes
    -----
    Only the two levels around each value (``np.searchsorted``) are
    compared, in chunks of :data:`CHUNK` values, so the memory is a few times
    that of ``values`` instead of ``k`` times (a float64 distance to every
    level took 4.5 GB for NF4 on a 4096 × 4096 weight). Since rounding is
    monotone, the nearest level is always one of the two; the result equals
    the full argmin whenever distinct levels have distinct float64 distances,
    which holds for float32 values and levels (their float64 differences are
    exact unless their magnitudes differ by more than 2**29).

    Examples
    --------
    >>> nearest(np.array([0.1, 0.5, 0.9], np.float32), np.array([0.0, 1.0], np.float32))
    array([0, 0, 1], dtype=uint8)
    """
    v = np.asarray(values)
    lv = np.asarray(levels, dtype=np.float64)
    if lv.ndim not in (1, 2) or lv.shape[-1] == 0 or lv.shape[-1] > 256:
        raise ValueError(f"levels must be (k,) or (n_rows, k) with 1 <= k <= 256, got shape {lv.shape}")
    if np.any(np.diff(lv, axis=-1) < 0):
        raise ValueError("levels must ascend along their last axis; sort them first (np.sort(levels, axis=-1))")
    out = np.empty(v.shape, dtype=np.uint8)
    if lv.ndim == 2:
        if v.ndim != 2 or v.shape[0] != lv.shape[0]:
            raise ValueError(f"{lv.shape[0]} rows of levels need values of shape ({lv.shape[0]}, n), "
                             f"got {v.shape}")
        for i in range(v.shape[0]):  # one row of levels at a time: (n,) against (k,)
            out[i] = _nearest_sorted(v[i].astype(np.float64), lv[i])
        return out
    flat_in, flat_out = v.reshape(-1), out.reshape(-1)
    for s in range(0, flat_in.size, CHUNK):
        flat_out[s:s + CHUNK] = _nearest_sorted(flat_in[s:s + CHUNK].astype(np.float64), lv)
    return out


def pack_nf4(codes: np.ndarray, absmax: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """The storage bytes of an NF4 weight, row by row, in bitsandbytes' nibble order.

    Parameters
    ----------
    codes : ndarray, shape (n_rows, n_cols), uint8
        NF4 codes 0..15.
    absmax : ndarray, shape (n_rows, n_groups), float32
    dtype : {"float32", "float16"}
        How each absmax is stored.

    Returns
    -------
    ndarray, shape (n_rows, ceil(n_cols / 2) + n_groups * (4 | 2)), uint8

    Notes
    -----
    One row::

        byte j < ceil(n_cols / 2):    bit 7 6 5 4 | 3 2 1 0
                                          code 2j | code 2j+1   (0 past the row's end)
        then n_groups absmax values, little-endian float32 (4 bytes) or float16 (2 bytes)

    The code bytes are bitsandbytes' ``quantize_4bit`` packing (``q[::2] << 4 | q[1::2]``
    over the flattened weight: the same bytes when ``n_cols`` is even); bitsandbytes
    keeps the absmax in a tensor of its own, here it follows the row's codes.

    Examples
    --------
    >>> pack_nf4(np.array([[1, 2, 15]], np.uint8), np.array([[2.0]], np.float32), "float16").tolist()
    [[18, 240, 0, 64]]
    """
    n_rows, n_cols = codes.shape
    half = -(-n_cols // 2)
    pairs = n_cols // 2
    store = np.dtype("<f4" if dtype == "float32" else "<f2")
    out = np.zeros((n_rows, half + absmax.shape[1] * store.itemsize), dtype=np.uint8)
    out[:, :pairs] = (codes[:, 0:2 * pairs:2] << 4) | codes[:, 1:2 * pairs:2]
    if n_cols % 2:
        out[:, half - 1] = codes[:, -1] << 4
    out[:, half:] = np.ascontiguousarray(absmax, dtype=store).view(np.uint8).reshape(n_rows, -1)
    return out


#: how :func:`nf4` may store each block's absmax
ABSMAX_DTYPES = ("float32", "float16")


def nf4(w, group_size: int = 64, absmax: str = "float32") -> QuantResult:
    """NF4: QLoRA's 16 normal-float levels times each block's absmax, as bitsandbytes computes it.

    Parameters
    ----------
    w : array_like, shape (n_rows, n_cols), float
        Never modified.
    group_size : int
        Consecutive columns per block (bitsandbytes' ``blocksize``, 64); the
        last block of a row is shorter when it does not divide the row.
    absmax : {"float32", "float16"}
        How each block's absmax is kept: float32 as bitsandbytes does
        (32 bits per block), or rounded to fp16 (16 bits; the weight must
        then stay within fp16's range).

    Returns
    -------
    QuantResult
        ``method="nf4"``, ``bits=4``; codes uint8 (n_rows, n_cols) index
        ``codebook`` (= :data:`NF4`, (16,) float32); ``scales`` float32
        (n_rows, n_groups) the absmax of each block (0 for an all-zero block,
        whose codes point at level 0.0); ``packed`` uint8 the storage bytes
        (:func:`pack_nf4`), so ``bits_per_weight`` counts 4 bits per code and
        32 (or 16) per block.

    Raises
    ------
    ValueError
        An unknown ``absmax``, a bad ``group_size``, or with ``"float16"`` a
        weight beyond fp16's range.

    Notes
    -----
    bitsandbytes' rule (``backends/default/ops.py``, ``quantize_4bit``):
    ``scaled = clamp(w * (1 / max(absmax, 1e-38)), -1, 1)`` in float32 and
    the code is the number of :data:`NF4_MIDPOINTS` below ``scaled`` (a value
    on a midpoint takes the lower level). A row's short last block is
    divided by its absmax, as bitsandbytes divides its last short block.
    bitsandbytes' blocks run over the flattened weight, these over each row:
    the codes and absmax agree when ``group_size`` divides ``n_cols`` (or
    for a single row).

    Examples
    --------
    >>> r = nf4(np.array([[-2.0, 0.1, 1.0, 2.0]], np.float32), group_size=4)
    >>> r.codes  # 0.1/2 = 0.05 is above the midpoint 0.0398; 1/2 = 0.5 below 0.5017
    array([[ 0,  8, 12, 15]], dtype=uint8)
    >>> r.dequantize().round(4)
    array([[-2.    ,  0.1592,  0.8814,  2.    ]], dtype=float32)
    >>> r.bits_per_weight  # 4 codes in 2 bytes, one float32 absmax
    12.0
    """
    w = as_weight(w)
    n_rows, n_cols = w.shape
    g = check_group_size(group_size, n_cols)
    if absmax not in ABSMAX_DTYPES:
        raise ValueError(f"absmax={absmax!r}: choose 'float32' (bitsandbytes' absmax, 32 bits "
                         f"per block) or 'float16' (rounded to fp16, 16 bits)")
    if absmax == "float16":
        _check_fp16_range(w)
    starts = np.arange(0, n_cols, g)
    full = n_cols // g * g  # columns in whole blocks
    scales = np.empty((n_rows, starts.size), dtype=np.float32)
    codes = np.empty((n_rows, n_cols), dtype=np.uint8)
    step = max(1, CHUNK // n_cols)
    for r0 in range(0, n_rows, step):  # a few rows at a time: temporaries stay small
        rows = w[r0:r0 + step]  # (r, n_cols)
        amax = np.maximum.reduceat(np.abs(rows), starts, axis=1)  # (r, n_groups)
        if absmax == "float16":
            amax = _fp16(amax)
        scales[r0:r0 + step] = amax
        den = np.maximum(amax, ABSMAX_FLOOR)  # bitsandbytes' absmax.clamp(min=1e-38)
        scaled = np.empty_like(rows)
        if full:
            inv = np.float32(1) / den[:, :full // g]  # (r, full // g) float32 reciprocals
            scaled[:, :full] = (rows[:, :full].reshape(rows.shape[0], -1, g)
                                * inv[:, :, None]).reshape(rows.shape[0], full)
        if full < n_cols:  # the short last block: divided, as bitsandbytes' tail block
            scaled[:, full:] = rows[:, full:] / den[:, -1:]
        np.clip(scaled, np.float32(-1), np.float32(1), out=scaled)
        codes[r0:r0 + step] = np.searchsorted(NF4_MIDPOINTS, scaled, side="left")
    return QuantResult("nf4", w.shape, 4, g, codes, scales, codebook=NF4.copy(),
                       packed=pack_nf4(codes, scales, absmax),
                       info={"codebook": "NF4 (QLoRA)", "absmax": absmax})


def kmeans(w, bits: int = 3, importance=None, *, n_init: int = 1, max_iter: int = 50,
           random_state: int = 0) -> QuantResult:
    """Per-row weighted k-means codebooks with ``2**bits`` centroids (SqueezeLLM).

    Parameters
    ----------
    w : array_like, shape (n_rows, n_cols), float
        Never modified. ``n_cols >= 2**bits``.
    bits : int
        2..8: ``2**bits`` centroids per row.
    importance : array_like, shape (n_cols,), optional
        Non-negative weight of every input column in the k-means objective
        ``Σ_j importance_j (w_ij - c(w_ij))²``, e.g. :func:`qviz.imatrix` of
        the layer's inputs; None weighs all columns alike. Only ratios
        matter: it is rescaled by a power of two when its largest value is
        far from 1 (the fit is then the same as for the unscaled ratios).
    n_init, max_iter, random_state : int
        scikit-learn ``KMeans`` options (k-means++ starts; fixed seed, one
        thread: the result is deterministic).

    Returns
    -------
    QuantResult
        ``method="kmeans"``, ``group_size = n_cols``; ``codebook`` float32
        (n_rows, 2**bits), ascending, fp16-rounded; codes uint8 (n_rows,
        n_cols), each weight's nearest centroid; ``scales`` ones (1, 1).
        ``info["objective"]``: the weighted squared error summed over rows
        (with ``importance`` as given).

    Notes
    -----
    A row with at most ``2**bits`` distinct values keeps them all (padded
    with its largest) instead of running k-means.

    Examples
    --------
    >>> w = np.array([[0.0, 0.1, 0.9, 1.0, 5.0, 5.2]], np.float32)
    >>> kmeans(w, bits=2).codebook.shape
    (1, 4)
    """
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    w = as_weight(w)
    n_rows, n_cols = w.shape
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 8:
        raise ValueError(f"bits={bits!r}: choose an integer from 2 to 8")
    k = 2 ** int(bits)
    if n_cols < k:
        raise ValueError(f"{k} centroids need rows of at least {k} weights; the rows have {n_cols}. "
                         f"Use bits <= {int(np.log2(n_cols)) if n_cols > 1 else 0}")
    _check_fp16_range(w)
    imp = _importance(importance, n_cols)
    sample_weight = None if imp is None else _unit_scale(imp)
    codebook = np.empty((n_rows, k), dtype=np.float32)
    with threadpool_limits(limits=1):  # small fits: one thread is faster, and thread-count independent
        for i, row in enumerate(w):
            distinct = np.unique(row)
            if distinct.size <= k:
                codebook[i] = np.pad(distinct, (0, k - distinct.size), mode="edge")
                continue
            fit = KMeans(n_clusters=k, n_init=n_init, max_iter=max_iter,
                         random_state=random_state).fit(row.reshape(-1, 1), sample_weight=sample_weight)
            codebook[i] = np.sort(fit.cluster_centers_[:, 0])
    codebook = np.sort(_fp16(codebook), axis=1)  # (n_rows, k)
    codes = nearest(w, codebook)
    weights = np.ones(n_cols) if imp is None else imp.astype(np.float64)
    objective = 0.0
    step = max(1, CHUNK // n_cols)
    for r0 in range(0, n_rows, step):  # float64 errors a few rows at a time
        decoded = np.take_along_axis(codebook[r0:r0 + step], codes[r0:r0 + step].astype(np.intp), axis=1)
        objective += float(((decoded.astype(np.float64) - w[r0:r0 + step]) ** 2 @ weights).sum())
    return QuantResult("kmeans", w.shape, int(bits), n_cols, codes,
                       np.ones((1, 1), dtype=np.float32), codebook=codebook,
                       info={"weighted": imp is not None, "objective": objective,
                             "n_init": n_init, "random_state": random_state})


def _importance(importance, n_cols: int) -> np.ndarray | None:
    """Validated column weights: float32 (n_cols,), finite, >= 0, not all zero."""
    if importance is None:
        return None
    imp = as_importance(importance, n_cols, name="importance")
    if (imp < 0).any() or not imp.any():
        raise ValueError("importance must be >= 0 and not all zero (it weighs the squared "
                         "error of each column, e.g. mean x² of the activations)")
    return imp


def _unit_scale(imp: np.ndarray) -> np.ndarray:
    """``imp`` times a power of two that brings its largest value into [1, 2), when it is outside [2**-60, 2**60].

    scikit-learn sums the weights in float32 (1e38 each overflows: "probabilities do not sum
    to 1"); a power of two changes no ratio, so the fit is the one of the unscaled weights.
    """
    top = float(imp.max())
    if 2.0 ** -60 <= top <= 2.0 ** 60:
        return imp
    _, exponent = np.frexp(top)  # top = m · 2**exponent, 0.5 <= m < 1
    return np.ldexp(imp, 1 - int(exponent)).astype(np.float32)

"""Non-uniform grids: a per-row k-means codebook (SqueezeLLM) and the fixed NF4 codebook (QLoRA).

Both decode as ``scale · codebook[code]`` (see :class:`~qviz.result.QuantResult`):

* ``kmeans``: every output row gets its own ``2**bits`` centroids, found by
  weighted k-means over the row's weights (scikit-learn ``KMeans``). The
  weight of column ``j`` is its importance, e.g. the mean squared activation
  (llama.cpp's imatrix) or SqueezeLLM's Fisher information, so the centroids
  settle where the important weights are. The centroids are stored in fp16
  (rounded here, so decoding is what a file would give), every weight takes
  the code of its nearest rounded centroid (:func:`nearest`), and the scale is 1.
* ``nf4``: the 16 "normal float" levels of QLoRA times each block's absmax,
  as bitsandbytes computes it, lives in :mod:`qviz.formats.bnb4` beside
  bitsandbytes' FP4 and double quantization.

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

from qviz.arrays import as_importance, as_weight
from qviz.result import QuantResult

__all__ = ["kmeans", "nearest"]

#: the largest finite fp16 value: centroids and scales must fit
FP16_MAX = 65504.0

#: values handled per step by :func:`nearest`, so temporaries stay a few MB
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

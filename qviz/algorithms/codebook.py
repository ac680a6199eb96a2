"""Non-uniform grids: a per-row k-means codebook (SqueezeLLM) and the fixed NF4 codebook (QLoRA).

Both decode as ``scale · codebook[code]`` (see :class:`~qviz.result.QuantResult`):

* ``kmeans``: every output row gets its own ``2**bits`` centroids, found by
  weighted k-means over the row's weights (scikit-learn ``KMeans``). The
  weight of column ``j`` is its importance, e.g. the mean squared activation
  (llama.cpp's imatrix) or SqueezeLLM's Fisher information, so the centroids
  settle where the important weights are. The centroids are stored in fp16
  (rounded here, so decoding is what a file would give), every weight takes
  the code of its nearest rounded centroid, and the scale is 1.
* ``nf4``: the 16 "normal float" levels of QLoRA, quantiles of N(0, 1) scaled
  to [-1, 1] with an exact zero, times each block's absmax. qviz stores the
  absmax in fp16 (bitsandbytes keeps float32, 0.5 bit per weight at block 64;
  fp16 is what ``QuantResult`` counts); every weight takes the level nearest
  to ``w / absmax``.

Nearest means the smallest ``|w - level|`` (computed exactly in float64);
ties go to the lower level.

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

from qviz.arrays import as_weight, check_finite, check_group_size
from qviz.result import QuantResult

__all__ = ["NF4", "kmeans", "nearest", "nf4"]

#: QLoRA's NF4 levels (Appendix E; bitsandbytes ``get_4bit_type("nf4")``), code 0 … 15.
NF4 = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=np.float32)

#: the largest finite fp16 value: centroids and scales must fit
FP16_MAX = 65504.0


def _fp16(x: np.ndarray) -> np.ndarray:
    """``x`` as stored in fp16 and read back (numpy's cast rounds to nearest even)."""
    return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


def _check_fp16_range(w: np.ndarray) -> None:
    big = float(np.abs(w).max())
    if big > FP16_MAX:
        raise ValueError(f"the weight reaches |w| = {big:g}, beyond fp16's {FP16_MAX:g}, where "
                         f"qviz stores codebooks and scales; rescale the weight first")


def nearest(values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Index of the level nearest to each value; ties to the lower index.

    Parameters
    ----------
    values : ndarray, shape (n,) or (n_rows, n), float32
    levels : ndarray, shape (k,) or (n_rows, k), float32
        Ascending along the last axis; one row of levels per row of values
        when 2-D.

    Returns
    -------
    ndarray, shape of ``values``, uint8

    Examples
    --------
    >>> nearest(np.array([0.1, 0.5, 0.9], np.float32), np.array([0.0, 1.0], np.float32))
    array([0, 0, 1], dtype=uint8)
    """
    v = np.asarray(values, dtype=np.float64)[..., :, None]  # (..., n, 1)
    lv = np.asarray(levels, dtype=np.float64)[..., None, :]  # (..., 1, k)
    return np.argmin(np.abs(v - lv), axis=-1).astype(np.uint8)


def nf4(w, group_size: int = 64) -> QuantResult:
    """NF4: QLoRA's 16 normal-float levels times each block's absmax.

    Parameters
    ----------
    w : array_like, shape (n_rows, n_cols), float
        Never modified.
    group_size : int
        Consecutive columns per block (bitsandbytes' ``blocksize``, 64); the
        last block of a row is shorter when it does not divide the row.

    Returns
    -------
    QuantResult
        ``method="nf4"``, ``bits=4``; codes uint8 (n_rows, n_cols) index
        ``codebook`` (= :data:`NF4`, (16,) float32); ``scales`` float32
        (n_rows, n_groups) the fp16-rounded absmax of each block (0 for an
        all-zero block, whose codes point at level 0.0).

    Examples
    --------
    >>> r = nf4(np.array([[-2.0, 0.1, 1.0, 2.0]], np.float32), group_size=4)
    >>> r.codes  # 0.1/2 = 0.05 is nearer 0.0796 than 0.0; 1/2 = 0.5 nearer 0.4407 than 0.5626
    array([[ 0,  8, 12, 15]], dtype=uint8)
    >>> r.dequantize().round(4)
    array([[-2.    ,  0.1592,  0.8814,  2.    ]], dtype=float32)
    """
    w = as_weight(w)
    g = check_group_size(group_size, w.shape[1])
    _check_fp16_range(w)
    starts = np.arange(0, w.shape[1], g)
    absmax = _fp16(np.maximum.reduceat(np.abs(w), starts, axis=1))  # (n_rows, n_groups)
    per_col = np.repeat(absmax, g, axis=1)[:, : w.shape[1]]  # (n_rows, n_cols)
    scaled = w / np.where(per_col == 0, np.float32(1), per_col)  # an all-zero block stays 0
    codes = nearest(scaled, NF4)
    return QuantResult("nf4", w.shape, 4, g, codes, absmax, codebook=NF4.copy(),
                       info={"codebook": "NF4 (QLoRA)"})


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
        the layer's inputs; None weighs all columns alike.
    n_init, max_iter, random_state : int
        scikit-learn ``KMeans`` options (k-means++ starts; fixed seed, one
        thread: the result is deterministic).

    Returns
    -------
    QuantResult
        ``method="kmeans"``, ``group_size = n_cols``; ``codebook`` float32
        (n_rows, 2**bits), ascending, fp16-rounded; codes uint8 (n_rows,
        n_cols), each weight's nearest centroid; ``scales`` ones (1, 1).
        ``info["objective"]``: the weighted squared error summed over rows.

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
    sample_weight = _importance(importance, n_cols)
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
    decoded = np.take_along_axis(codebook, codes.astype(np.intp), axis=1)
    weights = np.ones(n_cols) if sample_weight is None else sample_weight.astype(np.float64)
    objective = float(((decoded.astype(np.float64) - w) ** 2 @ weights).sum())
    return QuantResult("kmeans", w.shape, int(bits), n_cols, codes,
                       np.ones((1, 1), dtype=np.float32), codebook=codebook,
                       info={"weighted": sample_weight is not None, "objective": objective,
                             "n_init": n_init, "random_state": random_state})


def _importance(importance, n_cols: int) -> np.ndarray | None:
    """Validated column weights: float32 (n_cols,), finite, >= 0, not all zero."""
    if importance is None:
        return None
    imp = np.asarray(importance)
    if imp.dtype.kind not in "fiu" or imp.dtype.kind == "b":
        raise TypeError(f"importance has dtype {imp.dtype}; pass one non-negative number per column")
    imp = np.ascontiguousarray(imp, dtype=np.float32).reshape(-1)
    if imp.shape[0] != n_cols:
        raise ValueError(f"importance has {imp.shape[0]} values but the rows have {n_cols} columns; "
                         f"pass one per input column (e.g. qviz.imatrix(x) of the layer's inputs)")
    check_finite(imp[None, :], "importance")
    if (imp < 0).any() or not imp.any():
        raise ValueError("importance must be >= 0 and not all zero (it weighs the squared "
                         "error of each column, e.g. mean x² of the activations)")
    return imp

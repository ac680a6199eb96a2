"""Hostile inputs at the conversion boundary, k-means importance and codebook memory (issue 12 items 9, 13).

Each test failed before its fix (checked by reverting the fix in the working copy).
"""
import tracemalloc

import numpy as np
import pytest
import torch

import qviz
from qviz.algorithms.codebook import kmeans, nearest
from qviz.arrays import as_activations, as_float32, as_weight


# ----------------------------------------------------------------- float64 beyond float32

@pytest.mark.parametrize("w", [[[1e39, 0.0]], np.array([[0.5, -2e39, 1e300]]), torch.tensor([[0.0, 1e39]],
                                                                                             dtype=torch.float64)])
def test_float64_beyond_float32_is_named_as_an_overflow(w):
    """``qviz.quantize([[1e39, 0]])`` said NaN/Inf: it overflowed float32 in the conversion."""
    with pytest.raises(ValueError, match=r"beyond float32's range .*the first is -?[12]e\+39 at \(row, col\) = "
                                         r"\(0, [01]\).*Rescale"):
        qviz.quantize(w, "rtn")


def test_real_nan_inf_still_say_nan_inf_and_overflow_counts_only_overflows():
    with pytest.raises(ValueError, match=r"1 NaN/Inf values; the first is at \(row, col\) = \(0, 1\)"):
        as_weight(np.array([[1.0, np.inf, 3.0]]))
    with pytest.raises(ValueError, match=r"2 values beyond float32's range.*first is 1e\+39 at \(row, col\) = \(0, 1\)"):
        as_weight(np.array([[np.nan, 1e39, -1e39]]))  # overflow is the clearer message
    with pytest.raises(ValueError, match=r"calib has 1 values beyond float32's range"):
        as_activations(np.array([[1.0, 1e40]]), 2)
    with pytest.raises(ValueError, match=r"x has 1 values beyond float32's range.*at index 2"):
        as_float32(np.array([1.0, 2.0, 5e38]), "x")
    # float32's own largest value and float64 just below it convert
    big = float(np.finfo(np.float32).max)
    assert as_weight(np.array([[big, -big]])).dtype == np.float32


def test_meta_device_tensors_say_load_the_weights_first():
    """A meta tensor gave torch's raw ``NotImplementedError: Cannot copy out of meta tensor``."""
    t = torch.empty(4, 32, device="meta")
    with pytest.raises(ValueError, match=r"weight is a tensor on the meta device \(shape \(4, 32\)\): it has "
                                         r"no data; load the weights first"):
        qviz.quantize(t, "rtn")
    with torch.device("meta"):
        lin = torch.nn.Linear(32, 4)
    with pytest.raises(ValueError, match="meta device"):
        qviz.quantize(lin, "nf4")
    with pytest.raises(ValueError, match="calib is a tensor on the meta device"):
        as_activations(torch.empty(8, 32, device="meta"), 32)


def test_ragged_lists_get_a_clear_error():
    with pytest.raises(ValueError, match=r"weight is not a rectangular array of numbers"):
        qviz.quantize([[1.0, 2.0], [3.0]], "rtn")


def test_the_callers_float64_data_is_left_alone():
    w = np.array([[1e39, 0.0]])
    before = w.copy()
    with pytest.raises(ValueError):
        qviz.quantize(w, "rtn")
    np.testing.assert_array_equal(w, before)


# ----------------------------------------------------------------- k-means importance

@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((3, 96)).astype(np.float32)
    imp = rng.lognormal(0, 2, 96).astype(np.float32)
    return w, imp


def test_kmeans_huge_importance_is_rescaled_not_an_sklearn_error(rows):
    """importance 1e38 gave sklearn's "probabilities do not sum to 1" (its float32 sums overflowed)."""
    w, imp = rows
    r = qviz.quantize(w, "kmeans", bits=3, importance=np.full(96, 1e38, np.float32))
    assert np.isfinite(r.codebook).all() and np.isfinite(r.info["objective"])
    # only ratios matter: a power of two changes nothing, in either direction
    base = kmeans(w, 3, imp)
    for factor in (2.0 ** 100, 2.0 ** -100, 2.0 ** 110):
        scaled = kmeans(w, 3, (imp.astype(np.float64) * factor).astype(np.float32))
        np.testing.assert_array_equal(scaled.codebook, base.codebook)
        np.testing.assert_array_equal(scaled.codes, base.codes)
        assert scaled.info["objective"] == pytest.approx(base.info["objective"] * factor, rel=1e-6)


@pytest.mark.parametrize("importance,error,match", [
    (np.array(["a"] * 96), TypeError, r"importance has dtype <U1; pass one non-negative number"),
    (["1.0"] * 96, TypeError, r"importance has dtype <U3"),
    ([None] * 96, TypeError, "importance has dtype object"),
    ("abc", TypeError, r"importance has dtype <U3"),
    ([[1.0, 2.0], [3.0]], ValueError, "importance is not a rectangular array of numbers"),
    (np.full(96, 1e39), ValueError, r"importance has 96 values beyond float32's range"),
    (np.ones((1, 96)), ValueError, r"importance has shape \(1, 96\); pass a vector of shape \(96,\)"),
    (torch.empty(96, device="meta"), ValueError, "importance is a tensor on the meta device"),
])
def test_kmeans_bad_importance(rows, importance, error, match):
    with pytest.raises(error, match=match):
        qviz.quantize(rows[0], "kmeans", bits=2, importance=importance)


# ----------------------------------------------------------------- memory (issue 12 item 9)
# Generous blow-up bounds, not speed figures (those are in benchmarks/bench_memory.py): the
# old code took 32+ bytes per weight for NF4 (a float64 distance to each of 16 levels) and
# 8 · 2**bits bytes per weight for k-means' nearest centroid.

def traced_peak(fn, *args, **kwargs) -> int:
    fn(*args, **kwargs)  # warm-up: imports, numba compilation
    tracemalloc.start()
    try:
        fn(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_nf4_peak_memory_is_a_few_times_the_weight():
    w = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)  # 4 MiB
    assert traced_peak(qviz.quantize, w, "nf4") < 4 * w.nbytes  # measured 1.6× here; before: ~100×


def test_nearest_peak_memory_does_not_grow_with_the_levels():
    rng = np.random.default_rng(1)
    values = rng.standard_normal((64, 4096)).astype(np.float32)  # 1 MiB
    levels = np.sort(rng.standard_normal((64, 256)).astype(np.float32), axis=1)
    assert traced_peak(nearest, values, levels) < 4 * values.nbytes  # before: 512× (a float64 per level)


def test_kmeans_8_bits_peak_memory_is_bounded():
    w = np.random.default_rng(2).standard_normal((2, 4096)).astype(np.float32)
    assert traced_peak(kmeans, w, 8) < 8 * 2**20  # measured 0.6 MB; before: 50 MB

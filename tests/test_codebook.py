"""Codebooks: NF4 against QLoRA's table and hand-made blocks; weighted k-means nearest, better where it matters."""
import doctest
import importlib

import numpy as np
import pytest

import qviz
from qviz.algorithms.codebook import NF4, kmeans, nearest, nf4

#: QLoRA (arXiv:2305.14314) Appendix E, the NF4 data type, as printed (and in bitsandbytes)
NF4_TABLE = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
             -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
             0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
             0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]


def fp16(x):
    return np.asarray(x, np.float32).astype(np.float16).astype(np.float32)


def is_nearest(values, chosen, levels):
    """Every chosen level is at the smallest distance (exact in float64) among the levels."""
    d = np.abs(values.astype(np.float64)[..., None] - levels.astype(np.float64)[..., None, :])
    return np.all(np.abs(values.astype(np.float64) - chosen.astype(np.float64)) == d.min(axis=-1))


def test_nf4_table_is_qloras():
    assert NF4.dtype == np.float32 and NF4.shape == (16,)
    np.testing.assert_array_equal(NF4, np.array(NF4_TABLE, dtype=np.float32))
    assert np.all(np.diff(NF4) > 0) and NF4[7] == 0.0  # ascending, an exact zero at code 7


def test_nf4_hand_made_blocks():
    w = np.array([[-2.0, 0.1, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0, -0.2999]], np.float32)
    r = qviz.quantize(w, "nf4", group_size=4)  # blocks of 4, 4 and a short last one of 2
    # block 0, absmax 2: -1 -> 0; 0.05 -> 0.0796 (nearer than 0); 0.5 -> 0.4407 (mid 0.5017); 1 -> 15
    # block 1 is all zero: scale 0, codes at the zero level; block 2: 3 -> 15, -0.09997 -> -0.09105
    np.testing.assert_array_equal(r.codes, [[0, 8, 12, 15, 7, 7, 7, 7, 15, 6]])
    np.testing.assert_array_equal(r.scales, [[2.0, 0.0, 3.0]])
    per_col = np.float32([[2.0] * 4 + [0.0] * 4 + [3.0] * 2])
    np.testing.assert_array_equal(r.dequantize(), per_col * NF4[r.codes])
    np.testing.assert_array_equal(r.levels(0, 2), np.float32(3.0) * NF4)
    assert r.method == "nf4" and r.bits == 4 and r.group_size == 4


def test_nf4_scale_is_stored_in_fp16_and_codes_are_nearest(rng):
    w = rng.standard_normal((16, 200)).astype(np.float32)  # 200 = 3·64 + 8
    w[2, :64] *= 0.9 / np.abs(w[2, :64]).max()
    w[2, 5] = 1.0004  # an absmax that fp16 rounds down to 1.0: w / scale > 1 still codes 15
    r = nf4(w)
    assert r.scales.shape == (16, 4)
    absmax = np.maximum.reduceat(np.abs(w), [0, 64, 128, 192], axis=1)
    np.testing.assert_array_equal(r.scales, fp16(absmax))
    assert r.scales[2, 0] == 1.0 and r.codes[2, 5] == 15
    per_col = np.repeat(r.scales, 64, axis=1)[:, :200]
    assert is_nearest(w / per_col, NF4[r.codes], NF4)
    np.testing.assert_array_equal(r.dequantize(), per_col * NF4[r.codes])
    assert r.bits_per_weight == pytest.approx(4 + 16 * 4 / 200 + 16 * 16 / (16 * 200))


def test_nearest_breaks_ties_to_the_lower_level():
    levels = np.array([-1.0, 0.0, 1.0], np.float32)
    np.testing.assert_array_equal(nearest(np.float32([-0.5, 0.5, 0.50001, 7.0]), levels), [0, 1, 2, 2])


@pytest.fixture(scope="module")
def real_rows():
    """32 rows of a real MiniLM weight and a skewed importance (a few columns dominate)."""
    w = qviz.demo.layer("encoder.layer.0.attention.output.dense")[:32]
    importance = np.random.default_rng(3).lognormal(0, 2.5, w.shape[1]).astype(np.float32)
    return w, importance


def weighted_error(r, w, importance):
    return float((((r.dequantize().astype(np.float64) - w) ** 2) @ importance).sum())


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_kmeans_every_weight_decodes_to_its_nearest_centroid(real_rows, bits):
    w, importance = real_rows
    r = qviz.quantize(w, "kmeans", bits=bits, importance=importance)
    cb = r.codebook
    assert cb.shape == (32, 2 ** bits) and cb.dtype == np.float32
    np.testing.assert_array_equal(cb, fp16(cb))  # stored in fp16: decoding is what a file gives
    assert np.all(np.diff(cb, axis=1) >= 0)
    assert is_nearest(w, r.dequantize(), cb)
    np.testing.assert_array_equal(r.levels(5, 0), cb[5])
    assert r.scales.shape == (1, 1) and r.scales[0, 0] == 1.0 and r.group_size == w.shape[1]
    assert r.bits_per_weight == pytest.approx(bits + 16 * 2 ** bits / w.shape[1] + 16 / w.size)
    assert r.info["objective"] == pytest.approx(weighted_error(r, w, importance), rel=1e-9)


def test_kmeans_weighted_beats_unweighted_on_the_weighted_metric(real_rows):
    w, importance = real_rows
    weighted = kmeans(w, 3, importance)
    plain = kmeans(w, 3)
    e_w, e_p = weighted_error(weighted, w, importance), weighted_error(plain, w, importance)
    assert e_w < 0.5 * e_p  # measured 0.26 here (importance lognormal, σ = 2.5)
    # and the unweighted one wins on the plain MSE, as it should
    assert np.mean((plain.dequantize() - w) ** 2) < np.mean((weighted.dequantize() - w) ** 2)


def test_kmeans_is_deterministic_and_leaves_input_alone(real_rows):
    w, importance = real_rows
    imp = importance.copy()
    a = kmeans(w, 3, imp)
    b = qviz.quantize(w, "kmeans", bits=3, importance=imp)
    np.testing.assert_array_equal(a.codebook, b.codebook)
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(imp, importance)
    assert not w.flags.writeable  # the demo layer is read-only: nothing could have written it


def test_kmeans_rows_with_few_distinct_values():
    w = np.zeros((3, 16), np.float32)
    w[1, :8] = 1.5
    w[2] = np.arange(16, dtype=np.float32) % 3
    r = kmeans(w, 2)
    np.testing.assert_array_equal(r.codebook, [[0, 0, 0, 0], [0, 1.5, 1.5, 1.5], [0, 1, 2, 2]])
    np.testing.assert_array_equal(r.dequantize(), w)


@pytest.mark.parametrize("method,options,error,match", [
    ("kmeans", {"bits": 1}, ValueError, "bits=1"),
    ("kmeans", {"bits": 9}, ValueError, "bits=9"),
    ("kmeans", {"bits": 6}, ValueError, "64 centroids need rows of at least 64"),
    ("kmeans", {"importance": np.ones(10)}, ValueError, "10 values but the rows have 32"),
    ("kmeans", {"importance": -np.ones(32)}, ValueError, ">= 0 and not all zero"),
    ("kmeans", {"importance": np.zeros(32)}, ValueError, ">= 0 and not all zero"),
    ("kmeans", {"importance": np.full(32, np.nan)}, ValueError, "NaN/Inf"),
    ("kmeans", {"importance": np.array(["a"] * 32)}, TypeError, "importance has dtype"),
    ("kmeans", {"group_size": 8}, TypeError, "no option.*group_size"),
    ("nf4", {"group_size": 0}, ValueError, "group_size=0"),
    ("nf4", {"group_size": 1.5}, TypeError, "must be an integer"),
    ("nf4", {"bits": 3}, TypeError, "no option.*bits"),
])
def test_bad_inputs(method, options, error, match):
    w = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    with pytest.raises(error, match=match):
        qviz.quantize(w, method, **options)


@pytest.mark.parametrize("method", ["kmeans", "nf4"])
def test_bad_weights(method):
    with pytest.raises(ValueError, match="beyond fp16"):
        qviz.quantize(np.full((2, 64), 1e5, np.float32), method)
    with pytest.raises(TypeError, match="integer dtype"):
        qviz.quantize(np.ones((2, 64), np.int8), method)
    with pytest.raises(ValueError, match="NaN/Inf"):
        qviz.quantize(np.full((2, 64), np.inf, np.float32), method)


def test_docstring_examples_run():
    failed, attempted = doctest.testmod(importlib.import_module("qviz.algorithms.codebook"))
    assert attempted > 0 and failed == 0

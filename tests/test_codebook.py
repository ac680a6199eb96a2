"""Codebooks: NF4 against QLoRA's table and hand-made blocks; weighted k-means nearest, better where it matters."""
import doctest
import importlib

import numpy as np
import pytest

import qviz
from qviz.algorithms.codebook import kmeans, nearest
from qviz.formats.bnb4 import NF4, NF4_MIDPOINTS, nf4

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
    # block 0, absmax 2: -1 -> 0; 0.05 -> 0.0796 (above the midpoint 0.0398); 0.5 -> 0.4407 (mid 0.5017)
    # block 1 is all zero: scale 0, codes at the zero level; block 2: 3 -> 15, -0.09997 -> -0.09105
    np.testing.assert_array_equal(r.codes, [[0, 8, 12, 15, 7, 7, 7, 7, 15, 6]])
    np.testing.assert_array_equal(r.scales, [[2.0, 0.0, 3.0]])
    per_col = np.float32([[2.0] * 4 + [0.0] * 4 + [3.0] * 2])
    np.testing.assert_array_equal(r.dequantize(), per_col * NF4[r.codes])
    np.testing.assert_array_equal(r.levels(0, 2), np.float32(3.0) * NF4)
    assert r.method == "nf4" and r.bits == 4 and r.group_size == 4


def bnb_scaled(w, absmax, g):
    """w · (1 / absmax) per block, clamped to [-1, 1], in float32 (bitsandbytes' rule; whole blocks)."""
    per_col = np.repeat(np.float32(1) / np.maximum(absmax, np.float32(1e-38)), g, axis=1)[:, :w.shape[1]]
    return np.clip(w * per_col, -1, 1)


def assert_nearest_up_to_midpoints(scaled, codes):
    """Each code is the nearest level, or ties it within float32 rounding of a midpoint."""
    d = np.abs(scaled.astype(np.float64)[..., None] - NF4.astype(np.float64))
    slack = np.abs(scaled.astype(np.float64) - NF4[codes]) - d.min(axis=-1)
    assert slack.max() <= 1e-7, slack.max()


def test_nf4_absmax_is_float32_by_default(rng):
    w = rng.standard_normal((16, 256)).astype(np.float32)
    r = nf4(w)
    absmax = np.maximum.reduceat(np.abs(w), [0, 64, 128, 192], axis=1)
    np.testing.assert_array_equal(r.scales, absmax)  # bitsandbytes keeps float32
    assert r.scales.dtype == np.float32 and r.info["absmax"] == "float32"
    assert_nearest_up_to_midpoints(bnb_scaled(w, absmax, 64), r.codes)
    per_col = np.repeat(r.scales, 64, axis=1)
    np.testing.assert_array_equal(r.dequantize(), per_col * NF4[r.codes])
    # 4 bits a code and a float32 absmax per block of 64: 4.5 (the fp16 count would say 4.25)
    assert r.bits_per_weight == 4 + 32 / 64
    assert r.nbytes == 16 * (256 // 2 + 4 * 4)


def test_nf4_absmax_float16_option(rng):
    w = rng.standard_normal((16, 200)).astype(np.float32)  # 200 = 3·64 + 8
    w[2, :64] *= 0.9 / np.abs(w[2, :64]).max()
    w[2, 5] = 1.0004  # an absmax that fp16 rounds down to 1.0: w / scale > 1 still codes 15
    r = nf4(w, absmax="float16")
    assert r.scales.shape == (16, 4) and r.info["absmax"] == "float16"
    absmax = np.maximum.reduceat(np.abs(w), [0, 64, 128, 192], axis=1)
    np.testing.assert_array_equal(r.scales, fp16(absmax))
    assert r.scales[2, 0] == 1.0 and r.codes[2, 5] == 15
    per_col = np.repeat(r.scales, 64, axis=1)[:, :200]
    assert_nearest_up_to_midpoints(np.clip(w / per_col, -1, 1), r.codes)
    np.testing.assert_array_equal(r.dequantize(), per_col * NF4[r.codes])
    assert r.bits_per_weight == pytest.approx(4 + 16 * 4 / 200)
    # qviz.quantize passes the option through; the default is bitsandbytes' float32
    a = qviz.quantize(w, "nf4", absmax="float16")
    np.testing.assert_array_equal(a.codes, r.codes)
    np.testing.assert_array_equal(qviz.quantize(w, "nf4").scales, absmax)


def test_nf4_packing_is_bitsandbytes_nibble_order(rng):
    w = rng.standard_normal((3, 131)).astype(np.float32)  # odd row: the last byte holds one code
    r = nf4(w, group_size=64)
    half = 66
    assert r.packed.shape == (3, half + 3 * 4)
    hi, lo = r.packed[:, :half] >> 4, r.packed[:, :half] & 15
    np.testing.assert_array_equal(hi, r.codes[:, 0::2])  # codes 0, 2, …, 130: high nibbles
    np.testing.assert_array_equal(lo[:, :65], r.codes[:, 1::2])
    assert not lo[:, 65].any()
    np.testing.assert_array_equal(r.packed[:, half:].copy().view("<f4"), r.scales)
    r16 = nf4(w, group_size=64, absmax="float16")
    np.testing.assert_array_equal(r16.packed[:, half:].copy().view("<f2").astype(np.float32), r16.scales)


def unpack_nibbles(packed, n):
    """bitsandbytes' packed uint8 (n/2,) -> codes (n,): high nibble first."""
    p = np.asarray(packed).reshape(-1)
    return np.stack([p >> 4, p & 15], axis=1).reshape(-1)[:n]


def test_nf4_equals_bitsandbytes_on_minilm():
    """bitsandbytes' CPU backend as the oracle: codes, absmax and code bytes on every MiniLM weight."""
    torch = pytest.importorskip("torch")
    bnb = pytest.importorskip("bitsandbytes.functional")
    n_codes = differing = 0
    for name in qviz.demo.layers():  # 40 weights, 22.7M codes; every row a multiple of 64
        w = qviz.demo.layer(name)
        assert w.shape[1] % 64 == 0  # bitsandbytes' blocks (over the flattened weight) are then ours
        r = nf4(w)
        packed, state = bnb.quantize_4bit(torch.from_numpy(np.array(w)), blocksize=64, quant_type="nf4")
        np.testing.assert_array_equal(r.scales, state.absmax.numpy().reshape(r.scales.shape), err_msg=name)
        theirs = unpack_nibbles(packed.numpy(), w.size).reshape(w.shape)
        bad = theirs != r.codes
        if bad.any():  # only a value on a midpoint may go either way: it must be a tie
            scaled = bnb_scaled(w, r.scales, 64)[bad]
            assert np.abs(scaled[:, None] - NF4_MIDPOINTS).min(axis=1).max() < 1e-7, name
        else:  # the stored bytes are bitsandbytes' bytes, row by row
            np.testing.assert_array_equal(r.packed[:, :w.shape[1] // 2],
                                          packed.numpy().reshape(w.shape[0], -1), err_msg=name)
        n_codes += w.size
        differing += int(bad.sum())
    assert n_codes > 22_000_000
    assert differing <= 100  # measured 0 of 22,682,112 with bitsandbytes 0.50.2 (absmax="float16": 9,091; qviz before: 9,092)
    # and bitsandbytes decodes our bytes to our values
    w = qviz.demo.layer("encoder.layer.0.intermediate.dense")
    r = nf4(w)
    packed, state = bnb.quantize_4bit(torch.from_numpy(np.array(w)), blocksize=64, quant_type="nf4")
    np.testing.assert_array_equal(bnb.dequantize_4bit(packed, state).numpy(), r.dequantize())


def old_nearest(values, levels):
    """qviz's nearest before issue 12: a float64 distance to every level (the oracle)."""
    v = np.asarray(values, dtype=np.float64)[..., :, None]
    lv = np.asarray(levels, dtype=np.float64)[..., None, :]
    return np.argmin(np.abs(v - lv), axis=-1).astype(np.uint8)


def test_nearest_equals_the_full_argmin(rng):
    # random values against sorted random levels, 1-D and one row of levels per row
    levels = np.sort(rng.standard_normal(16).astype(np.float32))
    values = (rng.standard_normal((50, 300)) * 2).astype(np.float32)
    np.testing.assert_array_equal(nearest(values, levels), old_nearest(values, levels))
    rows = np.sort(rng.standard_normal((50, 256)).astype(np.float32), axis=1)
    np.testing.assert_array_equal(nearest(values, rows), old_nearest(values, rows))
    # tie-rich: values on every midpoint, on every level, outside; repeated levels (k-means padding)
    lv = np.array([-1.0, -0.5, 0.0, 0.0, 0.25, 0.25, 0.25, 1.0], np.float32)
    mids = (lv[:-1] + lv[1:]) / 2
    tie = np.concatenate([mids, lv, [-7.0, 7.0, 0.125, 0.625, -0.75]]).astype(np.float32)
    np.testing.assert_array_equal(nearest(tie, lv), old_nearest(tie, lv))
    grid = np.arange(-64, 65, dtype=np.float32) / 32  # exact halves between levels on a 1/16 grid
    fine = np.sort(rng.integers(-16, 17, (20, 8)).astype(np.float32) / 16, axis=1)
    np.testing.assert_array_equal(nearest(np.tile(grid, (20, 1)), fine), old_nearest(np.tile(grid, (20, 1)), fine))
    np.testing.assert_array_equal(nearest(NF4_MIDPOINTS, NF4), old_nearest(NF4_MIDPOINTS, NF4))


def test_nearest_refuses_unsorted_levels():
    with pytest.raises(ValueError, match="ascend"):
        nearest(np.float32([0.5]), np.float32([1.0, 0.0]))


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


@pytest.mark.parametrize("method,options", [("kmeans", {}), ("nf4", {"absmax": "float16"})])
def test_bad_weights(method, options):
    with pytest.raises(ValueError, match="beyond fp16"):
        qviz.quantize(np.full((2, 64), 1e5, np.float32), method, **options)
    with pytest.raises(TypeError, match="integer dtype"):
        qviz.quantize(np.ones((2, 64), np.int8), method, **options)
    with pytest.raises(ValueError, match="NaN/Inf"):
        qviz.quantize(np.full((2, 64), np.inf, np.float32), method, **options)


def test_nf4_float32_absmax_takes_any_finite_range():
    w = np.full((2, 64), 1e5, np.float32)
    w[1] = -np.finfo(np.float32).max
    r = qviz.quantize(w, "nf4")  # float32 absmax: no fp16 limit
    np.testing.assert_array_equal(r.dequantize(), w)
    with pytest.raises(ValueError, match="absmax='bf16': choose 'float32'"):
        nf4(w, absmax="bf16")
    with pytest.raises(ValueError, match="absmax='bf16'.*'float32', 'float16'"):
        qviz.quantize(w, "nf4", absmax="bf16")


def test_docstring_examples_run():
    failed, attempted = doctest.testmod(importlib.import_module("qviz.algorithms.codebook"))
    assert attempted > 0 and failed == 0

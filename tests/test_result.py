"""QuantResult: derived storage, levels, decoding, display."""
import numpy as np
import pytest

import qviz
from qviz.result import QuantResult


def test_bits_per_weight_is_derived_from_what_is_stored(rng):
    w = rng.standard_normal((16, 576)).astype(np.float32)
    asym = qviz.quantize(w, "rtn", bits=4, group_size=128)
    # 576 = 4·128 + 64: 5 groups a row, each an fp16 scale and a 4-bit zero
    assert asym.storage_bits == 16 * 576 * 4 + 16 * 5 * (16 + 4)
    sym = qviz.quantize(w, "rtn", bits=4, group_size=128, sym=True)
    assert sym.storage_bits == 16 * 576 * 4 + 16 * 5 * 16  # the zero is implied, not stored
    assert sym.nbytes == sym.storage_bits // 8
    per_tensor = qviz.quantize(w, "rtn", bits=8, per_tensor=True)
    assert per_tensor.bits_per_weight == 8 + (16 + 8) / w.size


def test_packed_bytes_decide_storage():
    codes = np.zeros((2, 32), np.uint8)
    r = QuantResult("Q4_0", (2, 32), 4, 32, codes, np.ones((2, 1), np.float32),
                    packed=np.zeros((2, 18), np.uint8))
    assert r.nbytes == 36 and r.bits_per_weight == 4.5


def test_levels_are_the_grid_of_the_group(rng):
    w = rng.standard_normal((4, 256)).astype(np.float32)
    r = qviz.quantize(w, "rtn", bits=3, group_size=64)
    lv = r.levels(2, 1)
    assert lv.shape == (8,)
    np.testing.assert_allclose(np.diff(lv), r.scales[2, 1], rtol=1e-6)
    # every decoded weight of that group is one of its levels
    group = r.dequantize()[2, 64:128]
    assert np.isin(group, lv).all()
    with pytest.raises(IndexError, match="4 rows × 4 groups"):
        r.levels(4, 0)


def test_min_and_codebook_decoding():
    codes = np.array([[0, 1, 2, 3]], np.uint8)
    s = np.array([[0.5]], np.float32)
    mins = QuantResult("x", (1, 4), 2, 4, codes, s, mins=np.array([[1.0]], np.float32))
    np.testing.assert_array_equal(mins.dequantize(), [[-1.0, -0.5, 0.0, 0.5]])
    np.testing.assert_array_equal(mins.levels(0, 0), [-1.0, -0.5, 0.0, 0.5])
    cb = QuantResult("x", (1, 4), 2, 4, codes, s, codebook=np.array([-4, -1, 1, 4], np.float32))
    np.testing.assert_array_equal(cb.dequantize(), [[-2.0, -0.5, 0.5, 2.0]])
    row_cb = QuantResult("x", (1, 4), 2, 4, codes, np.ones((1, 1), np.float32),
                         codebook=np.array([[3, 2, 1, 0]], np.float32))
    np.testing.assert_array_equal(row_cb.dequantize(), [[3, 2, 1, 0]])


def test_frozen_and_html(rng):
    r = qviz.quantize(rng.standard_normal((4, 32)).astype(np.float32), "rtn", group_size=32)
    with pytest.raises(AttributeError):
        r.bits = 3
    html = r._repr_html_()
    assert "bits per weight" in html and "4.6250" in html and "rtn" in html


def test_stored_parameters_count_at_their_own_width_and_fixed_codebooks_are_free():
    codes = np.zeros((2, 64), np.uint8)
    s = np.full((2, 2), 0.5, np.float32)
    cb = np.array([0.0, 0.5, 1.0, np.nan], np.float32)  # a float format's table, NaN code never produced
    plain = QuantResult("x", (2, 64), 4, 32, codes, s, codebook=cb)
    assert plain.storage_bits == 128 * 4 + 4 * 16  # the 1-D codebook belongs to the format
    e8m0 = QuantResult("x", (2, 64), 4, 32, codes, s, codebook=cb,
                       stored={"scale": np.full((2, 2), 126, np.uint8)})
    assert e8m0.storage_bits == 128 * 4 + 4 * 8 and e8m0.nbytes == 68
    two_level = QuantResult("x", (2, 64), 4, 32, codes, s, codebook=cb,
                            stored={"block": np.zeros((2, 2), np.uint8), "tensor": np.float32(2.0)})
    assert two_level.storage_bits == 128 * 4 + 4 * 8 + 32
    np.testing.assert_array_equal(plain.levels(0, 0), [0.0, 0.25, 0.5])
    float_zeros = QuantResult("x", (2, 64), 4, 32, codes, s, zeros=np.ones((2, 2), np.float32),
                              stored={"scale": np.ones((2, 2), np.float32), "zero": np.ones((2, 2), np.float32)})
    assert float_zeros.storage_bits == 128 * 4 + 2 * 4 * 32  # zeros counted once, as stored

"""Hostile inputs to the quant types (issue 12): finite inputs give finite results or a clear error."""
from __future__ import annotations

import numpy as np
import pytest

import qviz
from qviz import registry

TYPES = list(registry.types())


@pytest.fixture
def w(rng):
    return rng.standard_normal((4, 256)).astype(np.float32)


#: where the issue saw inf/NaN: Q4_0 from |w| ≈ 6e5, these from ≈ 1e7
OVERFLOW_FROM = {"Q4_0": 1e6, "Q8_0": 1e7, "Q4_K": 1e7, "Q2_K": 1e7, "Q3_K": 1e7, "IQ4_NL": 1e7}


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("factor", [1e6, 1e7, 1e8, 1e20, 1e30])
def test_a_scale_beyond_fp16_is_an_error_naming_row_and_block(w, name, factor):
    """Never inf/NaN, never the all-zero blocks Q3_K/Q6_K's searches return there: an error."""
    big = w * np.float32(factor)
    im = np.ones(256, np.float32) if registry.quant_type(name).requires_imatrix else None
    fp16_scales = registry.quant_type(name).scale_max <= 65504  # E8M0 scales (MXFP4) reach 2**127
    if factor >= OVERFLOW_FROM.get(name, 1e20 if fp16_scales else np.inf):
        with pytest.raises(ValueError, match=r"row \d+, block \d+ \(columns \d+\.\.\d+\) reaches .*"
                                             r"beyond \S+'s [0-9.e+]+"):
            qviz.quantize(big, name, imatrix=im)
        return
    try:
        r = qviz.quantize(big, name, imatrix=im)
    except ValueError as e:
        assert f"beyond {registry.quant_type(name).scale_format}'s" in str(e)
    else:
        d = r.dequantize()
        assert np.isfinite(d).all()
        blocks = registry.quant_type(name).block_size
        amax = np.abs(big).reshape(4, -1, blocks).max(axis=2)
        assert (np.abs(d).reshape(4, -1, blocks).max(axis=2) >= amax / 2).all()


def test_large_weights_that_fit_are_not_refused(w):
    """|w| up to 1e5 fits every type's fp16 scales (Q8_0: d = max/127)."""
    r = qviz.quantize(w * np.float32(1e5 / np.abs(w).max()), "Q8_0")
    assert np.isfinite(r.dequantize()).all()


def test_an_overflow_far_from_the_start_names_its_row_and_block(w):
    big = w.copy()
    big[3, 200] = 1e9
    with pytest.raises(ValueError, match=r"Q4_0: row 3, block 6 \(columns 192\.\.223\) reaches \|w\| = 1e\+09"):
        qviz.quantize(big, "Q4_0")


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("value", [1e35, 1e38, 3e38])
def test_a_huge_finite_imatrix_gives_a_finite_result(w, name, value):
    """Only relative importance matters: a uniform huge imatrix quantizes like a uniform small one."""
    r = qviz.quantize(w, name, imatrix=np.full(256, value, np.float32))
    assert np.isfinite(r.dequantize()).all()
    if r.info.get("imatrix_rescaled"):
        ref = qviz.quantize(w, name, imatrix=np.ones(256, np.float32))
        np.testing.assert_array_equal(r.packed, ref.packed)


def test_a_normal_imatrix_is_never_rescaled(w):
    im = np.random.default_rng(2).random(256).astype(np.float32)
    assert "imatrix_rescaled" not in qviz.quantize(w, "Q4_K", imatrix=im).info


@pytest.mark.parametrize("bad,err,match", [
    (np.ones((16, 16)), ValueError, r"imatrix has shape \(16, 16\); pass a vector of shape \(256,\)"),
    (np.ones((1, 256)), ValueError, r"imatrix has shape \(1, 256\)"),
    (np.ones(255), ValueError, r"imatrix has 255 values but the rows have 256 columns"),
    (np.array(["1"] * 256), TypeError, r"imatrix has dtype <U1; pass one non-negative number"),
    (np.full(256, 1e39), ValueError, r"imatrix has 256 values beyond float32's range"),
    (np.full(256, -1.0), ValueError, r"256 negative values"),
])
def test_bad_imatrix_is_refused_not_reshaped(w, bad, err, match):
    with pytest.raises(err, match=match):
        qviz.quantize(w, "Q4_K", imatrix=bad)

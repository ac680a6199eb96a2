"""RTN: exact against the GPTQ reference's quantizer, plus properties."""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import qviz
from reference.gptq_quantizer import quantize_groups


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("group_size", [32, 128, -1, 100])
def test_rtn_equals_gptq_reference(rng, bits, sym, group_size):
    w = (rng.standard_normal((16, 576)) * 0.05).astype(np.float32)  # 576 = 4·128 + 64: a short last group
    w[3, :] = np.abs(w[3, :])  # a row with no negative weight
    w[5, :100] = 0.0  # an all-zero group
    r = qviz.quantize(w, "rtn", bits=bits, sym=sym, group_size=group_size)
    g = w.shape[1] if group_size == -1 else group_size
    codes, scales, zeros = quantize_groups(torch.from_numpy(w), bits, sym, g)
    np.testing.assert_array_equal(r.codes, codes.numpy().astype(np.uint8))
    np.testing.assert_array_equal(r.scales, scales.numpy())
    if sym:
        assert r.zeros is None and r.implied_zero == zeros[0, 0].item()
    else:
        np.testing.assert_array_equal(r.zeros, zeros.numpy())
    # the decode is GPTQ's scale * (q - zero)
    ref = (scales.repeat_interleave(g, 1)[:, :576] * (codes - zeros.repeat_interleave(g, 1)[:, :576]))
    np.testing.assert_array_equal(r.dequantize(), ref.numpy())


def test_real_layer_matches_reference(minilm_layer):
    r = qviz.quantize(minilm_layer, "rtn", bits=4, group_size=128)
    codes, _, _ = quantize_groups(torch.from_numpy(np.array(minilm_layer)), 4, False, 128)
    np.testing.assert_array_equal(r.codes, codes.numpy().astype(np.uint8))
    assert r.bits_per_weight == 4 + (16 + 4) / 128


def test_per_tensor(rng):
    w = rng.standard_normal((8, 64)).astype(np.float32)
    r = qviz.quantize(w, "rtn", bits=8, per_tensor=True)
    assert r.scales.shape == (1, 1) and r.zeros.shape == (1, 1)
    assert r.scales[0, 0] == np.float32((w.max() - w.min()) / np.float32(255))
    assert np.abs(w - r.dequantize()).max() <= r.scales[0, 0] / 2 * (1 + 1e-6)


@pytest.mark.parametrize("group_size", [0, -2, -128])
def test_per_tensor_still_refuses_a_bad_group_size(rng, group_size):
    """Issue 12 item 14: per_tensor=True with group_size=0 was accepted silently."""
    w = rng.standard_normal((8, 64)).astype(np.float32)
    with pytest.raises(ValueError, match=f"group_size={group_size}: use a positive number"):
        qviz.quantize(w, "rtn", per_tensor=True, group_size=group_size)
    # valid sizes are unused with per_tensor: one (1, 1) scale whatever they say
    for g in (-1, 7, 128):
        r = qviz.quantize(w, "rtn", per_tensor=True, group_size=g)
        assert r.scales.shape == (1, 1) and r.group_size == 64


def test_group_size_larger_than_row_is_one_group(rng):
    w = rng.standard_normal((4, 50)).astype(np.float32)
    a = qviz.quantize(w, "rtn", group_size=128)
    b = qviz.quantize(w, "rtn", group_size=-1)
    np.testing.assert_array_equal(a.codes, b.codes)
    assert a.scales.shape == (4, 1)


finite = st.floats(-1e3, 1e3, width=32, allow_nan=False, allow_infinity=False)


@given(w=arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 70)), elements=finite),
       bits=st.integers(2, 8), sym=st.booleans(), group_size=st.sampled_from([-1, 1, 7, 16, 32]))
def test_properties(w, bits, sym, group_size):
    before = w.copy()
    r = qviz.quantize(w, "rtn", bits=bits, sym=sym, group_size=group_size)
    np.testing.assert_array_equal(w, before)  # the caller's array is untouched
    assert r.codes.dtype == np.uint8 and r.codes.max() <= 2**bits - 1
    w_hat = r.dequantize()
    s = r._expand(r.scales)
    lo = r._expand(r.scales * (0 - (r.zeros if r.zeros is not None else r.implied_zero)))
    hi = lo + s * (2**bits - 1)
    inside = (w >= lo) & (w <= hi)
    # inside the grid, rounding error is at most half a step; float32 division and
    # the products scale*(q-zero) add a few ulps of the grid's extent
    slack = 4 * np.finfo(np.float32).eps * np.maximum(np.abs(lo), np.abs(hi))
    assert np.all(np.abs(w - w_hat)[inside] <= (s / 2 + slack)[inside])
    again = qviz.quantize(w, "rtn", bits=bits, sym=sym, group_size=group_size)
    np.testing.assert_array_equal(again.codes, r.codes)  # deterministic

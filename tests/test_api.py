"""The public boundary: what it accepts, and the clear errors for what it refuses."""
import numpy as np
import pytest
import torch

import qviz


@pytest.fixture
def w(rng):
    return rng.standard_normal((8, 64)).astype(np.float32)


def test_accepts_tensor_array_linear_and_half_precisions(w):
    ref = qviz.quantize(w, "rtn", group_size=32)
    t = torch.from_numpy(w.copy())
    lin = torch.nn.Linear(64, 8, bias=False)
    with torch.no_grad():
        lin.weight.copy_(t)
    for obj in (t, lin, w.astype(np.float64)):
        np.testing.assert_array_equal(qviz.quantize(obj, "rtn", group_size=32).codes, ref.codes)
    for half in (torch.float16, torch.bfloat16):
        h = t.to(half)
        r = qviz.quantize(h, "rtn", group_size=32)
        np.testing.assert_array_equal(r.codes, qviz.quantize(h.float().numpy(), "rtn", group_size=32).codes)
        assert h.dtype == half  # converted once, on a copy
    assert qviz.quantize(w.astype(np.float16), "rtn").shape == (8, 64)


def test_caller_data_never_modified(w):
    t = torch.from_numpy(w.copy())
    t_before = t.clone()
    w_before = w.copy()
    for method, opts in [("rtn", {"bits": 3}), ("rtn", {"sym": True, "per_tensor": True})]:
        qviz.quantize(t, method, **opts)
        qviz.quantize(w, method, **opts)
    assert torch.equal(t, t_before)
    np.testing.assert_array_equal(w, w_before)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_named_with_count_and_first_position(w, bad):
    w = w.copy()
    w[2, 5] = bad
    w[6, 1] = bad
    with pytest.raises(ValueError, match=r"2 NaN/Inf values; the first is at \(row, col\) = \(2, 5\)"):
        qviz.quantize(w, "rtn")


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.uint8, bool])
def test_integer_dtypes_say_how_to_convert(dtype):
    with pytest.raises(TypeError, match=r"astype\(np.float32\)"):
        qviz.quantize(np.ones((4, 32), dtype=dtype), "rtn")
    with pytest.raises(TypeError, match="floating-point"):
        qviz.quantize(torch.ones((4, 32), dtype=torch.int64), "rtn")


@pytest.mark.parametrize("shape,match", [((64,), "must be 2-D"), ((2, 4, 8), "must be 2-D"),
                                         ((0, 8), "empty"), ((8, 0), "empty")])
def test_bad_shapes(shape, match):
    with pytest.raises(ValueError, match=match):
        qviz.quantize(np.zeros(shape, np.float32), "rtn")


@pytest.mark.parametrize("group_size", [0, -2, -128])
def test_bad_group_size(w, group_size):
    with pytest.raises(ValueError, match=f"group_size={group_size}"):
        qviz.quantize(w, "rtn", group_size=group_size)


@pytest.mark.parametrize("bits", [0, 1, 9, 16, 4.0, True])
def test_bad_bits(w, bits):
    with pytest.raises(ValueError, match="from 2 to 8"):
        qviz.quantize(w, "rtn", bits=bits)


def test_unknown_method_lists_valid_ones(w):
    with pytest.raises(ValueError, match=r"unknown method 'int4'.*rtn.*Q4_K"):
        qviz.quantize(w, "int4")


def test_unknown_option_names_the_valid_ones(w):
    with pytest.raises(TypeError, match=r"no option\(s\) group.*group_size"):
        qviz.quantize(w, "rtn", group=64)


def test_dequantize_takes_a_result(w):
    r = qviz.quantize(w, "rtn")
    np.testing.assert_array_equal(qviz.dequantize(r), r.dequantize())
    with pytest.raises(TypeError, match="QuantResult"):
        qviz.dequantize(w)

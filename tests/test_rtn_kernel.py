"""The numba RTN kernel against the numpy reference (qviz.formats.rtn): scales, zeros, codes bit for bit."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import qviz
from qviz.formats import rtn
from qviz.kernels.numba.rtn import choose_params_and_quantize, dequantize


def reference(w, bits, sym, group_size, per_tensor=False):
    g = w.shape[1] if per_tensor else group_size
    scales, zeros = rtn.choose_params(w, bits, sym=sym, group_size=g, per_tensor=per_tensor)
    codes = rtn.quantize(w, scales, zeros, bits, g)
    return codes, scales, zeros


def assert_bits_equal(got, want, what):
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape)
    as_bytes = got.view(np.uint8).reshape(got.shape + (-1,)), want.view(np.uint8).reshape(want.shape + (-1,))
    bad = np.argwhere((as_bytes[0] != as_bytes[1]).any(axis=-1))
    if bad.size:
        i = tuple(bad[0])
        raise AssertionError(f"{what}: {len(bad)} values differ; "
                             f"first at {i}: kernel {got[i]!r}, reference {want[i]!r}")


def assert_matches_reference(w, bits, sym, group_size, per_tensor=False):
    """The kernel's codes, scales and zeros are the reference's, or both refuse with the same message."""
    try:
        want = reference(w, bits, sym, group_size, per_tensor)
    except ValueError as e:
        with pytest.raises(ValueError) as got:
            choose_params_and_quantize(w, bits, sym=sym, group_size=group_size, per_tensor=per_tensor)
        assert str(got.value) == str(e)
        return
    got = choose_params_and_quantize(w, bits, sym=sym, group_size=group_size, per_tensor=per_tensor)
    for name, a, b in zip(("codes", "scales", "zeros"), got, want):
        assert_bits_equal(a, b, name)


@pytest.fixture(scope="module")
def weight():
    """Rows that exercise every branch: 300 columns (short last groups for most sizes)."""
    w = (np.random.default_rng(7).standard_normal((12, 300)) * 0.05).astype(np.float32)
    w[1] = np.abs(w[1])  # all positive: lo = 0
    w[2] = -np.abs(w[2])  # all negative: hi = 0
    w[3, :150] = 0.0  # all-zero groups: [-1, 1]
    w[4, ::2] = -0.0  # signed zeros next to positive weights
    w[4, 1::2] = np.abs(w[4, 1::2])
    w[5] = 0.0  # an all-zero row
    w[6, 7] = 40.0  # one outlier
    return w


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("group_size", [1, 7, 32, 128, 299, 300])
def test_groups_equal_reference(weight, bits, sym, group_size):
    assert_matches_reference(weight, bits, sym, group_size)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("sym", [False, True])
def test_per_tensor_equals_reference(weight, bits, sym):
    assert_matches_reference(weight, bits, sym, 128, per_tensor=True)
    assert_matches_reference(np.abs(weight), bits, sym, 128, per_tensor=True)
    assert_matches_reference(np.zeros((3, 5), np.float32), bits, sym, 128, per_tensor=True)


def test_large_layer_equals_reference():
    w = (np.random.default_rng(0).standard_normal((256, 4096)) * 0.02).astype(np.float32)
    assert_matches_reference(w, 4, False, 128)
    assert_matches_reference(w, 3, True, -(-4096 // 3))


def test_subnormal_ranges_are_finite_and_equal_reference():
    """A step that underflows to 0 takes the all-zero group's [-1, 1] (issue 12 item 4: zero was NaN)."""
    tiny = np.float32(1e-45)  # the smallest subnormal: (hi - lo) / maxq rounds to 0
    w = np.array([[tiny, 0, 0, 0], [tiny, -tiny, 0, tiny], [-tiny, 0, 0, 0], [1e-40, 0, 3e-39, 0]],
                 np.float32)
    for bits in (2, 8):
        for sym in (False, True):
            for g, per_tensor in ((2, False), (4, False), (4, True)):
                assert_matches_reference(w, bits, sym, g, per_tensor)
                codes, scales, zeros = choose_params_and_quantize(w, bits, sym=sym, group_size=g,
                                                                  per_tensor=per_tensor)
                assert np.isfinite(scales).all() and np.isfinite(zeros).all() and (scales > 0).all()
                r = qviz.quantize(w, "rtn", bits=bits, sym=sym, group_size=g, per_tensor=per_tensor)
                assert np.isfinite(r.dequantize()).all()
                assert np.abs(r.dequantize() - w).max() <= 3e-39  # each weight decodes within its range
    # the all-zero group's rule, exactly: scale 2/maxq, zero rint(1 / scale) (7.4999996 in float32)
    codes, scales, zeros = choose_params_and_quantize(w[:1], 4, group_size=4)
    assert scales[0, 0] == np.float32(2 / 15) and zeros[0, 0] == 7 and (codes == 7).all()
    np.testing.assert_array_equal(codes, choose_params_and_quantize(np.zeros((1, 4), np.float32), 4,
                                                                    group_size=4)[0])


def test_float32_max_ranges_are_refused_with_row_and_group():
    """±3e38 overflows the range to an inf scale (issue 12 item 4: it decoded to NaN): a clear error."""
    huge = np.float32(3e38)
    w = np.array([[1, -1, 0.5, 0.25], [0.5, 0.1, huge, -huge]], np.float32)
    for bits in (2, 8):
        for sym in (False, True):
            with pytest.raises(ValueError, match=r"row 1, group 1 \(columns 2 to 3\).*Scale the weight down"):
                choose_params_and_quantize(w, bits, sym=sym, group_size=2)
            with pytest.raises(ValueError, match=r"the tensor \(per_tensor=True\)"):
                choose_params_and_quantize(w, bits, sym=sym, per_tensor=True)
            assert_matches_reference(w, bits, sym, 2)
            assert_matches_reference(w, bits, sym, 4, per_tensor=True)
    with pytest.raises(ValueError, match="reaches float32's maximum"):
        qviz.quantize(w, "rtn", group_size=2)
    # the largest finite weights whose grid still fits stay finite and exact against the reference
    fits = np.array([[np.finfo(np.float32).max / 4, -1.0, 0.0, 1.0]], np.float32)
    for bits in range(2, 9):
        assert_matches_reference(fits, bits, False, 4)
        r = qviz.quantize(fits, "rtn", bits=bits, group_size=4)
        assert np.isfinite(r.dequantize()).all()


def test_api_uses_kernel_and_leaves_input_alone(weight):
    before = weight.copy()
    r = qviz.quantize(weight, "rtn", bits=4, group_size=32)
    np.testing.assert_array_equal(weight, before)
    codes, scales, zeros = reference(before, 4, False, 32)
    assert_bits_equal(r.codes, codes, "codes")
    assert_bits_equal(r.scales, scales, "scales")
    assert_bits_equal(r.zeros, zeros, "zeros")


def test_deterministic(weight):
    a = choose_params_and_quantize(weight, 5, group_size=7)
    b = choose_params_and_quantize(weight, 5, group_size=7)
    for x, y in zip(a, b):
        assert_bits_equal(x, y, "second run")


@pytest.mark.parametrize("options", [dict(bits=4, group_size=128), dict(bits=3, group_size=7, sym=True),
                                     dict(bits=8, group_size=-1), dict(bits=2, per_tensor=True),
                                     dict(bits=5, per_tensor=True, sym=True)])
def test_dequantize_equals_result_dequantize(weight, options):
    r = qviz.quantize(weight, "rtn", **options)
    zeros = r.zeros if r.zeros is not None else np.full(r.scales.shape, r.implied_zero, np.float32)
    assert_bits_equal(dequantize(r.codes, r.scales, zeros, r.group_size), r.dequantize(), "decoded")


floats = st.one_of(st.floats(-1e3, 1e3, width=32), st.sampled_from([0.0, -0.0, 1e-45, -1e-45, 3e38, -3e38]))


@given(w=arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 80)), elements=floats),
       bits=st.integers(2, 8), sym=st.booleans(), group_size=st.integers(1, 90), per_tensor=st.booleans())
def test_property_equals_reference(w, bits, sym, group_size, per_tensor):
    assert_matches_reference(w, bits, sym, min(group_size, w.shape[1]), per_tensor)

"""Element formats (qviz.formats.minifloat) against torch's float8 dtypes and torchao's FP4/FP6 casts.

Every finite code's value, every midpoint between neighbouring values, the
float32 neighbours of each (so each tie and its two sides), ±max and the
values just beyond it, float32 subnormals and a million mixed values: the
codes must equal the owner's cast bit for bit, and the numba twin the reference.
"""
import numpy as np
import pytest

from qviz.formats import minifloat as mf

torch = pytest.importorskip("torch")

F32 = np.float32


def probe_values(fmt: mf.ElementFormat) -> np.ndarray:
    """Values, midpoints and their float32 neighbours, ±max and beyond, subnormals; both signs."""
    v = fmt.values.astype(np.float64)
    pos = np.unique(v[np.isfinite(v) & (v >= 0)])
    mids = (pos[:-1] + pos[1:]) / 2  # exact in float32: one more mantissa bit than the format
    big = [fmt.max * 1.5, fmt.max * 2, 1e30, 3.4e38]
    base = np.concatenate([pos, mids, big]).astype(F32)
    near = np.concatenate([base, np.nextafter(base, F32(np.inf)), np.nextafter(base, F32(0))])
    subnormals = np.array([1e-45, 1e-40, 1.1754942e-38], dtype=F32)
    rng = np.random.default_rng(0)
    mixed = (rng.standard_normal(1 << 20) * rng.choice([1e-3, 1.0, 30.0, 1e4], 1 << 20)).astype(F32)
    allpos = np.concatenate([near, subnormals, np.abs(mixed)])
    return np.concatenate([allpos, -allpos, np.array([0.0, -0.0], dtype=F32)])


def owner_codes(fmt: mf.ElementFormat, x: np.ndarray) -> np.ndarray:
    """The owner's cast: torch for FP8 (clamped first, as the FP8/MX owners do), torchao for FP4/FP6."""
    t = torch.from_numpy(x)
    if fmt.torch_dtype is not None and fmt.bits == 8:
        return t.clamp(-fmt.max, fmt.max).to(getattr(torch, fmt.torch_dtype)).view(torch.uint8).numpy()
    custom = pytest.importorskip("torchao.prototype.custom_fp_utils")
    return custom._f32_to_floatx_unpacked(t, fmt.ebits, fmt.mbits).numpy()


@pytest.mark.parametrize("name", list(mf.ELEMENT_FORMATS))
def test_encode_equals_the_owner_on_every_tie_and_beyond_max(name):
    fmt = mf.ELEMENT_FORMATS[name]
    x = probe_values(fmt)
    codes, saturated = mf.encode(x, fmt)
    np.testing.assert_array_equal(codes, owner_codes(fmt, x))
    assert saturated == int((np.abs(x) > fmt.max).sum())
    from qviz.kernels.numba import minifloat as nb

    twin, twin_saturated = nb.encode(x, fmt)
    np.testing.assert_array_equal(twin, codes)
    assert twin_saturated == saturated


def test_e4m3_saturates_in_torch_itself_and_e5m2_does_not():
    """Why the FP8 owners clamp before the cast: torch's E5M2 cast overflows to inf."""
    x = torch.tensor([1e6, 61440.0])
    assert x.to(torch.float8_e4m3fn).float().tolist() == [448.0, 448.0]
    assert np.isinf(x.to(torch.float8_e5m2).float().numpy()).all()
    assert mf.encode(x.numpy(), "e5m2")[0].tolist() == [0x7B, 0x7B]


@pytest.mark.parametrize("name", list(mf.ELEMENT_FORMATS))
def test_tables_equal_the_owners_decode(name):
    fmt = mf.ELEMENT_FORMATS[name]
    codes = np.arange(1 << fmt.bits, dtype=np.uint8)
    if fmt.bits == 8:
        want = torch.from_numpy(codes).view(getattr(torch, fmt.torch_dtype)).float().numpy()
    else:
        custom = pytest.importorskip("torchao.prototype.custom_fp_utils")
        want = custom._floatx_unpacked_to_f32(torch.from_numpy(codes), fmt.ebits, fmt.mbits).numpy()
    np.testing.assert_array_equal(fmt.values, want)  # NaN where NaN, inf where inf, -0.0 included
    assert np.array_equal(np.signbit(fmt.values), np.signbit(want))
    assert fmt.values.dtype == np.float32 and fmt.max == {"e2m1": 6, "e2m3": 7.5, "e3m2": 28,
                                                          "e4m3": 448, "e5m2": 57344}[name]


def test_decode_round_trips_every_finite_code():
    for fmt in mf.ELEMENT_FORMATS.values():
        codes = np.arange(1 << fmt.bits, dtype=np.uint8)
        finite = np.isfinite(fmt.values)
        back, saturated = mf.encode(mf.decode(codes[finite], fmt), fmt)
        np.testing.assert_array_equal(back, codes[finite])
        assert saturated == 0


def test_e8m0_values_and_encode_equal_torch():
    codes = np.arange(256, dtype=np.uint8)
    want = torch.from_numpy(codes).view(torch.float8_e8m0fnu).float().numpy()
    np.testing.assert_array_equal(mf.E8M0_VALUES, want)
    k = np.arange(-149, 128)
    p = np.ldexp(1.0, k).astype(F32)
    x = np.concatenate([p, p * F32(1.5), np.nextafter(p * F32(1.5), F32(0)), np.nextafter(p * F32(1.5), F32(9e37)),
                        p * F32(1.25), p * F32(1.75), np.array([0.0, 1e-45], F32)])
    x = x[np.isfinite(x) & (x < F32(1.5 * 2.0 ** 127))]
    np.testing.assert_array_equal(mf.encode_e8m0(x), torch.from_numpy(x).to(torch.float8_e8m0fnu)
                                  .view(torch.uint8).numpy())
    assert mf.encode_e8m0(np.array([3e38, -2.0], F32)).tolist() == [254, 128]  # saturates; sign ignored


@pytest.mark.parametrize("tile", [(1, 32), (1, 16), (128, 128), (100, 96), (300, 1000), (1, 1000)])
def test_group_primitives_twin_equals_reference(rng, tile):
    from qviz.kernels.numba import minifloat as nb

    w = (rng.standard_normal((300, 1000)) * 10).astype(F32)
    w[0, :50] = 0.0
    w[1, :50] = -0.0
    row_block, group = tile
    amax = mf.group_amax(w, row_block, group)
    assert amax.shape == (-(-300 // row_block), -(-1000 // group))
    np.testing.assert_array_equal(nb.group_amax(w, row_block, group), amax)
    factor = np.where(amax == 0, F32(1), amax / F32(6)).astype(F32)
    for op in mf.OPS:
        for zero_sign in mf.ZERO_SIGNS:
            ref = mf.encode_groups(w, factor, row_block, group, "e2m1", op, zero_sign)
            twin = nb.encode_groups(w, factor, row_block, group, "e2m1", op, zero_sign)
            np.testing.assert_array_equal(twin[0], ref[0])
            assert twin[1] == ref[1]
    assert mf.encode_groups(w, factor, row_block, group, "e2m1", zero_sign="keep")[0][1, 0] == 8
    assert mf.encode_groups(w, factor, row_block, group, "e2m1", zero_sign="positive")[0][1, 0] == 0


def test_bad_names():
    with pytest.raises(ValueError, match="valid formats: e2m1, e2m3, e3m2, e4m3, e5m2"):
        mf.encode(np.zeros(3, F32), "e4m4")
    with pytest.raises(ValueError, match="valid backends"):
        mf.primitives("cuda")
    with pytest.raises(ValueError, match="op="):
        mf.encode_groups(np.zeros((1, 4), F32), np.ones((1, 1), F32), 1, 4, "e2m1", op="add")

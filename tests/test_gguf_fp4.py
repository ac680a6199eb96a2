"""MXFP4 and NVFP4 against ggml's own bytes (the oracle), for the numpy reference and the numba kernel.

Parametrized over every ``gguf_fp4`` type of the registry. Bytes must be
ggml's with and without an importance matrix (which ggml ignores for these
types: both give the same bytes), on the named edge rows, random rows and
MiniLM's real rows; the dequantizers and ``unpack`` + ``QuantResult.dequantize()``
must repeat ggml's ``to_float`` bit for bit, also on random bytes (every
scale byte and code). The scale rules are checked at their boundaries:
``floorf(log2f(amax))`` at every binade's rounding threshold (MXFP4) and
``ggml_fp32_to_ue4m3`` around every UE4M3 value (NVFP4).
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

import ggml_oracle as oracle
from edge_rows import CASES as EDGE_CASES
from edge_rows import edge_rows, importance
from qviz import registry
from qviz.formats import gguf_fp4
from qviz.formats.spec import FORMATS
from qviz.result import QuantResult

TYPES = [name for name, t in registry.types().items() if t.family == "gguf_fp4"]
BACKENDS = {"reference": "numpy", "numba": "numba"}
N_COLS = 512  # a multiple of both blocks (32, 64)


def _fn(impl: str, verb: str, type_name: str):
    return registry.quant_type(type_name).function(verb, BACKENDS[impl])


def _signed_zero(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """-0.0 and +0.0 mixed: ties at level 0 and the sign of a zero code."""
    return np.where(rng.random(normal.shape) < 0.5, np.float32(-0.0), np.float32(0.0))


def _midpoints(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Weights on the E2M1 levels and halfway between them (ties of ``best_index_mxfp4``), max 6."""
    levels = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=np.float32)
    grid = np.concatenate([levels, (levels[:-1] + levels[1:]) / 2])
    rows = rng.choice(grid, normal.shape) * rng.choice(np.float32([-1, 1]), normal.shape)
    rows[:, ::16] = 6.0
    return rows.astype(np.float32)


def _float32_subnormal(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Block maxima below 2**-125: MXFP4's ``e`` wraps below 0 (C's float to uint8_t)."""
    return normal * np.float32(1e-40)


def _saturating(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Groups whose ``amax / 6`` passes 256 and 448: NVFP4's scale saturates at 448."""
    return normal * np.float32(10.0) ** rng.uniform(2, 5, (normal.shape[0], 1)).astype(np.float32)


OWN_CASES = {"signed_zero": _signed_zero, "midpoints": _midpoints, "float32_subnormal": _float32_subnormal,
             "saturating": _saturating}
CASES = [*EDGE_CASES, *OWN_CASES]


def _rows(case: str, n_rows: int, rng: np.random.Generator) -> np.ndarray:
    return edge_rows(case, n_rows, N_COLS, rng, extra_cases=OWN_CASES)


@pytest.mark.parametrize("impl", list(BACKENDS))
@pytest.mark.parametrize("imatrix", [None, "random", "dead_columns"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("type_name", TYPES)
def test_quantize_matches_ggml(type_name, case, imatrix, impl):
    rng = np.random.default_rng(zlib.crc32(f"{type_name} {case} {imatrix}".encode()))
    x = _rows(case, 4, rng)
    im = importance(imatrix, N_COLS, rng)
    got = _fn(impl, "quantize", type_name)(x, im)
    oracle.assert_blocks_equal(type_name, got, oracle.quantize(type_name, x, im))
    if im is not None:  # ggml ignores the imatrix
        np.testing.assert_array_equal(got, _fn(impl, "quantize", type_name)(x))


@pytest.mark.parametrize("imatrix", [None, "squared"])
@pytest.mark.parametrize("type_name", TYPES)
def test_real_weights_match_ggml(type_name, imatrix, minilm_layer):
    """MiniLM's intermediate layer, (1536, 384): the kernel on all rows, the reference on a few."""
    rng = np.random.default_rng(zlib.crc32(f"{type_name} minilm {imatrix}".encode()))
    im = importance(imatrix, minilm_layer.shape[1], rng)
    want = oracle.quantize(type_name, minilm_layer, im)
    kernel = _fn("numba", "quantize", type_name)(minilm_layer, im)
    oracle.assert_blocks_equal(type_name, kernel, want)
    rows = slice(0, None, 97)
    oracle.assert_blocks_equal(type_name, _fn("reference", "quantize", type_name)(minilm_layer[rows], im),
                               want[rows])


@pytest.mark.parametrize("type_name", TYPES)
def test_random_rows_of_every_magnitude_match_ggml(type_name):
    """Random rows scaled from 1e-44 to 1e30, with NaN, inf and -inf among them (the kernels take them)."""
    rng = np.random.default_rng(zlib.crc32(f"{type_name} random".encode()))
    x = (rng.standard_normal((64, N_COLS)) * 10.0 ** rng.uniform(-44, 30, (64, 1))).astype(np.float32)
    x[0, ::7] = np.nan
    x[1, 3] = np.inf
    x[2, 40] = -np.inf
    x[3, :64] = np.float32(2.0) ** -149
    want = oracle.quantize(type_name, x)
    ref = _fn("reference", "quantize", type_name)(x)
    oracle.assert_blocks_equal(type_name, ref, want)
    np.testing.assert_array_equal(_fn("numba", "quantize", type_name)(x), ref)


def _packed_cases(type_name: str, rng: np.random.Generator) -> np.ndarray:
    """ggml's bytes of the edge rows plus random bytes (every scale byte, every code), (n_rows, row_bytes)."""
    packed = np.concatenate([oracle.quantize(type_name, _rows(c, 1, rng)) for c in CASES])
    noise = rng.integers(0, 256, (32, packed.shape[1]), dtype=np.uint8)
    return np.concatenate([packed, noise])


@pytest.mark.parametrize("impl", list(BACKENDS))
@pytest.mark.parametrize("type_name", TYPES)
def test_dequantize_matches_ggml(type_name, impl):
    packed = _packed_cases(type_name, np.random.default_rng(zlib.crc32(type_name.encode())))
    want = oracle.dequantize(type_name, packed, N_COLS)
    got = _fn(impl, "dequantize", type_name)(packed)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("impl", list(BACKENDS))
@pytest.mark.parametrize("type_name", TYPES)
def test_unpack_decodes_like_ggml(type_name, impl):
    """codes are the E2M1 nibbles, the codebook ggml's doubled table, the scales ggml's halved ones."""
    packed = _packed_cases(type_name, np.random.default_rng(zlib.crc32(f"{type_name} unpack".encode())))
    lay = FORMATS[type_name]
    u = _fn(impl, "unpack", type_name)(packed)
    assert u.codes.dtype == np.uint8 and u.codes.shape == (packed.shape[0], N_COLS)
    assert u.scales.dtype == np.float32 and u.scales.shape == (packed.shape[0], N_COLS // lay.group_size)
    assert u.mins is None and int(u.codes.max()) == 15
    np.testing.assert_array_equal(u.codebook, [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12])
    result = QuantResult(method=type_name, shape=(packed.shape[0], N_COLS), bits=lay.bits,
                         group_size=lay.group_size, codes=u.codes, scales=u.scales, mins=u.mins,
                         codebook=u.codebook, packed=packed)
    want = oracle.dequantize(type_name, packed, N_COLS)
    with np.errstate(over="ignore"):  # MXFP4's e = 255 with code 7: 12 * 2**127 is inf, in ggml too
        np.testing.assert_array_equal(result.dequantize().view(np.uint32), want.view(np.uint32))
    assert result.bits_per_weight == lay.bits_per_weight
    ref = _fn("reference", "unpack", type_name)(packed)
    for a, b in zip(ref, u):
        assert (a is None and b is None) or (a.dtype == b.dtype and np.array_equal(a.view(np.uint8),
                                                                                   b.view(np.uint8)))


def test_bits_per_weight():
    assert FORMATS["MXFP4"].type_size == 17 and FORMATS["MXFP4"].bits_per_weight == 4.25
    assert FORMATS["NVFP4"].type_size == 36 and FORMATS["NVFP4"].bits_per_weight == 4.5


@pytest.mark.parametrize("impl", list(BACKENDS))
def test_mxfp4_exponent_at_every_log2f_threshold(impl):
    """Block maxima at, and 1-3 floats around, the float32 where ``log2f`` rounds up to the next integer.

    Every binade from 2**-149 to 2**127, and every power of two: ggml's ``e``
    and so the whole block must match.
    """
    t = gguf_fp4.LOG2F_UP[:-1]
    bits = np.concatenate([t + d for d in range(-3, 4)])
    bits = bits[(bits > 0) & (bits < 0x7F800000)].astype(np.int32)
    amax = np.concatenate([bits.view(np.float32), np.float32(2.0) ** np.arange(-149, 128).astype(np.float32)])
    x = np.zeros((amax.size, 32), dtype=np.float32)
    x[:, 0] = amax
    x[:, 1] = -amax * np.float32(0.4)
    got = _fn(impl, "quantize", "MXFP4")(x)
    oracle.assert_blocks_equal("MXFP4", got, oracle.quantize("MXFP4", x))


@pytest.mark.parametrize("impl", list(BACKENDS))
def test_nvfp4_scale_around_every_ue4m3_value(impl):
    """``amax / 6`` at, between and 1-2 floats around every UE4M3 value and rounding midpoint."""
    values = gguf_fp4.UE4M3_HALF[:0x7F].astype(np.float64) * 2  # every UE4M3 value
    mids = (values[:-1] + values[1:]) / 2
    targets = np.concatenate([values, mids, [1e-30, 2.0 ** -10, 255.9, 256, 300, 448, 500, 1e30]])
    amax = (targets * 6).astype(np.float32)
    bits = np.concatenate([amax.view(np.int32) + d for d in range(-2, 3)])
    amax = np.abs(bits[bits > 0].view(np.float32))
    amax = amax[np.isfinite(amax)]
    x = np.zeros((amax.size // 4 + 1, 64), dtype=np.float32)
    flat = x.reshape(-1, 16)
    flat[:amax.size, 0] = amax
    flat[:amax.size, 5] = -amax / 3
    got = _fn(impl, "quantize", "NVFP4")(x)
    oracle.assert_blocks_equal("NVFP4", got, oracle.quantize("NVFP4", x))


@pytest.mark.parametrize("type_name", TYPES)
def test_kernel_matches_ggml_on_drawn_rows(type_name):
    """Hypothesis draws rows (float32 in ±1e4, subnormals and repeats included) and an optional imatrix."""
    from hypothesis import given
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    values = st.floats(-1e4, 1e4, width=32)
    rows = arrays(np.float32, (2, 128), elements=values)
    weights = st.none() | arrays(np.float32, 128, elements=st.floats(0, 100, width=32))
    quantize = _fn("numba", "quantize", type_name)

    @given(rows, weights)
    def check(x, imatrix):
        oracle.assert_blocks_equal(type_name, quantize(x, imatrix), oracle.quantize(type_name, x, imatrix))

    check()


@pytest.mark.parametrize("type_name", TYPES)
def test_kernel_is_deterministic(type_name):
    rng = np.random.default_rng(zlib.crc32(f"{type_name} twice".encode()))
    x = rng.standard_normal((64, N_COLS)).astype(np.float32)
    quantize = _fn("numba", "quantize", type_name)
    first = quantize(x)
    np.testing.assert_array_equal(quantize(x), first)
    np.testing.assert_array_equal(quantize(x[::-1].copy())[::-1], first)  # row order does not matter


def test_the_readable_rules_agree_with_ggml_helpers():
    """``e8m0_exponent`` wraps as C's conversion does; ``ue4m3_byte`` saturates at 448 from 256 on."""
    e = gguf_fp4.e8m0_exponent(np.float32([0, 1, 2 ** -126, 1e-45, np.inf, 3e38, 16 * (1 - 2 ** -24)]))
    assert e.tolist() == [0, 125, 255, 232, 0, 252, 129]  # log2f(16 - 2**-20) rounds to 4
    assert gguf_fp4.ue4m3_byte(np.float32([0, -1, np.nan, 1, 200, 256, 1e9])).tolist() == \
        [0, 0, 0, 0x38, 0x75, 0x7E, 0x7E]
    assert gguf_fp4.E8M0_HALF[[0, 1, 2, 128, 255]].tolist() == [2.0 ** -128, 2.0 ** -127, 2.0 ** -126, 1.0,
                                                                2.0 ** 127]
    assert gguf_fp4.UE4M3_HALF[[0, 0x7F, 0xFF, 0x38, 0x01]].tolist() == [0, 0, 240, 0.5, 2.0 ** -10]

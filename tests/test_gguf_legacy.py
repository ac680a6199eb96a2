"""Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL against ggml's own bytes (the oracle).

Both the numpy reference and the numba kernel must give ggml's bytes, with
and without an importance matrix, on named edge rows and real weights; their
dequantizers and ``unpack`` + ``QuantResult.dequantize()`` must reproduce
ggml's ``to_float`` bit for bit. Parametrized over every ``legacy`` type of
``FORMATS``.
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest

import ggml_oracle as oracle
from edge_rows import edge_rows, importance, minilm_rows
from qviz import registry
from qviz.formats import ggml_search
from qviz.formats.spec import FORMATS, QK
from qviz.result import QuantResult

TYPES = [name for name, t in registry.types().items() if t.family == "gguf_legacy"]
REFERENCE = importlib.import_module(registry.quant_type(TYPES[0]).module_of("numpy"))
KERNEL = importlib.import_module(registry.quant_type(TYPES[0]).module_of("numba"))
BACKENDS = {"reference": "numpy", "numba": "numba"}

# The reference runs ggml's searches interpreted, so it gets one row per case; the kernel more.
ROWS_PER_CASE = {"reference": 1, "numba": 8}
N_COLS = 4 * QK

# Values whose C roundf differs from rounding in float32 (x + 0.5 rounds up to the next integer).
ROUNDF_TRAPS = np.array([0.49999997, 1.4999999, 3.4999998, 7.4999995, 15.499999, 31.499998,
                         63.499996, -0.49999997, -1.4999999, -63.499996], dtype=np.float32)


def _signed_zero(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """-0.0 and +0.0 mixed: the sign of a stored zero scale or min is ggml's."""
    return np.where(rng.random(normal.shape) < 0.5, np.float32(-0.0), np.float32(0.0))


def _fp16_subnormal(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scales in fp16's subnormal range (< 6.1e-5); this file's own draw, the power taken in float64."""
    return normal * (np.float32(10.0) ** rng.uniform(-8, -6, (normal.shape[0], 1))).astype(np.float32)


def _grid(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Values on a half-integer grid: ties for every rounding rule."""
    return (rng.integers(-16, 17, normal.shape) * np.float32(0.5)).astype(np.float32)


def _roundf_traps(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``ROUNDF_TRAPS``, and a 127 per block, which makes Q8_0's 1/d exactly 1."""
    rows = rng.choice(ROUNDF_TRAPS, normal.shape).astype(np.float32)
    rows[:, ::QK] = 127.0
    return rows


# This file's own cases, for edge_rows' extra_cases.
OWN_CASES = {"signed_zero": _signed_zero, "fp16_subnormal": _fp16_subnormal, "grid": _grid,
             "roundf_traps": _roundf_traps}
# Spelled out, not built from edge_rows.CASES: _test_matrix draws every case from one rng, in this order.
CASES = ["normal", "outliers", "zero", "signed_zero", "constant", "one_huge", "fp16_subnormal",
         "alternating", "all_negative", "tiny", "huge", "grid", "roundf_traps"]


def _test_matrix(n_rows_per_case: int, rng: np.random.Generator) -> np.ndarray:
    """All cases stacked, float32 (len(CASES) * n_rows_per_case, N_COLS)."""
    return np.concatenate([edge_rows(c, n_rows_per_case, N_COLS, rng, extra_cases=OWN_CASES)
                           for c in CASES])


def _fn(impl: str, verb: str, type_name: str):
    return registry.quant_type(type_name).function(verb, BACKENDS[impl])


@pytest.mark.parametrize("imatrix_kind", [None, "random", "squared", "dead_columns"])
@pytest.mark.parametrize("impl", list(BACKENDS))
@pytest.mark.parametrize("type_name", TYPES)
def test_quantize_matches_ggml(type_name, impl, imatrix_kind, rng):
    x = _test_matrix(ROWS_PER_CASE[impl], rng)
    imatrix = importance(imatrix_kind, x.shape[1], rng)
    got = _fn(impl, "quantize", type_name)(x, imatrix)
    oracle.assert_blocks_equal(type_name, got, oracle.quantize(type_name, x, imatrix))


@pytest.mark.parametrize("imatrix_kind", [None, "squared"])
@pytest.mark.parametrize("impl", list(BACKENDS))
@pytest.mark.parametrize("type_name", TYPES)
def test_real_weights_match_ggml(type_name, impl, imatrix_kind, rng):
    n_rows = 2 if impl == "reference" else 256  # spread over the weight's 1536 rows
    x = minilm_rows(n_rows, 384, tensor="encoder.layer.0.intermediate.dense.weight", step=1536 // n_rows)
    imatrix = importance(imatrix_kind, x.shape[1], rng)
    got = _fn(impl, "quantize", type_name)(x, imatrix)
    oracle.assert_blocks_equal(type_name, got, oracle.quantize(type_name, x, imatrix))


def _packed_cases(type_name: str, rng: np.random.Generator) -> np.ndarray:
    """ggml's bytes of the edge rows, plus random bytes with finite fp16 fields (n_rows, row_bytes)."""
    packed = oracle.quantize(type_name, _test_matrix(2, rng))
    noise = rng.integers(0, 256, (8, packed.shape[1]), dtype=np.uint8)
    lay = FORMATS[type_name]
    blocks = noise.reshape(8, -1, lay.type_size)
    off = 0
    for f in lay.fields:  # fp16 d/m: clear the top exponent bit, so no inf/NaN
        if f.name in ("d", "m"):
            blocks[..., off + 1] &= 0xBF
        off += f.nbytes
    return np.concatenate([packed, noise])


@pytest.mark.parametrize("impl", list(BACKENDS))
@pytest.mark.parametrize("type_name", TYPES)
def test_dequantize_matches_ggml(type_name, impl, rng):
    packed = _packed_cases(type_name, rng)
    want = oracle.dequantize(type_name, packed, N_COLS)
    got = _fn(impl, "dequantize", type_name)(packed)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("type_name", TYPES)
def test_unpack_decodes_like_ggml(type_name, rng):
    packed = _packed_cases(type_name, rng)
    lay = FORMATS[type_name]
    u = registry.quant_type(type_name).function("unpack", "numpy")(packed)
    assert u.codes.dtype == np.uint8 and u.codes.shape == (packed.shape[0], N_COLS)
    assert u.scales.dtype == np.float32 and u.scales.shape == (packed.shape[0], N_COLS // QK)
    assert int(u.codes.max()) < (1 << lay.bits)
    result = QuantResult(method=type_name, shape=(packed.shape[0], N_COLS), bits=lay.bits,
                         group_size=lay.group_size, codes=u.codes, scales=u.scales, mins=u.mins,
                         codebook=u.codebook, packed=packed)
    want = oracle.dequantize(type_name, packed, N_COLS)
    np.testing.assert_array_equal(result.dequantize().view(np.uint32), want.view(np.uint32))
    assert result.bits_per_weight == lay.bits_per_weight


@pytest.mark.parametrize("type_name", TYPES)
def test_kernel_is_deterministic(type_name, rng):
    x = rng.standard_normal((64, N_COLS)).astype(np.float32)
    imatrix = importance("random", N_COLS, rng)
    quantize = _fn("numba", "quantize", type_name)
    first = quantize(x, imatrix)
    assert np.array_equal(first, quantize(x, imatrix))
    assert np.array_equal(first, quantize(x[::-1].copy(), imatrix)[::-1])  # row order does not matter


def test_searches_compile_to_the_same_results(rng):
    """The numba twins of ggml_search give the interpreted reference's codes and scales bit for bit."""
    from qviz.kernels.numba import search

    def same(a, b):
        return np.float32(a).view(np.uint32) == np.float32(b).view(np.uint32)

    for _ in range(20):
        x = (rng.standard_normal(32) * 10.0 ** rng.uniform(-6, 3)).astype(np.float32)
        w = rng.uniform(0.1, 2.0, 32).astype(np.float32)
        for rmse_type in (0, 1, 2, 3, 4, -1):
            for qw in (None, w):
                L1, L2 = np.zeros(32, np.int8), np.zeros(32, np.int8)
                assert same(ggml_search.make_qx_quants(32, 16, x, L1, rmse_type, qw),
                            search.make_qx_quants(32, 16, x, L2, rmse_type, qw))
                assert np.array_equal(L1, L2)
        L1, L2 = np.zeros(16, np.int8), np.zeros(16, np.int8)
        assert same(ggml_search.make_q3_quants(16, 4, x, L1, True), search.make_q3_quants(16, 4, x, L2, True))
        assert np.array_equal(L1, L2)
        L1, L2, aux = np.zeros(32, np.uint8), np.zeros(32, np.uint8), np.zeros(32, np.uint8)
        got = ggml_search.make_qkx2_quants(16, 3, x, np.abs(x), L1, aux, -0.5, 0.1, 15, True)
        want = search.make_qkx2_quants(16, 3, x, np.abs(x), L2, aux, -0.5, 0.1, 15, True)
        assert same(got[0], want[0]) and same(got[1], want[1]) and np.array_equal(L1, L2)
        xs = np.abs(x[:16])
        assert same(ggml_search.make_qp_quants(16, 63, xs, L1, w), search.make_qp_quants(16, 63, xs, L2, w))
        assert np.array_equal(L1, L2)


@pytest.mark.parametrize("type_name", TYPES)
def test_kernel_matches_ggml_on_drawn_blocks(type_name):
    """Hypothesis draws rows (float32 in ±1e4, subnormals and repeats included) and an optional imatrix."""
    from hypothesis import given
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    values = st.floats(-1e4, 1e4, width=32)
    rows = arrays(np.float32, (2, 2 * QK), elements=values)
    importance = st.none() | arrays(np.float32, 2 * QK, elements=st.floats(0, 100, width=32))
    quantize = _fn("numba", "quantize", type_name)

    @given(rows, importance)
    def check(x, imatrix):
        oracle.assert_blocks_equal(type_name, quantize(x, imatrix), oracle.quantize(type_name, x, imatrix))

    check()


def _iq4nl_levels() -> np.ndarray:
    """IQ4_NL's codebook as float32 (16,)."""
    return REFERENCE.KVALUES_IQ4NL.astype(np.float32)


def _mixed_block(kind: str, rng: np.random.Generator) -> np.ndarray:
    """One 32-weight block of a named kind, float32 (32,)."""
    normal = rng.standard_normal(QK).astype(np.float32)
    if kind == "normal":
        return normal
    if kind == "zero":
        return np.zeros(QK, dtype=np.float32)
    if kind == "constant":
        return np.full(QK, -0.37, dtype=np.float32)
    if kind == "below_eps":  # largest magnitude under GROUP_MAX_EPS: an all-zero block to ggml
        return normal * np.float32(1e-17)
    if kind == "near_eps":  # just above GROUP_MAX_EPS
        return normal * np.float32(1e-14)
    if kind == "huge":
        return normal * np.float32(1e4)
    if kind == "one_value":  # one nonzero weight
        block = np.zeros(QK, dtype=np.float32)
        block[rng.integers(QK)] = rng.choice([-3.0, 2.0])
        return block
    if kind == "midpoints":  # max 127: IQ4_NL's first trial scale is 1, so these sit on its midpoints
        levels = _iq4nl_levels()
        mids = (levels[:-1] + levels[1:]) / np.float32(2)
        block = rng.choice(np.concatenate([mids, levels]), QK).astype(np.float32)
        block[0] = 127.0
        return block
    raise ValueError(kind)


MIXED_KINDS = ["normal", "zero", "constant", "below_eps", "near_eps", "huge", "one_value", "midpoints"]


@pytest.mark.parametrize("imatrix_kind", [None, "random", "dead_columns"])
@pytest.mark.parametrize("type_name", TYPES)
def test_kernel_matches_ggml_on_mixed_rows(type_name, imatrix_kind, rng):
    """Rows whose blocks take different branches side by side (the kernels search blocks as lanes).

    137 blocks a row: two full groups of 64 lanes and a partial one.
    """
    n_rows, n_blocks = 6, 137
    kinds = rng.choice(MIXED_KINDS, (n_rows, n_blocks))
    x = np.stack([np.concatenate([_mixed_block(k, rng) for k in row]) for row in kinds])
    imatrix = importance(imatrix_kind, x.shape[1], rng)
    got = _fn("numba", "quantize", type_name)(x, imatrix)
    oracle.assert_blocks_equal(type_name, got, oracle.quantize(type_name, x, imatrix))


def test_iq4_nl_branch_free_index_is_ggml_search():
    """The kernel's branch-free IQ4_NL index and level equal ggml's best_index_int8 (the reference's).

    The index counts the midpoints at or below x; ggml's float32 comparison
    flips exactly there, so checking both sides of every midpoint, the levels,
    the ends and NaN covers every float32 (an exhaustive run over all 2**32
    float32 values agreed too).
    """
    from qviz.kernels.numba.lanes_sym import IQ4NL_MIDPOINTS, iq4nl_index, iq4nl_level

    levels = _iq4nl_levels()
    mids = IQ4NL_MIDPOINTS[1:]
    xs = np.concatenate([mids, np.nextafter(mids, -np.inf), np.nextafter(mids, np.inf), levels,
                         np.nextafter(levels, -np.inf), np.nextafter(levels, np.inf),
                         [0.0, -0.0, 1e-30, -1e-30, 1e9, -1e9, np.inf, -np.inf, np.nan]]).astype(np.float32)
    for x in xs:
        want = ggml_search.best_index_int8(16, REFERENCE.KVALUES_IQ4NL, x)
        assert iq4nl_index(x) == want, x
        assert np.float32(iq4nl_level(x)).view(np.uint32) == levels[want].view(np.uint32), x

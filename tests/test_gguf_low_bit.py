"""TQ1_0, TQ2_0 and Q1_0 against ggml's own bytes (the oracle).

Both the numpy reference and the numba kernel must give ggml's bytes, with
and without an importance matrix (ggml ignores it for these types, so must
they), on named edge rows and real weights; their dequantizers and
``unpack`` + ``QuantResult.dequantize()`` must reproduce ggml's ``to_float``
bit for bit. Parametrized over every ``gguf_low_bit`` type of the registry.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

import ggml_oracle as oracle
from edge_rows import CASES as EDGE_CASES
from edge_rows import edge_rows, importance, minilm_rows, mixed_groups
from qviz import registry
from qviz.formats.rounding import round_away_array
from qviz.formats.spec import FORMATS, QK_K
from qviz.quantizers import resolve_type
from qviz.result import QuantResult

TYPES = [name for name, t in registry.types().items() if t.family == "gguf_low_bit"]
BACKENDS = {"reference": "numpy", "numba": "numba"}
N_COLS = 2 * QK_K  # a multiple of every block here


def _ties(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """x/amax on lroundf's ties (+-0.5) and beside them, signed zeros; amax 1 in every block."""
    vals = np.array([0.5, -0.5, np.nextafter(np.float32(0.5), np.float32(0)), 0.50000006, -0.0, 0.0, 1.0, -1.0],
                    dtype=np.float32)
    rows = rng.choice(vals, normal.shape).astype(np.float32)
    rows[:, ::QK_K] = 1.0
    return rows


def _subnormal(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """float32-subnormal blocks: ``1/amax`` is inf, ``x/amax`` inf or NaN (ggml's lroundf gives LONG_MIN)."""
    return normal * np.float32(1e-40)


def _non_finite(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """NaN and inf among normal weights: ggml's ``MAX`` lets a NaN reset the running max."""
    x = normal.copy()
    x[0, 5] = np.nan
    x[1 % len(x), QK_K - 1] = np.nan  # a block's last value: amax is NaN
    x[2 % len(x), 7] = np.inf
    x[3 % len(x), 3], x[3 % len(x), 4] = 1e30, np.nan  # a code far beyond 1, wrapped as ggml's uint8 wraps it
    return x


OWN_CASES = {"ties": _ties, "subnormal": _subnormal, "non_finite": _non_finite,
             "mixed": lambda normal, rng: mixed_groups(128, len(normal), N_COLS, rng)}
CASES = [*EDGE_CASES, *OWN_CASES, "minilm"]


def _fn(impl: str, verb: str, type_name: str):
    return registry.quant_type(type_name).function(verb, BACKENDS[impl])


def _rows(type_name: str, case: str, n_rows: int = 6) -> tuple[np.ndarray, np.random.Generator]:
    rng = np.random.default_rng(zlib.crc32(f"{type_name} {case}".encode()))
    return edge_rows(case, n_rows, N_COLS, rng, extra_cases=OWN_CASES), rng


@pytest.mark.parametrize("imatrix_kind", [None, "random", "dead_columns"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("impl", list(BACKENDS))
@pytest.mark.parametrize("type_name", TYPES)
def test_quantize_matches_ggml(type_name, impl, case, imatrix_kind):
    x, rng = _rows(type_name, case)
    imatrix = importance(imatrix_kind, N_COLS, rng)
    with np.errstate(all="ignore"):  # the non-finite case
        got = _fn(impl, "quantize", type_name)(x, imatrix)
        want = oracle.quantize(type_name, x, imatrix)
    oracle.assert_blocks_equal(type_name, got, want)


@pytest.mark.parametrize("type_name", TYPES)
def test_imatrix_is_ignored_as_ggml_ignores_it(type_name):
    x, rng = _rows(type_name, "normal")
    want = oracle.quantize(type_name, x)
    np.testing.assert_array_equal(oracle.quantize(type_name, x, importance("activations", N_COLS, rng)), want)
    for impl in BACKENDS:
        np.testing.assert_array_equal(_fn(impl, "quantize", type_name)(x, importance("with_zeros", N_COLS, rng)),
                                      want)


@pytest.mark.parametrize("impl", list(BACKENDS))
@pytest.mark.parametrize("type_name", TYPES)
def test_real_weights_match_ggml(type_name, impl):
    x = minilm_rows(384, 1536)
    got = _fn(impl, "quantize", type_name)(x)
    oracle.assert_blocks_equal(type_name, got, oracle.quantize(type_name, x))


def _packed_cases(type_name: str, finite: bool) -> np.ndarray:
    """ggml's bytes of the edge rows, plus random bytes (n_rows, row_bytes); ``finite``: no inf/NaN ``d``."""
    rng = np.random.default_rng(zlib.crc32(f"{type_name} packed {finite}".encode()))
    packed = np.concatenate([oracle.quantize(type_name, edge_rows(c, 2, N_COLS, rng)) for c in EDGE_CASES])
    noise = rng.integers(0, 256, (16, packed.shape[1]), dtype=np.uint8)
    if finite:
        lay = FORMATS[type_name]
        off = sum(f.nbytes for f in lay.fields[:[f.name for f in lay.fields].index("d")])
        noise.reshape(16, -1, lay.type_size)[..., off + 1] &= 0xBF
    return np.concatenate([packed, noise])


@pytest.mark.parametrize("finite", [True, False])
@pytest.mark.parametrize("impl", list(BACKENDS))
@pytest.mark.parametrize("type_name", TYPES)
def test_dequantize_matches_ggml(type_name, impl, finite):
    packed = _packed_cases(type_name, finite)
    want = oracle.dequantize(type_name, packed, N_COLS)
    with np.errstate(invalid="ignore"):
        got = _fn(impl, "dequantize", type_name)(packed)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("type_name", TYPES)
def test_unpack_decodes_like_ggml(type_name):
    """Codes, scales ``d`` and the codebook: ``QuantResult.dequantize()`` is ggml's ``to_float``."""
    packed = _packed_cases(type_name, finite=True)
    lay = FORMATS[type_name]
    u = registry.quant_type(type_name).function("unpack", "numpy")(packed)
    assert u.codes.dtype == np.uint8 and u.codes.shape == (packed.shape[0], N_COLS)
    assert u.scales.dtype == np.float32 and u.scales.shape == (packed.shape[0], N_COLS // lay.block_size)
    assert u.mins is None and int(u.codes.max()) < len(u.codebook) <= (1 << lay.bits)
    result = QuantResult(method=type_name, shape=(packed.shape[0], N_COLS), bits=lay.bits,
                         group_size=lay.group_size, codes=u.codes, scales=u.scales, mins=u.mins,
                         codebook=u.codebook, packed=packed)
    want = oracle.dequantize(type_name, packed, N_COLS)
    np.testing.assert_array_equal(result.dequantize().view(np.uint32), want.view(np.uint32))
    assert result.bits_per_weight == lay.bits_per_weight


@pytest.mark.parametrize("type_name", TYPES)
def test_ggml_codes_are_the_stored_values(type_name):
    """What ggml writes: trits 0..2 (TQ2_0 never 3) and the sign bits of Q1_0."""
    x, _ = _rows(type_name, "normal")
    u = registry.quant_type(type_name).function("unpack", "numpy")(oracle.quantize(type_name, x))
    if type_name == "Q1_0":
        np.testing.assert_array_equal(u.codes, (x >= 0).astype(np.uint8))
    else:
        amax = np.abs(x).reshape(len(x), -1, QK_K).max(axis=2)
        inv = np.float32(1) / amax  # ggml multiplies by 1/d and rounds half away from zero
        want = round_away_array(x.reshape(len(x), -1, QK_K) * inv[..., None]).reshape(x.shape) + 1
        np.testing.assert_array_equal(u.codes, want.astype(np.uint8))


@pytest.mark.parametrize("type_name", TYPES)
def test_kernel_is_deterministic(type_name, rng):
    x = rng.standard_normal((64, N_COLS)).astype(np.float32)
    quantize = _fn("numba", "quantize", type_name)
    first = quantize(x)
    assert np.array_equal(first, quantize(x))
    assert np.array_equal(first, quantize(x[::-1].copy())[::-1])  # row order does not matter


@pytest.mark.parametrize("type_name", TYPES)
def test_kernel_matches_ggml_on_drawn_blocks(type_name):
    """Hypothesis draws rows (float32 in ±1e4, subnormals and repeats included)."""
    from hypothesis import given
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    rows = arrays(np.float32, (2, QK_K), elements=st.floats(-1e4, 1e4, width=32))
    quantize = _fn("numba", "quantize", type_name)

    @given(rows)
    def check(x):
        oracle.assert_blocks_equal(type_name, quantize(x), oracle.quantize(type_name, x))

    check()


def test_fallbacks_are_llama_quantizes():
    """llama-quant.cpp ``tensor_type_fallback``: TQ1_0/TQ2_0 -> Q4_0; Q1_0 has none (llama.cpp throws)."""
    assert resolve_type("TQ1_0", 384, True) == "Q4_0" and resolve_type("TQ2_0", 96, True) == "Q4_0"
    with pytest.raises(ValueError, match="multiple of its block size 128"):
        resolve_type("Q1_0", 96, True)

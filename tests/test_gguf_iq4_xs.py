"""IQ4_XS against ggml's own bytes (the oracle), for the numpy reference and the numba kernel.

Parametrized over every ``gguf_iq4_xs`` type of the registry. Bytes and
decoded floats must be identical: ``np.array_equal`` on ``packed``, on the
float32 bit patterns of dequantized values, and on ``QuantResult.dequantize()``.
"""
from __future__ import annotations

import importlib
import zlib

import numpy as np
import pytest

import ggml_oracle as oracle
from edge_rows import CASES as EDGE_CASES
from edge_rows import edge_rows, importance, mixed_groups
from qviz import registry
from qviz.formats.spec import FORMATS, QK, QK_K

TYPES = [name for name, t in registry.types().items() if t.family == "gguf_iq4_xs"]
REFERENCE = importlib.import_module(registry.quant_type(TYPES[0]).module_of("numpy"))
KERNEL = importlib.import_module(registry.quant_type(TYPES[0]).module_of("numba"))
MODULE_IDS = {REFERENCE: "reference", KERNEL: "numba"}

# The numpy reference runs ggml's searches interpreted: few rows. The kernel gets more
# (6 super-blocks = 48 sub-blocks: one partial group of lanes).
SHAPES = {REFERENCE: (2, 2 * QK_K), KERNEL: (16, 6 * QK_K)}


def _signed_zero(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """-0.0 and +0.0 mixed."""
    return np.where(rng.random(normal.shape) < 0.5, np.float32(-0.0), np.float32(0.0))


def _grid(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Values on a half-integer grid: ties for every rounding rule."""
    return (rng.integers(-16, 17, normal.shape) * np.float32(0.5)).astype(np.float32)


def _midpoints(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Levels of kvalues_iq4nl and the midpoints between them, with a 127 in every sub-block."""
    levels = REFERENCE.KVALUES_IQ4NL.astype(np.float32)
    values = np.concatenate([levels, (levels[:-1] + levels[1:]) / np.float32(2)])
    rows = rng.choice(values, normal.shape).astype(np.float32)
    rows[:, ::QK] = 127.0
    return rows


def _mixed(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sub-blocks each taking one path of the search (edge_rows.mixed_groups), one super-block in three
    wholly below GROUP_MAX_EPS."""
    x = mixed_groups(QK, *normal.shape, rng)
    x[::3, :QK_K] *= np.float32(1e-17)
    return x


OWN_CASES = {"signed_zero": _signed_zero, "grid": _grid, "midpoints": _midpoints, "mixed": _mixed}
CASES = [*EDGE_CASES, *OWN_CASES, "minilm"]


def _fn(module, verb: str, type_name: str):
    return registry.quant_type(type_name).function(verb, "numpy" if module is REFERENCE else "numba")


@pytest.mark.parametrize("module", [REFERENCE, KERNEL], ids=MODULE_IDS.get)
@pytest.mark.parametrize("imatrix", [None, "random", "activations", "dead_columns"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("type_name", TYPES)
def test_quantize_matches_ggml(type_name, case, imatrix, module):
    rng = np.random.default_rng(zlib.crc32(f"{type_name} {case} {imatrix}".encode()))
    n_rows, n_cols = SHAPES[module]
    x = edge_rows(case, n_rows, n_cols, rng, extra_cases=OWN_CASES)
    im = importance(imatrix, n_cols, rng)
    got = _fn(module, "quantize", type_name)(x, im)
    oracle.assert_blocks_equal(type_name, got, oracle.quantize(type_name, x, im))


@pytest.mark.parametrize("imatrix", [None, "squared"])
@pytest.mark.parametrize("type_name", TYPES)
def test_kernel_matches_ggml_on_a_real_layer(type_name, imatrix, minilm_layer):
    """MiniLM's (1536, 384) intermediate layer (``qviz.demo.layer``), transposed: 384 rows of 1536."""
    x = np.ascontiguousarray(minilm_layer.T, dtype=np.float32)
    im = importance(imatrix, x.shape[1], np.random.default_rng(5))
    got = _fn(KERNEL, "quantize", type_name)(x, im)
    oracle.assert_blocks_equal(type_name, got, oracle.quantize(type_name, x, im))


@pytest.mark.parametrize("imatrix", [None, "random", "dead_columns", "with_zeros"])
@pytest.mark.parametrize("type_name", TYPES)
def test_kernel_matches_ggml_on_mixed_rows(type_name, imatrix):
    """11 super-blocks a row (88 sub-blocks: a full group of 64 lanes and a partial one), sub-blocks of
    every kind side by side."""
    rng = np.random.default_rng(zlib.crc32(f"{type_name} mixed {imatrix}".encode()))
    x = _mixed(np.zeros((12, 11 * QK_K), dtype=np.float32), rng)
    im = importance(imatrix, x.shape[1], rng)
    got = _fn(KERNEL, "quantize", type_name)(x, im)
    oracle.assert_blocks_equal(type_name, got, oracle.quantize(type_name, x, im))


@pytest.mark.parametrize("module", [REFERENCE, KERNEL], ids=MODULE_IDS.get)
@pytest.mark.parametrize("type_name", TYPES)
def test_all_zero_super_block_stores_minus_zero(type_name, module):
    """ggml's ``d = -max_scale/32`` of an all-zero super-block is -0.0: fp16 0x8000, ls 32 everywhere."""
    x = np.zeros((1, 2 * QK_K), dtype=np.float32)
    x[0, QK_K:] = np.linspace(-1, 1, QK_K, dtype=np.float32)
    packed = _fn(module, "quantize", type_name)(x)
    oracle.assert_blocks_equal(type_name, packed, oracle.quantize(type_name, x))
    assert packed[0, :2].tobytes() == b"\x00\x80"
    u = _fn(module, "unpack", type_name)(packed)
    assert np.all(u.scales[0, :QK_K // QK] == 0)


def _packed_cases(type_name: str, rng: np.random.Generator) -> np.ndarray:
    """ggml's bytes of edge rows, plus random bytes with a finite fp16 ``d`` of either sign (n_rows, row_bytes)."""
    n_cols = 4 * QK_K
    x = np.concatenate([edge_rows(c, 2, n_cols, rng) for c in EDGE_CASES])
    packed = oracle.quantize(type_name, x)
    noise = rng.integers(0, 256, (8, packed.shape[1]), dtype=np.uint8)
    noise.reshape(8, -1, FORMATS[type_name].type_size)[..., 1] &= 0xBF  # d is first: no inf/NaN
    return np.concatenate([packed, noise])


@pytest.mark.parametrize("module", [REFERENCE, KERNEL], ids=MODULE_IDS.get)
@pytest.mark.parametrize("type_name", TYPES)
def test_dequantize_and_unpack_match_ggml(type_name, module):
    rng = np.random.default_rng(zlib.crc32(f"{type_name} dequantize".encode()))
    packed = _packed_cases(type_name, rng)
    backend = "numpy" if module is REFERENCE else "numba"
    r = oracle.assert_decodes_like_ggml(type_name, backend, packed, 4 * QK_K,
                                        REFERENCE.KVALUES_IQ4NL.astype(np.float32), max_code=15)
    assert r.bits_per_weight == FORMATS[type_name].bits_per_weight == 4.25


@pytest.mark.parametrize("imatrix", [None, "random"])
@pytest.mark.parametrize("type_name", TYPES)
def test_kernel_is_deterministic(type_name, imatrix):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((64, 4 * QK_K)).astype(np.float32)
    im = importance(imatrix, x.shape[1], rng)
    quantize = _fn(KERNEL, "quantize", type_name)
    first = quantize(x, im)
    np.testing.assert_array_equal(quantize(x, im), first)
    np.testing.assert_array_equal(quantize(x[::-1].copy(), im)[::-1], first)  # row order does not matter
    oracle.assert_blocks_equal(type_name, first, oracle.quantize(type_name, x, im))


@pytest.mark.parametrize("type_name", TYPES)
def test_kernel_matches_ggml_on_drawn_blocks(type_name):
    """Hypothesis draws rows (float32 in ±1e4, subnormals and repeats included) and an optional imatrix."""
    from hypothesis import given
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    values = st.floats(-1e4, 1e4, width=32)
    rows = arrays(np.float32, (2, QK_K), elements=values)
    weights = st.none() | arrays(np.float32, QK_K, elements=st.floats(0, 100, width=32))
    quantize = _fn(KERNEL, "quantize", type_name)

    @given(rows, weights)
    def check(x, imatrix):
        oracle.assert_blocks_equal(type_name, quantize(x, imatrix), oracle.quantize(type_name, x, imatrix))

    check()


def test_record_matches_gguf():
    """ggml type 23, file type MOSTLY_IQ4_XS (30), 136 bytes a 256-block; rows no 256-block divides fall
    back to IQ4_NL (llama.cpp's llama_tensor_get_type)."""
    gguf = pytest.importorskip("gguf")
    t = registry.quant_type("IQ4_XS")
    assert t.ggml_type == gguf.GGMLQuantizationType.IQ4_XS
    assert t.file_type == gguf.LlamaFileType.MOSTLY_IQ4_XS
    assert (t.block_size, t.type_size) == gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.IQ4_XS]
    assert t.fallback == "IQ4_NL"

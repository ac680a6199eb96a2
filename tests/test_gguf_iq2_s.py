"""IQ2_S against ggml's own bytes (the oracle), for the numpy reference and the numba kernel.

Bytes and decoded floats must be identical: ``np.array_equal`` on ``packed``, on
the float32 bit patterns of dequantized values, and on ``QuantResult.dequantize()``.
``ggml_oracle.quantize`` calls ``ggml_quantize_init`` (the i-quant tables) first.
The lattice's decode values are checked against ggml's ``to_float`` point by point.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

import ggml_oracle as oracle
from edge_rows import CASES as EDGE_CASES
from edge_rows import edge_rows, importance, mixed_groups
from qviz import registry
from qviz.formats import gguf_iq2_s as REFERENCE
from qviz.formats.iq_lattice import lattice
from qviz.formats.spec import FORMATS, QK_K
from qviz.kernels.numba import gguf_iq2_s as KERNEL

TYPE = "IQ2_S"
MODULE_IDS = {REFERENCE: "reference", KERNEL: "numba"}
SUB = 16
# The numpy reference runs ggml's search interpreted: few rows.
SHAPES = {REFERENCE: (2, 2 * QK_K), KERNEL: (16, 6 * QK_K)}


def _signed_zero(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """-0.0 and +0.0 mixed, a few sub-blocks with one weight."""
    x = np.where(rng.random(normal.shape) < 0.5, np.float32(-0.0), np.float32(0.0)).astype(np.float32)
    x[:, 5::64] = normal[:, 5::64]
    return x


def _grid(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Values on a half-integer grid: ties for every rounding rule."""
    return (rng.integers(-16, 17, normal.shape) * np.float32(0.5)).astype(np.float32)


def _lattice_values(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Runs of 8 that are lattice points (8/25/43, signed), some off the lattice, scaled per sub-block."""
    lat = lattice("iq2s")
    n_rows, n_cols = normal.shape
    runs = lat.values[rng.integers(0, len(lat.values), (n_rows, n_cols // 8))].astype(np.float32)
    runs[rng.random(runs.shape[:2]) < 0.3] = rng.choice([8, 25, 43], (8,)).astype(np.float32)
    x = runs.reshape(n_rows, n_cols) * np.where(rng.random((n_rows, n_cols)) < 0.5, -1, 1).astype(np.float32)
    return (x * rng.uniform(0.01, 2, (n_rows, n_cols // SUB, 1)).astype(np.float32).repeat(SUB, 2)
            .reshape(n_rows, n_cols)).astype(np.float32)


def _mixed(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sub-blocks each taking one path of the search (edge_rows.mixed_groups), one super-block in three
    wholly below GROUP_MAX_EPS_IQ2_S."""
    x = mixed_groups(SUB, *normal.shape, rng)
    x[::3, :QK_K] *= np.float32(1e-9)
    return x


OWN_CASES = {"signed_zero": _signed_zero, "grid": _grid, "lattice_values": _lattice_values, "mixed": _mixed}
CASES = [*EDGE_CASES, *OWN_CASES, "minilm"]


@pytest.mark.parametrize("module", [REFERENCE, KERNEL], ids=MODULE_IDS.get)
@pytest.mark.parametrize("imatrix", [None, "random", "activations", "dead_columns"])
@pytest.mark.parametrize("case", CASES)
def test_quantize_matches_ggml(case, imatrix, module):
    rng = np.random.default_rng(zlib.crc32(f"{TYPE} {case} {imatrix}".encode()))
    n_rows, n_cols = SHAPES[module]
    x = edge_rows(case, n_rows, n_cols, rng, extra_cases=OWN_CASES)
    im = importance(imatrix, n_cols, rng)
    got = module.quantize_iq2_s(x, im)
    oracle.assert_blocks_equal(TYPE, got, oracle.quantize(TYPE, x, im))


@pytest.mark.parametrize("imatrix", [None, "squared"])
def test_kernel_matches_ggml_on_a_real_layer(imatrix, minilm_layer):
    """MiniLM's (1536, 384) intermediate layer (``qviz.demo.layer``), transposed: 384 rows of 1536."""
    x = np.ascontiguousarray(minilm_layer.T, dtype=np.float32)
    im = importance(imatrix, x.shape[1], np.random.default_rng(5))
    oracle.assert_blocks_equal(TYPE, KERNEL.quantize_iq2_s(x, im), oracle.quantize(TYPE, x, im))


@pytest.mark.parametrize("imatrix", [None, "random", "dead_columns", "with_zeros"])
def test_kernel_matches_ggml_on_mixed_rows(imatrix):
    """5 super-blocks a row, sub-blocks of every kind side by side."""
    rng = np.random.default_rng(zlib.crc32(f"{TYPE} mixed {imatrix}".encode()))
    x = _mixed(np.zeros((12, 5 * QK_K), dtype=np.float32), rng)
    im = importance(imatrix, x.shape[1], rng)
    oracle.assert_blocks_equal(TYPE, KERNEL.quantize_iq2_s(x, im), oracle.quantize(TYPE, x, im))


@pytest.mark.parametrize("imatrix", [None, "random", "with_zeros"])
def test_kernel_matches_reference(imatrix):
    rng = np.random.default_rng(zlib.crc32(f"{TYPE} twin {imatrix}".encode()))
    x = _mixed(np.zeros((3, 2 * QK_K), dtype=np.float32), rng)
    x[1] = rng.standard_normal(2 * QK_K).astype(np.float32)
    im = importance(imatrix, x.shape[1], rng)
    np.testing.assert_array_equal(KERNEL.quantize_iq2_s(x, im), REFERENCE.quantize_iq2_s(x, im))


@pytest.mark.parametrize("module", [REFERENCE, KERNEL], ids=MODULE_IDS.get)
def test_zero_super_block_and_tiny_sub_blocks(module):
    """An all-zero super-block stores nothing but zeros (d = +0); a sub-block under 1e-8 keeps zero bytes
    (no signs) beside normal ones."""
    x = np.zeros((1, 2 * QK_K), dtype=np.float32)
    x[0, QK_K:] = np.linspace(-1, 1, QK_K, dtype=np.float32)
    x[0, QK_K:QK_K + SUB] = -1e-9
    packed = module.quantize_iq2_s(x)
    oracle.assert_blocks_equal(TYPE, packed, oracle.quantize(TYPE, x))
    assert not packed[0, :82].any()
    assert packed[0, 82 + 2 + 32] == 0 and packed[0, 82 + 2 + 33] == 0  # sign bytes of the tiny sub-block


def _packed_cases(rng: np.random.Generator) -> np.ndarray:
    """ggml's bytes of edge rows, plus random bytes with a finite fp16 ``d`` of either sign (n_rows, row_bytes)."""
    n_cols = 4 * QK_K
    x = np.concatenate([edge_rows(c, 2, n_cols, rng) for c in EDGE_CASES])
    packed = oracle.quantize(TYPE, x)
    noise = rng.integers(0, 256, (8, packed.shape[1]), dtype=np.uint8)
    noise.reshape(8, -1, FORMATS[TYPE].type_size)[..., 1] &= 0xBF  # d is first: no inf/NaN
    return np.concatenate([packed, noise])


@pytest.mark.parametrize("module", [REFERENCE, KERNEL], ids=MODULE_IDS.get)
def test_dequantize_and_unpack_match_ggml(module):
    rng = np.random.default_rng(zlib.crc32(f"{TYPE} dequantize".encode()))
    packed = _packed_cases(rng)
    backend = "numpy" if module is REFERENCE else "numba"
    r = oracle.assert_decodes_like_ggml(TYPE, backend, packed, 4 * QK_K,
                                        np.array([-43, -25, -8, 8, 25, 43], dtype=np.float32), max_code=5)
    assert r.bits_per_weight == FORMATS[TYPE].bits_per_weight == 2.5625


def _blocks_selecting(numbers: np.ndarray, ls: int, signs: np.ndarray | None = None) -> np.ndarray:
    """One row of blocks whose run g holds grid number ``numbers[g]`` (d = 1.0, every ls = ``ls``)."""
    n_blocks = len(numbers) // 32
    blk = np.zeros((n_blocks, 82), dtype=np.uint8)
    g = numbers.reshape(n_blocks, 32).astype(np.int64)
    blk[:, 0:2] = [0x00, 0x3C]  # fp16 1.0
    blk[:, 2:34] = g & 0xFF
    blk[:, 66:74] = ((g >> 8).reshape(n_blocks, 8, 4) << (2 * np.arange(4))).sum(axis=2)
    blk[:, 74:82] = ls | (ls << 4)
    if signs is not None:
        blk[:, 34:66] = signs.reshape(n_blocks, 32)
    return blk.reshape(1, -1)


def test_lattice_values_are_ggmls():
    """Every grid number in turn (d = 1, ls = 1: step 0.375, signs off): ggml's to_float gives
    ``lattice("iq2s").values * 0.375``."""
    lat = lattice("iq2s")
    packed = _blocks_selecting(np.arange(1024), 1)
    got = oracle.dequantize(TYPE, packed, 1024 * 8).reshape(1024, 8)
    np.testing.assert_array_equal(got, lat.values.astype(np.float32) * np.float32(0.375))
    np.testing.assert_array_equal(lat.search, 2 * lat.levels.astype(np.int8) + 1)


@pytest.mark.parametrize("module", [REFERENCE, KERNEL], ids=MODULE_IDS.get)
def test_points_are_the_stored_grid_numbers_and_signs(module):
    rng = np.random.default_rng(7)
    numbers = rng.permutation(1024)
    signs = rng.integers(0, 256, 1024, dtype=np.uint8)
    packed = _blocks_selecting(numbers, 3, signs)
    p = REFERENCE.points_iq2_s(packed)
    assert p.lattice == "iq2s" and p.index.dtype == np.uint16 and p.negative.dtype == bool
    np.testing.assert_array_equal(p.index[0], numbers)
    np.testing.assert_array_equal(p.negative[0].reshape(1024, 8),
                                  (signs[:, None] >> np.arange(8)) & 1 == 1)
    lat = lattice("iq2s")
    step = np.float32(1.0 * (0.5 + 3) * 0.25)
    want = np.where(p.negative, -1, 1) * lat.values[p.index].reshape(1, -1) * step
    np.testing.assert_array_equal(module.dequantize_iq2_s(packed), want.astype(np.float32))
    np.testing.assert_array_equal(module.dequantize_iq2_s(packed), oracle.dequantize(TYPE, packed, 8192))


@pytest.mark.parametrize("imatrix", [None, "random"])
def test_kernel_is_deterministic(imatrix):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((64, 4 * QK_K)).astype(np.float32)
    im = importance(imatrix, x.shape[1], rng)
    first = KERNEL.quantize_iq2_s(x, im)
    np.testing.assert_array_equal(KERNEL.quantize_iq2_s(x, im), first)
    np.testing.assert_array_equal(KERNEL.quantize_iq2_s(x[::-1].copy(), im)[::-1], first)
    oracle.assert_blocks_equal(TYPE, first, oracle.quantize(TYPE, x, im))


def test_kernel_matches_ggml_on_drawn_blocks():
    """Hypothesis draws rows (float32 in ±1e4, subnormals and repeats included) and an optional imatrix."""
    from hypothesis import given
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    values = st.floats(-1e4, 1e4, width=32)
    rows = arrays(np.float32, (2, QK_K), elements=values)
    weights = st.none() | arrays(np.float32, QK_K, elements=st.floats(0, 100, width=32))

    @given(rows, weights)
    def check(x, imatrix):
        oracle.assert_blocks_equal(TYPE, KERNEL.quantize_iq2_s(x, imatrix), oracle.quantize(TYPE, x, imatrix))

    check()


def test_quantize_through_the_api_matches_ggml():
    """qviz.quantize without and with an imatrix (IQ2_S does not require one)."""
    import qviz

    x = np.random.default_rng(3).standard_normal((4, 512)).astype(np.float32)
    im = np.random.default_rng(4).uniform(0.1, 2, 512).astype(np.float32)
    for imatrix in (None, im):
        r = qviz.quantize(x, TYPE, imatrix=imatrix)
        np.testing.assert_array_equal(r.packed, oracle.quantize(TYPE, x, imatrix))
        np.testing.assert_array_equal(r.dequantize().view(np.uint32),
                                      oracle.dequantize(TYPE, r.packed, 512).view(np.uint32))


def test_record_matches_gguf():
    """ggml type 22, 82 bytes a 256-block (2.5625 bits), sub-block scales per 16; file type MOSTLY_IQ2_M
    (llama.cpp's ftype whose default type is IQ2_S); rows no 256-block divides fall back to IQ4_NL."""
    gguf = pytest.importorskip("gguf")
    t = registry.quant_type(TYPE)
    assert t.ggml_type == gguf.GGMLQuantizationType.IQ2_S
    assert t.file_type == gguf.LlamaFileType.MOSTLY_IQ2_M
    assert (t.block_size, t.type_size) == gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.IQ2_S]
    assert t.fallback == "IQ4_NL" and not t.requires_imatrix and t.group_size == SUB and t.bits == 2

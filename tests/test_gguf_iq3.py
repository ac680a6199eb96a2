"""IQ3_XXS and IQ3_S against ggml's own bytes (the oracle), for the numpy reference and the numba kernel.

Parametrized over every ``gguf_iq3`` type of the registry. Bytes and decoded
floats must be identical: ``np.array_equal`` on ``packed``, on the float32 bit
patterns of dequantized values, and on ``QuantResult.dequantize()``. The
oracle calls ``ggml_quantize_init`` (the lattice tables) before quantizing.
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
from qviz.formats.iq_lattice import lattice
from qviz.formats.rounding import fp16_field
from qviz.formats.spec import FORMATS, QK, QK_K

TYPES = [name for name, t in registry.types().items() if t.family == "gguf_iq3"]
REFERENCE = importlib.import_module(registry.quant_type(TYPES[0]).module_of("numpy"))
KERNEL = importlib.import_module(registry.quant_type(TYPES[0]).module_of("numba"))
MODULE_IDS = {REFERENCE: "reference", KERNEL: "numba"}

# The numpy reference runs ggml's search per sub-block in Python: few rows. The kernel gets more.
SHAPES = {REFERENCE: (2, 2 * QK_K), KERNEL: (16, 6 * QK_K)}


def _signed_zero(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """-0.0 and +0.0 mixed into normal rows (every sign path of the search)."""
    return np.where(rng.random(normal.shape) < 0.3, np.where(rng.random(normal.shape) < 0.5,
                                                               np.float32(-0.0), np.float32(0.0)), normal)


def _grid(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Values on a half-integer grid: ties for every rounding and every distance comparison."""
    return (rng.integers(-16, 17, normal.shape) * np.float32(0.5)).astype(np.float32)


def _mixed(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sub-blocks each taking one path of the search (edge_rows.mixed_groups): all-zero sub-blocks move
    IQ3_S's later bytes up a slot; one super-block in three below GROUP_MAX_EPS_IQ3_XXS."""
    x = mixed_groups(QK, *normal.shape, rng)
    x[::3, :QK_K] *= np.float32(1e-9)
    return x


OWN_CASES = {"signed_zero": _signed_zero, "grid": _grid, "mixed": _mixed}
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
    """11 super-blocks a row, sub-blocks of every kind side by side."""
    rng = np.random.default_rng(zlib.crc32(f"{type_name} mixed {imatrix}".encode()))
    x = _mixed(np.zeros((12, 11 * QK_K), dtype=np.float32), rng)
    im = importance(imatrix, x.shape[1], rng)
    got = _fn(KERNEL, "quantize", type_name)(x, im)
    oracle.assert_blocks_equal(type_name, got, oracle.quantize(type_name, x, im))


@pytest.mark.parametrize("module", [REFERENCE, KERNEL], ids=MODULE_IDS.get)
def test_iq3_s_zero_sub_block_moves_the_next_ones_up(module):
    """ggml's quantize_row_iq3_s_impl advances qs and signs past written sub-blocks only: after an all-zero
    sub-block the next sub-block's grid numbers and signs sit in its slot (qh stays put)."""
    x = np.random.default_rng(3).standard_normal((1, QK_K)).astype(np.float32)
    x[0, :QK] = 0
    packed = _fn(module, "quantize", "IQ3_S")(x)
    oracle.assert_blocks_equal("IQ3_S", packed, oracle.quantize("IQ3_S", x))
    alone = _fn(module, "quantize", "IQ3_S")(np.ascontiguousarray(x[:, ::-1]))  # sanity: a different row
    assert not np.array_equal(alone, packed)
    f = {k: v[0, 0] for k, v in REFERENCE.fields("IQ3_S", packed).items()}
    assert f["qs"][-8:].tobytes() == bytes(8) and f["signs"][-4:].tobytes() == bytes(4)
    assert f["qh"][0] == 0


@pytest.mark.parametrize("module", [REFERENCE, KERNEL], ids=MODULE_IDS.get)
@pytest.mark.parametrize("type_name", TYPES)
def test_all_zero_super_block_is_zero(type_name, module):
    """A super-block with every sub-block scale 0 stores d = +0.0 and scales 0."""
    x = np.zeros((1, 2 * QK_K), dtype=np.float32)
    x[0, QK_K:] = np.linspace(-1, 1, QK_K, dtype=np.float32)
    packed = _fn(module, "quantize", type_name)(x)
    oracle.assert_blocks_equal(type_name, packed, oracle.quantize(type_name, x))
    assert packed[0, :2].tobytes() == b"\x00\x00"
    assert not packed[0, :FORMATS[type_name].type_size].any()


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
                                        REFERENCE.CODEBOOK[type_name], max_code=15)
    bpw = {"IQ3_XXS": 3.0625, "IQ3_S": 3.4375}[type_name]
    assert r.bits_per_weight == FORMATS[type_name].bits_per_weight == bpw


@pytest.mark.parametrize("type_name", TYPES)
def test_points_decode_like_ggml(type_name):
    """``points_<type>``: grid values times the signs times the sub-block steps are ggml's to_float."""
    rng = np.random.default_rng(zlib.crc32(f"{type_name} points".encode()))
    packed = _packed_cases(type_name, rng)
    n_cols = 4 * QK_K
    pts = registry.quant_type(type_name).function("points", "numpy")(packed)
    lat = lattice(pts.lattice)
    assert pts.lattice == REFERENCE.LATTICE[type_name]
    assert pts.index.dtype == np.uint16 and pts.index.shape == (packed.shape[0], n_cols // 4)
    assert pts.negative.dtype == np.bool_ and pts.negative.shape == (packed.shape[0], n_cols)
    values = lat.values[pts.index.astype(np.int64)].reshape(packed.shape[0], -1).astype(np.float32)
    scales = _fn(REFERENCE, "unpack", type_name)(packed).scales
    got = np.repeat(scales, QK, axis=1) * np.where(pts.negative, -values, values)
    want = oracle.dequantize(type_name, packed, n_cols)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    if type_name == "IQ3_XXS":  # an even count of minus signs in every group of eight
        assert not (pts.negative.reshape(-1, 8).sum(axis=1) % 2).any()


def _blocks_selecting_every_point(type_name: str) -> tuple[np.ndarray, float]:
    """Blocks (1, n_points // 64 blocks) whose runs are the grid points 0, 1, ... in turn, with d = 1.0,
    ls = 0 and no minus signs, and the factor the decoder then applies: 0.25 (IQ3_XXS) or 1 (IQ3_S)."""
    n = len(lattice(REFERENCE.LATTICE[type_name]).values)
    numbers = np.arange(n).reshape(-1, QK_K // 4)  # (n_blocks, 64)
    n_blocks = numbers.shape[0]
    d = np.broadcast_to(fp16_field(np.ones(1, np.float32)), (1, n_blocks, 2))
    if type_name == "IQ3_XXS":
        qs = np.concatenate([numbers.astype(np.uint8), np.zeros((n_blocks, 32), np.uint8)], axis=1)
        return REFERENCE.assemble(type_name, d=d, qs=qs[None]), 0.25
    qh = ((numbers >> 8).reshape(n_blocks, 8, 8).astype(np.uint8) << np.arange(8, dtype=np.uint8)).sum(
        axis=-1).astype(np.uint8)
    packed = REFERENCE.assemble(type_name, d=d, qs=(numbers & 255).astype(np.uint8)[None], qh=qh[None],
                                signs=np.zeros((1, n_blocks, 32), np.uint8),
                                scales=np.zeros((1, n_blocks, 4), np.uint8))
    return packed, 1.0


@pytest.mark.parametrize("type_name", TYPES)
def test_lattice_tables_are_ggmls(type_name):
    """ggml's to_float of blocks selecting each grid number in turn returns ``lattice(...).values``."""
    packed, factor = _blocks_selecting_every_point(type_name)
    lat = lattice(REFERENCE.LATTICE[type_name])
    got = oracle.dequantize(type_name, packed, packed.shape[1] // FORMATS[type_name].type_size * QK_K)
    np.testing.assert_array_equal(got.reshape(-1, 4), lat.values.astype(np.float32) * np.float32(factor))
    np.testing.assert_array_equal(lat.values, REFERENCE.LEVEL_VALUES[type_name][lat.levels].astype(np.int8))


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
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    values = st.floats(-1e4, 1e4, width=32)
    rows = arrays(np.float32, (2, QK_K), elements=values)
    weights = st.none() | arrays(np.float32, QK_K, elements=st.floats(0, 100, width=32))
    quantize = _fn(KERNEL, "quantize", type_name)

    @settings(max_examples=60, deadline=None)
    @given(rows, weights)
    def check(x, imatrix):
        oracle.assert_blocks_equal(type_name, quantize(x, imatrix), oracle.quantize(type_name, x, imatrix))

    check()


@pytest.mark.parametrize("type_name", TYPES)
def test_record_matches_gguf(type_name):
    """ggml types 18 / 21, file types MOSTLY_IQ3_XXS (23) / MOSTLY_IQ3_S (26), 98 / 110 bytes a 256-block;
    rows no 256-block divides fall back to IQ4_NL (llama.cpp's llama_tensor_get_type); no imatrix needed."""
    gguf = pytest.importorskip("gguf")
    t = registry.quant_type(type_name)
    assert t.ggml_type == gguf.GGMLQuantizationType[type_name]
    assert t.file_type == gguf.LlamaFileType[f"MOSTLY_{type_name}"]
    assert (t.block_size, t.type_size) == gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    assert t.fallback == "IQ4_NL"
    assert not t.requires_imatrix
    assert t.provides("points")

"""IQ1_S and IQ1_M against ggml's own bytes (the oracle), for the numpy reference and the numba kernel.

Parametrized over every ``gguf_iq1`` type of the registry. Bytes and decoded
floats must be identical: ``np.array_equal`` on ``packed``, on the float32 bit
patterns of dequantized values, and on ``QuantResult.dequantize()``. IQ1_S
needs an importance matrix (ggml asserts without one), so its rows are only
ever quantized with one; IQ1_M is also compared without. ``ggml_oracle.quantize``
calls ``ggml_quantize_init`` for the type before quantizing, which builds the
``iq1s`` lattice tables these searches need.
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
from qviz.formats.spec import FORMATS, QK_K

TYPES = [name for name, t in registry.types().items() if t.family == "gguf_iq1"]
REFERENCE = importlib.import_module(registry.quant_type(TYPES[0]).module_of("numpy"))
KERNEL = importlib.import_module(registry.quant_type(TYPES[0]).module_of("numba"))
MODULE_IDS = {REFERENCE: "reference", KERNEL: "numba"}
IMATRIX_KINDS = [None, "random", "activations", "dead_columns"]

# The numpy reference runs ggml's searches interpreted: few rows. The kernel gets more.
SHAPES = {REFERENCE: (2, 2 * QK_K), KERNEL: (16, 5 * QK_K)}


def _needs(type_name: str, imatrix) -> None:
    if imatrix is None and registry.quant_type(type_name).requires_imatrix:
        pytest.skip(f"{type_name} needs an imatrix (ggml asserts without one)")


def _signed_zero(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """-0.0 and +0.0 mixed, with a few normal values: ties in the sort."""
    z = np.where(rng.random(normal.shape) < 0.5, np.float32(-0.0), np.float32(0.0))
    return np.where(rng.random(normal.shape) < 0.2, normal, z).astype(np.float32)


def _grid(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Values on a small half-integer grid: many ties in the sort and in the split scores."""
    return (rng.integers(-4, 5, normal.shape) * np.float32(0.5)).astype(np.float32)


def _mixed(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """16-weight groups each taking one path of the search (edge_rows.mixed_groups)."""
    return mixed_groups(16, *normal.shape, rng)


OWN_CASES = {"signed_zero": _signed_zero, "grid": _grid, "mixed": _mixed}
CASES = [*EDGE_CASES, *OWN_CASES, "minilm"]


def _fn(module, verb: str, type_name: str):
    return registry.quant_type(type_name).function(verb, "numpy" if module is REFERENCE else "numba")


@pytest.mark.parametrize("module", [REFERENCE, KERNEL], ids=MODULE_IDS.get)
@pytest.mark.parametrize("imatrix", IMATRIX_KINDS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("type_name", TYPES)
def test_quantize_matches_ggml(type_name, case, imatrix, module):
    _needs(type_name, imatrix)
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
    _needs(type_name, imatrix)
    x = np.ascontiguousarray(minilm_layer.T, dtype=np.float32)
    im = importance(imatrix, x.shape[1], np.random.default_rng(5))
    got = _fn(KERNEL, "quantize", type_name)(x, im)
    oracle.assert_blocks_equal(type_name, got, oracle.quantize(type_name, x, im))


@pytest.mark.parametrize("imatrix", [None, "random", "dead_columns", "with_zeros"])
@pytest.mark.parametrize("type_name", TYPES)
def test_kernel_matches_ggml_on_mixed_rows(type_name, imatrix):
    """Sub-blocks of every kind side by side, zero runs of the imatrix included."""
    _needs(type_name, imatrix)
    rng = np.random.default_rng(zlib.crc32(f"{type_name} mixed {imatrix}".encode()))
    x = _mixed(np.zeros((12, 6 * QK_K), dtype=np.float32), rng)
    im = importance(imatrix, x.shape[1], rng)
    got = _fn(KERNEL, "quantize", type_name)(x, im)
    oracle.assert_blocks_equal(type_name, got, oracle.quantize(type_name, x, im))


@pytest.mark.parametrize("type_name", TYPES)
def test_reference_matches_ggml_on_mixed_rows(type_name):
    rng = np.random.default_rng(zlib.crc32(f"{type_name} mixed reference".encode()))
    x = _mixed(np.zeros((2, 2 * QK_K), dtype=np.float32), rng)
    im = importance("with_zeros", x.shape[1], rng)
    got = _fn(REFERENCE, "quantize", type_name)(x, im)
    oracle.assert_blocks_equal(type_name, got, oracle.quantize(type_name, x, im))


def test_iq1_s_without_imatrix_raises_as_llama_quantize():
    import qviz

    x = np.random.default_rng(0).standard_normal((4, QK_K)).astype(np.float32)
    with pytest.raises(ValueError, match="IQ1_S needs an importance matrix.*Missing importance matrix"):
        qviz.quantize(x, "IQ1_S")
    for module in (REFERENCE, KERNEL):
        with pytest.raises(ValueError, match="importance matrix"):
            _fn(module, "quantize", "IQ1_S")(x)
    assert registry.quant_type("IQ1_S").requires_imatrix
    assert not registry.quant_type("IQ1_M").requires_imatrix  # ggml_quantize_requires_imatrix leaves it out


def _packed_cases(type_name: str, rng: np.random.Generator) -> np.ndarray:
    """ggml's bytes of edge rows, plus random bytes with a finite fp16 ``d`` (n_rows, row_bytes)."""
    n_cols = 4 * QK_K
    x = np.concatenate([edge_rows(c, 2, n_cols, rng) for c in EDGE_CASES])
    im = importance("random", n_cols, rng)
    packed = oracle.quantize(type_name, x, im)
    noise = rng.integers(0, 256, (8, packed.shape[1]), dtype=np.uint8)
    blocks = noise.reshape(8, -1, FORMATS[type_name].type_size)
    if type_name == "IQ1_S":
        blocks[..., 1] &= 0xBF  # d is first: no inf/NaN
    else:
        blocks[..., 55] &= 0xBF  # the top nibble of d is the top of scales' last word
    return np.concatenate([packed, noise])


@pytest.mark.parametrize("module", [REFERENCE, KERNEL], ids=MODULE_IDS.get)
@pytest.mark.parametrize("type_name", TYPES)
def test_dequantize_and_unpack_match_ggml(type_name, module):
    rng = np.random.default_rng(zlib.crc32(f"{type_name} dequantize".encode()))
    packed = _packed_cases(type_name, rng)
    backend = "numpy" if module is REFERENCE else "numba"
    r = oracle.assert_decodes_like_ggml(type_name, backend, packed, 4 * QK_K,
                                        np.float32([-0.875, 0.125, 1.125, -1.125, -0.125, 0.875]), max_code=5)
    bpw = {"IQ1_S": 1.5625, "IQ1_M": 1.75}[type_name]
    assert r.bits_per_weight == FORMATS[type_name].bits_per_weight == bpw


def _grid_blocks(type_name: str) -> np.ndarray:
    """One row of blocks whose runs select grid points 0, 1, …, 2047 in turn: d = 1.0, scale code 0
    (``dl = 1``), deltas +1/8. -> packed (1, 64 * type_size)."""
    g = np.arange(2048).reshape(64, 32)  # 32 runs of 8 a block
    if type_name == "IQ1_S":
        qh = ((g.reshape(64, 8, 4) >> 8) << (3 * np.arange(4))).sum(axis=2).astype(np.uint16)  # (64, 8)
        blocks = np.zeros((64, 50), dtype=np.uint8)
        blocks[:, 0:2] = [0x00, 0x3C]  # d = 1.0
        blocks[:, 2:34] = g & 255
        blocks[:, 34:50] = qh.astype("<u2").view(np.uint8).reshape(64, 16)
    else:
        qh = ((g.reshape(64, 16, 2) >> 8) << np.array([0, 4])).sum(axis=2).astype(np.uint8)  # (64, 16)
        sc = (((0x3C00 >> (4 * np.arange(4))) & 0xF) << 12).astype("<u2")  # d's nibbles atop the words
        blocks = np.zeros((64, 56), dtype=np.uint8)
        blocks[:, 0:32] = g & 255
        blocks[:, 32:48] = qh
        blocks[:, 48:56] = np.tile(sc.view(np.uint8), (64, 1))
    return blocks.reshape(1, -1)


@pytest.mark.parametrize("type_name", TYPES)
def test_lattice_is_ggmls_grid(type_name):
    """Every grid point decoded by ggml's to_float is ``lattice("iq1s").values + 1/8``; the reference's and
    the kernel's decoders and ``points_<type>`` agree."""
    packed = _grid_blocks(type_name)
    want = oracle.dequantize(type_name, packed, 2048 * 8)
    values = lattice("iq1s").values.astype(np.float32)  # (2048, 8)
    np.testing.assert_array_equal(want.reshape(2048, 8), values + np.float32(0.125))
    for module in (REFERENCE, KERNEL):
        got = _fn(module, "dequantize", type_name)(packed)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    points = getattr(REFERENCE, f"points_{type_name.lower()}")(packed)
    assert points.lattice == "iq1s"
    np.testing.assert_array_equal(points.index, np.arange(2048, dtype=np.uint16)[None])
    assert points.negative.shape == (1, 2048 * 8) and not points.negative.any()


@pytest.mark.parametrize("type_name", TYPES)
def test_points_follow_the_quantized_rows(type_name):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 2 * QK_K)).astype(np.float32)
    packed = _fn(KERNEL, "quantize", type_name)(x, importance("random", x.shape[1], rng))
    p = getattr(REFERENCE, f"points_{type_name.lower()}")(packed)
    u = _fn(REFERENCE, "unpack", type_name)(packed)
    levels = lattice("iq1s").levels[p.index.astype(np.int64)].reshape(4, -1)  # (4, n_cols)
    np.testing.assert_array_equal(u.codes % 3, levels)


@pytest.mark.parametrize("imatrix", IMATRIX_KINDS[:2])
@pytest.mark.parametrize("type_name", TYPES)
def test_kernel_is_deterministic(type_name, imatrix):
    _needs(type_name, imatrix)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((64, 2 * QK_K)).astype(np.float32)
    im = importance(imatrix, x.shape[1], rng)
    quantize = _fn(KERNEL, "quantize", type_name)
    first = quantize(x, im)
    np.testing.assert_array_equal(quantize(x, im), first)
    np.testing.assert_array_equal(quantize(x[::-1].copy(), im)[::-1], first)  # row order does not matter
    oracle.assert_blocks_equal(type_name, first, oracle.quantize(type_name, x, im))


@pytest.mark.parametrize("type_name", TYPES)
def test_kernel_matches_ggml_on_drawn_blocks(type_name):
    """Hypothesis draws rows (float32 in ±1e4, subnormals and repeats included) and an imatrix
    (optional for IQ1_M)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    values = st.floats(-1e4, 1e4, width=32)
    rows = arrays(np.float32, (2, QK_K), elements=values)
    weights = arrays(np.float32, QK_K, elements=st.floats(0, 100, width=32))
    if not registry.quant_type(type_name).requires_imatrix:
        weights = st.none() | weights
    quantize = _fn(KERNEL, "quantize", type_name)

    @settings(max_examples=60, deadline=None)
    @given(rows, weights)
    def check(x, imatrix):
        oracle.assert_blocks_equal(type_name, quantize(x, imatrix), oracle.quantize(type_name, x, imatrix))

    check()


@pytest.mark.parametrize("type_name", TYPES)
def test_reference_matches_ggml_on_drawn_blocks(type_name):
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    rows = arrays(np.float32, (1, QK_K), elements=st.floats(-1e4, 1e4, width=32))
    weights = arrays(np.float32, QK_K, elements=st.floats(0, 100, width=32))
    quantize = _fn(REFERENCE, "quantize", type_name)

    @settings(max_examples=10, deadline=None)
    @given(rows, weights)
    def check(x, imatrix):
        oracle.assert_blocks_equal(type_name, quantize(x, imatrix), oracle.quantize(type_name, x, imatrix))

    check()


@pytest.mark.parametrize("type_name", TYPES)
def test_record_matches_gguf(type_name):
    """ggml types 19/29, file types MOSTLY_IQ1_S/MOSTLY_IQ1_M (24/31), 50/56 bytes a 256-block; rows no
    256-block divides fall back to IQ4_NL (llama.cpp's llama_tensor_get_type)."""
    gguf = pytest.importorskip("gguf")
    t = registry.quant_type(type_name)
    assert t.ggml_type == gguf.GGMLQuantizationType[type_name]
    assert t.file_type == gguf.LlamaFileType[f"MOSTLY_{type_name}"]
    assert (t.block_size, t.type_size) == gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    assert t.fallback == "IQ4_NL"

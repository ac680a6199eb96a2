"""Q2_K, Q4_K and Q5_K against ggml's own bytes (the oracle), for the reference and the kernel.

Parametrized over every ``k_min`` type of ``FORMATS``, so a new K-quant with
mins is tested without editing a list. Bytes and decoded floats must be
identical: ``np.array_equal`` on ``packed``, on the float32 bit patterns of
dequantized values, and on ``QuantResult.dequantize()``.
"""
from __future__ import annotations

import importlib
import zlib

import numpy as np
import pytest

import ggml_oracle as oracle
from edge_rows import CASES as EDGE_CASES
from edge_rows import edge_rows, importance, minilm_rows, mixed_groups
from qviz import registry
from qviz.formats import rounding
from qviz.formats.spec import FORMATS, QK_K
from qviz.result import QuantResult

TYPES = [name for name, t in registry.types().items() if t.family == "gguf_k_min"]
REFERENCE = importlib.import_module(registry.quant_type(TYPES[0]).module_of("numpy"))
KERNEL = importlib.import_module(registry.quant_type(TYPES[0]).module_of("numba"))
MODULE_IDS = {REFERENCE: "reference", KERNEL: "numba"}
LANES = importlib.import_module("qviz.kernels.numba.lanes_min")
SEARCH = importlib.import_module("qviz.kernels.numba.search")

# The numpy reference runs ggml's searches interpreted: few rows. The kernel gets more.
SHAPES = {REFERENCE: (2, 2 * QK_K), KERNEL: (16, 6 * QK_K)}

OWN_CASES = {  # this file's own edge_rows cases: float32 overflow in the scale search
    "subnormal": lambda normal, rng: normal * np.float32(1e-40),  # inverse scales overflow to inf
    "float32_max": lambda normal, rng: rng.uniform(  # ranges and sums overflow to inf
        -3.4e38, 3.4e38, normal.shape).astype(np.float32),
}
CASES = [*EDGE_CASES, *OWN_CASES, "minilm"]


def _fn(module, verb: str, type_name: str):
    return registry.quant_type(type_name).function(verb, "numpy" if module is REFERENCE else "numba")


@pytest.mark.parametrize("module", [REFERENCE, KERNEL], ids=MODULE_IDS.get)
@pytest.mark.parametrize("imatrix", [None, "random", "activations"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("type_name", TYPES)
def test_quantize_matches_ggml(type_name, case, imatrix, module):
    rng = np.random.default_rng(zlib.crc32(f"{type_name} {case} {imatrix}".encode()))
    n_rows, n_cols = SHAPES[module]
    x = edge_rows(case, n_rows, n_cols, rng, extra_cases=OWN_CASES)
    im = importance(imatrix, n_cols, rng)
    got = _fn(module, "quantize", type_name)(x, im)
    oracle.assert_blocks_equal(type_name, got, oracle.quantize(type_name, x, im))


@pytest.mark.parametrize("imatrix", [None, "activations"])
@pytest.mark.parametrize("type_name", TYPES)
def test_kernel_matches_ggml_on_a_whole_layer(type_name, imatrix):
    """Every row of a real 384 × 1536 weight (and many random blocks) through the kernel."""
    rng = np.random.default_rng(5)
    x = minilm_rows(384, 1536)
    im = importance(imatrix, x.shape[1], rng)
    oracle.assert_blocks_equal(type_name, _fn(KERNEL, "quantize", type_name)(x, im),
                               oracle.quantize(type_name, x, im))


@pytest.mark.parametrize("imatrix", [None, "random", "with_zeros"])
@pytest.mark.parametrize("n_blocks", [1, KERNEL.GROUP + 3])
@pytest.mark.parametrize("type_name", TYPES)
def test_kernel_lanes_branch_apart(type_name, n_blocks, imatrix):
    """Sub-blocks searched side by side take different paths; 1 super-block per row
    (fewer lanes than a vector) and two lane groups per row, the second partial."""
    rng = np.random.default_rng(zlib.crc32(f"{type_name} lanes {n_blocks} {imatrix}".encode()))
    n_cols = n_blocks * QK_K
    x = mixed_groups(FORMATS[type_name].group_size, 1024 // n_blocks, n_cols, rng)
    im = importance(imatrix, n_cols, rng)
    oracle.assert_blocks_equal(type_name, _fn(KERNEL, "quantize", type_name)(x, im),
                               oracle.quantize(type_name, x, im))


@pytest.mark.parametrize("imatrix", [None, "random", "with_zeros"])
@pytest.mark.parametrize("type_name", TYPES)
def test_reference_mixed_sub_blocks(type_name, imatrix):
    """The kernel's lane cases through the reference: 8 super-blocks of sub-blocks
    of every kind (no range, sparse, float32-subnormal, a single value, ...)."""
    rng = np.random.default_rng(zlib.crc32(f"{type_name} reference mixed {imatrix}".encode()))
    x = mixed_groups(FORMATS[type_name].group_size, 4, 2 * QK_K, rng)
    im = importance(imatrix, x.shape[1], rng)
    oracle.assert_blocks_equal(type_name, _fn(REFERENCE, "quantize", type_name)(x, im),
                               oracle.quantize(type_name, x, im))


SPARSE_ROWS = {REFERENCE: 4, KERNEL: 400}


@pytest.mark.parametrize("module", [REFERENCE, KERNEL], ids=MODULE_IDS.get)
@pytest.mark.parametrize("type_name", TYPES)
def test_sparse_rows_with_dead_columns(type_name, module):
    """90% zeros, magnitudes 1e-6..1, half the imatrix zero: a trial measured from a
    better trial's min can round beyond 2**22, where ggml's ``nearest_int`` wraps."""
    rng = np.random.default_rng(zlib.crc32(f"{type_name} sparse".encode()))
    x = rng.standard_normal((SPARSE_ROWS[module], 4 * QK_K)).astype(np.float32)
    x *= (np.float32(10.0) ** rng.uniform(-6, 0, x.shape)).astype(np.float32)
    x[rng.random(x.shape) < 0.9] = 0
    im = rng.uniform(0, 2, x.shape[1]).astype(np.float32)
    im[rng.random(x.shape[1]) < 0.5] = 0
    oracle.assert_blocks_equal(type_name, _fn(module, "quantize", type_name)(x, im),
                               oracle.quantize(type_name, x, im))


def _dead_column_rows(type_name: str, grid: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """One super-block per row, float32 (len(grid), 256), and its imatrix, float32 (256,).

    Row ``(a, b, c, rest, freq)`` is ``rest * sin(freq * i)``, except
    sub-block 3: zero but for ``a, b, c`` at its weights 1, 5, 9. The imatrix
    is one, except zero at weights 1 and 5 of sub-block 3.
    """
    sub = FORMATS[type_name].group_size
    x = np.empty((len(grid), QK_K), dtype=np.float32)
    for r, (a, b, c, rest, freq) in enumerate(grid):
        x[r] = rest * np.sin(freq * np.arange(QK_K))
        x[r, 3 * sub:4 * sub] = 0
        x[r, 3 * sub + np.array([1, 5, 9])] = a, b, c
    im = np.ones(QK_K, dtype=np.float32)
    im[3 * sub + np.array([1, 5])] = 0
    return x, im


#: ``a`` large and negative, ``c`` tiny: a better trial's min lies just below 0,
#: and the next trial's codes go beyond 2**22; rounding them to the true
#: integer would change the bytes (row 1: Q2_K, Q4_K; row 2: Q2_K, Q5_K)
BEYOND_2_22 = [(-0.4, 0.0, 2e-7, 0.1, 1.7), (-0.4, 0.0, -2.7e-6, 0.1, 1.7)]
#: ``a`` sets the range, ``b`` and ``c`` are negative: the fitted scale can be negative
NEGATIVE_SCALE = [(a, b, c, rest, freq) for a in (0.1, 0.3, 1.0)
                  for b in (-0.02, -0.05, -0.09, -0.2) for c in (-0.001, -0.003, -0.01, -0.03)
                  for rest in (1e-5, 1e-4, 1e-3) for freq in (0.5, 1.7, 2.9)]
#: the reference runs rows of NEGATIVE_SCALE whose scale code wraps in every type,
#: and whose spilled bits change Q2_K's and Q4_K's final rounding
DEAD_COLUMN_ROWS = {REFERENCE: BEYOND_2_22 + [(0.1, -0.2, -0.001, rest, freq)
                                              for rest in (1e-5, 1e-4) for freq in (0.5, 1.7)],
                    KERNEL: BEYOND_2_22 + NEGATIVE_SCALE}


@pytest.mark.parametrize("module", [REFERENCE, KERNEL], ids=MODULE_IDS.get)
@pytest.mark.parametrize("type_name", TYPES)
def test_dead_columns_in_one_sub_block(type_name, module):
    """Sub-block 3 holds three values; the two of zero importance set its range.

    Its search rounds beyond 2**22, where ggml's ``nearest_int`` wraps
    (``BEYOND_2_22``), or its fitted scale comes out negative
    (``NEGATIVE_SCALE``): ``make_qp_quants`` then gives a code that wraps past
    4/6 bits; ggml packs it, spilling into other sub-blocks' bits (Q5_K clamps
    it to 63 first), and then rounds every weight against the codes as stored.
    """
    x, im = _dead_column_rows(type_name, DEAD_COLUMN_ROWS[module])
    oracle.assert_blocks_equal(type_name, _fn(module, "quantize", type_name)(x, im),
                               oracle.quantize(type_name, x, im))


@pytest.mark.parametrize("nearest_int", [rounding.nearest_int, SEARCH.nearest_int,
                                         LANES.nearest_int, rounding.nearest_int_array],
                         ids=["rounding", "compiled", "lanes", "array"])
def test_nearest_int_is_ggmls(nearest_int):
    """round-half-even up to 2**22, then ggml's wrapped bit trick (inf: -2**22, nan: 0)."""
    rng = np.random.default_rng(13)
    x = np.concatenate([rng.uniform(-2.0**22, 2.0**22, 1000), np.arange(-8, 8) + 0.5])
    x = x.astype(np.float32)
    got = np.array([nearest_int(v) for v in x])
    np.testing.assert_array_equal(got, np.rint(x).astype(np.int64))
    beyond = [np.float32(2.0**22 + 1), np.float32(-(2.0**22) - 3), np.float32(np.inf),
              np.float32(-np.inf), np.float32(np.nan)]
    assert [int(nearest_int(v)) for v in beyond] == [-2**22, 2**22 - 6, -2**22, -2**22, 0]


@pytest.mark.parametrize("module", [REFERENCE, KERNEL], ids=MODULE_IDS.get)
@pytest.mark.parametrize("type_name", TYPES)
def test_dequantize_and_unpack_match_ggml(type_name, module):
    rng = np.random.default_rng(7)
    n_rows, n_cols = 8, 4 * QK_K
    x = rng.standard_normal((n_rows, n_cols)).astype(np.float32) * rng.uniform(
        1e-3, 1e2, (n_rows, 1)).astype(np.float32)
    x[1] -= 3  # a row that needs large mins
    packed = oracle.quantize(type_name, x)
    want = oracle.dequantize(type_name, packed, n_cols).view(np.uint32)
    got = _fn(module, "dequantize", type_name)(packed)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), want)
    if module is REFERENCE:
        lay = FORMATS[type_name]
        u = _fn(REFERENCE, "unpack", type_name)(packed)
        assert u.codes.dtype == np.uint8 and u.scales.dtype == np.float32
        assert u.scales.shape == u.mins.shape == (n_rows, n_cols // lay.group_size)
        assert int(u.codes.max()) < 2 ** lay.bits
        r = QuantResult(type_name, x.shape, lay.bits, lay.group_size, u.codes, u.scales,
                        mins=u.mins, packed=packed)
        np.testing.assert_array_equal(r.dequantize().view(np.uint32), want)


def _random_blocks(type_name: str, n_rows: int, n_blocks: int, rng) -> np.ndarray:
    """Random bytes as packed rows, with finite fp16 ``d`` and ``dmin`` of either sign."""
    lay = FORMATS[type_name]
    blocks = rng.integers(0, 256, (n_rows * n_blocks, lay.type_size), dtype=np.uint8)
    off = 0
    for f in lay.fields:
        if f.name in ("d", "dmin"):
            v = rng.integers(0, 0x7C00, blocks.shape[0], dtype=np.uint16)
            v |= rng.integers(0, 2, blocks.shape[0], dtype=np.uint16) << 15
            blocks[:, off:off + 2] = v.view(np.uint8).reshape(-1, 2)
        off += f.nbytes
    return blocks.reshape(n_rows, -1)


@pytest.mark.parametrize("module", [REFERENCE, KERNEL], ids=MODULE_IDS.get)
@pytest.mark.parametrize("type_name", TYPES)
def test_dequantize_random_bytes(type_name, module):
    """Any bytes with finite ``d``/``dmin`` decode as ggml decodes them (all codes, scales, mins)."""
    packed = _random_blocks(type_name, 4, 3, np.random.default_rng(3))
    want = oracle.dequantize(type_name, packed, 3 * QK_K).view(np.uint32)
    got = _fn(module, "dequantize", type_name)(packed)
    np.testing.assert_array_equal(got.view(np.uint32), want)


def test_scale_min_k4_round_trip():
    """Eight 6-bit scales and mins survive the 12-byte packing of Q4_K/Q5_K."""
    rng = np.random.default_rng(9)
    ls = rng.integers(0, 64, (100, 8), dtype=np.uint8)
    lm = rng.integers(0, 64, (100, 8), dtype=np.uint8)
    packed = REFERENCE.pack_scale_min_k4(ls, lm)
    assert packed.shape == (100, 12)
    sc, m = REFERENCE.unpack_scale_min_k4(packed)
    np.testing.assert_array_equal(sc, ls)
    np.testing.assert_array_equal(m, lm)


@pytest.mark.parametrize("imatrix", [None, "random"])
@pytest.mark.parametrize("type_name", TYPES)
def test_kernel_is_deterministic(type_name, imatrix):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((64, 4 * QK_K)).astype(np.float32)
    im = importance(imatrix, x.shape[1], rng)
    quantize = _fn(KERNEL, "quantize", type_name)
    first = quantize(x, im)
    np.testing.assert_array_equal(quantize(x, im), first)
    oracle.assert_blocks_equal(type_name, first, oracle.quantize(type_name, x, im))

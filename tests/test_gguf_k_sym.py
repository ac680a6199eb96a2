"""Q3_K and Q6_K against ggml's own bytes (the oracle), for the numpy reference and the numba kernel.

Parametrized over every ``k_sym`` type of ``FORMATS``, so a new symmetric
K-quant is tested without editing a list. Bytes and decoded floats must be
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
from edge_rows import edge_rows, importance
from qviz import registry
from qviz.formats.spec import FORMATS, QK_K
from qviz.result import QuantResult

TYPES = [name for name, t in registry.types().items() if t.family == "gguf_k_sym"]
REFERENCE = importlib.import_module(registry.quant_type(TYPES[0]).module_of("numpy"))
KERNEL = importlib.import_module(registry.quant_type(TYPES[0]).module_of("numba"))
MODULE_IDS = {REFERENCE: "reference", KERNEL: "numba"}

# The numpy reference runs ggml's searches interpreted: few rows. The kernel gets more.
SHAPES = {REFERENCE: (2, 2 * QK_K), KERNEL: (16, 6 * QK_K)}


CASES = [*EDGE_CASES, "minilm"]


def _fn(module, verb: str, type_name: str):
    return registry.quant_type(type_name).function(verb, "numpy" if module is REFERENCE else "numba")


@pytest.mark.parametrize("module", [REFERENCE, KERNEL], ids=MODULE_IDS.get)
@pytest.mark.parametrize("imatrix", [None, "random", "activations"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("type_name", TYPES)
def test_quantize_matches_ggml(type_name, case, imatrix, module):
    rng = np.random.default_rng(zlib.crc32(f"{type_name} {case} {imatrix}".encode()))
    n_rows, n_cols = SHAPES[module]
    x = edge_rows(case, n_rows, n_cols, rng)
    im = importance(imatrix, n_cols, rng)
    got = _fn(module, "quantize", type_name)(x, im)
    oracle.assert_blocks_equal(type_name, got, oracle.quantize(type_name, x, im))


@pytest.mark.parametrize("module", [REFERENCE, KERNEL], ids=MODULE_IDS.get)
@pytest.mark.parametrize("type_name", TYPES)
def test_dequantize_and_unpack_match_ggml(type_name, module):
    rng = np.random.default_rng(7)
    n_rows, n_cols = 8, 4 * QK_K
    x = rng.standard_normal((n_rows, n_cols)).astype(np.float32) * rng.uniform(
        1e-3, 1e2, (n_rows, 1)).astype(np.float32)
    packed = oracle.quantize(type_name, x)
    want = oracle.dequantize(type_name, packed, n_cols).view(np.uint32)
    got = _fn(module, "dequantize", type_name)(packed)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), want)
    if module is REFERENCE:
        lay = FORMATS[type_name]
        u = _fn(REFERENCE, "unpack", type_name)(packed)
        assert u.codes.dtype == np.uint8 and u.scales.dtype == np.float32
        assert u.scales.shape == (n_rows, n_cols // lay.group_size)
        r = QuantResult(type_name, x.shape, lay.bits, lay.group_size, u.codes, u.scales,
                        packed=packed)
        np.testing.assert_array_equal(r.dequantize().view(np.uint32), want)


@pytest.mark.parametrize("module", [REFERENCE, KERNEL], ids=MODULE_IDS.get)
@pytest.mark.parametrize("type_name", TYPES)
def test_dequantize_random_bytes(type_name, module):
    """Any bytes with a finite ``d`` decode as ggml decodes them (every code and scale pattern)."""
    lay = FORMATS[type_name]
    rng = np.random.default_rng(3)
    blocks = rng.integers(0, 256, (4 * 3, lay.type_size), dtype=np.uint8)
    d = rng.integers(0, 0x7C00, blocks.shape[0], dtype=np.uint16)  # finite fp16, both signs
    d |= rng.integers(0, 2, blocks.shape[0], dtype=np.uint16) << 15
    blocks[:, -2:] = d.view(np.uint8).reshape(-1, 2)  # d is the last field of both types
    packed = blocks.reshape(4, -1)
    n_cols = 3 * QK_K
    want = oracle.dequantize(type_name, packed, n_cols).view(np.uint32)
    got = _fn(module, "dequantize", type_name)(packed)
    np.testing.assert_array_equal(got.view(np.uint32), want)


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


def _mixed_sub_block(kind: str, rng: np.random.Generator) -> np.ndarray:
    """One 16-weight sub-block of a named kind, float32 (16,)."""
    normal = rng.standard_normal(16).astype(np.float32)
    if kind == "normal":
        return normal
    if kind == "zero":
        return np.zeros(16, dtype=np.float32)
    if kind == "constant":
        return np.full(16, 0.37, dtype=np.float32)
    if kind == "below_eps":  # largest magnitude under GROUP_MAX_EPS: an all-zero group to ggml
        return normal * np.float32(1e-17)
    if kind == "tiny":  # a sub-block 1e-6 times its neighbours: its scale rounds to 0
        return normal * np.float32(1e-6)
    if kind == "huge":
        return normal * np.float32(1e3)
    if kind == "one_value":
        block = np.zeros(16, dtype=np.float32)
        block[rng.integers(16)] = rng.choice([-3.0, 2.0])
        return block
    if kind == "grid":  # half-integers: rounding ties
        return (rng.integers(-8, 9, 16) * np.float32(0.5)).astype(np.float32)
    raise ValueError(kind)


MIXED_KINDS = ["normal", "zero", "constant", "below_eps", "tiny", "huge", "one_value", "grid"]


@pytest.mark.parametrize("imatrix", [None, "random", "dead_columns"])
@pytest.mark.parametrize("type_name", TYPES)
def test_kernel_matches_ggml_on_mixed_rows(type_name, imatrix):
    """Super-blocks and sub-blocks of one row taking different branches (the kernels search them as lanes).

    Seven super-blocks a row: a full group of four and a partial one; one
    super-block in three is wholly below GROUP_MAX_EPS.
    """
    rng = np.random.default_rng(zlib.crc32(f"{type_name} mixed {imatrix}".encode()))
    n_rows, n_blocks = 8, 7
    kinds = rng.choice(MIXED_KINDS, (n_rows, n_blocks * 16))
    x = np.stack([np.concatenate([_mixed_sub_block(k, rng) for k in row]) for row in kinds])
    x[::3, 256:512] *= np.float32(1e-17)
    im = importance(imatrix, x.shape[1], rng)
    got = _fn(KERNEL, "quantize", type_name)(x, im)
    oracle.assert_blocks_equal(type_name, got, oracle.quantize(type_name, x, im))

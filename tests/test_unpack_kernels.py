"""The numba ``unpack_<type>`` twins against the numpy reference and ggml, for every GGUF type.

Parametrized over the registry's types, so a new type is tested without editing a list.
The twin must return the reference's very arrays: same fields, dtypes and
shapes, and the same bit patterns (floats compared as uint32, so -0.0 and NaN
payloads count). Decoding the twin's arrays with ``QuantResult.dequantize()``
must give ggml's ``to_float`` bit for bit. Packed rows come from ggml itself
(``ggml_oracle.quantize``), so this file does not depend on qviz's quantizers.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

import ggml_oracle as oracle
from edge_rows import CASES as EDGE_CASES
from edge_rows import edge_rows, importance, minilm_rows, mixed_groups
from qviz import registry
from qviz.formats.spec import FORMATS, QK_K, Unpacked
from qviz.quantizers import type_result
from qviz.result import QuantResult

TYPES = list(registry.types())
N_ROWS, N_COLS = 6, 2 * QK_K  # a multiple of every block size

CASES = [*EDGE_CASES, "mixed", "minilm"]


def _unpackers(type_name: str):
    """(reference, twin) ``unpack_<type>`` functions."""
    t = registry.quant_type(type_name)
    return t.function("unpack", "numpy"), t.function("unpack", "numba")


def _rows(type_name: str, case: str, rng: np.random.Generator) -> np.ndarray:
    """Named test rows, float32 (N_ROWS, N_COLS): ``edge_rows``' cases and this file's "mixed"."""
    mixed = {"mixed": lambda normal, rng: mixed_groups(FORMATS[type_name].group_size, N_ROWS, N_COLS, rng)}
    return edge_rows(case, N_ROWS, N_COLS, rng, extra_cases=mixed)


def _random_bytes(type_name: str, n_rows: int, rng: np.random.Generator, finite: bool) -> np.ndarray:
    """Random blocks (n_rows, 3 blocks), uint8: every bit pattern of codes and scales.

    ``finite``: clear the top exponent bit of each fp16 field (``d``, ``m``,
    ``dmin``), so none is inf or NaN.
    """
    lay = FORMATS[type_name]
    packed = rng.integers(0, 256, (n_rows, 3 * lay.type_size), dtype=np.uint8)
    if finite:
        blocks = packed.reshape(n_rows, 3, lay.type_size)
        off = 0
        for f in lay.fields:
            if f.name in ("d", "m", "dmin"):
                blocks[..., off + 1] &= 0xBF
            off += f.nbytes
    return packed


def _assert_same(want: Unpacked, got: Unpacked) -> None:
    """Field by field: both None, or equal dtype, shape and bit patterns (C-contiguous)."""
    assert isinstance(got, Unpacked)
    for field in Unpacked._fields:
        a, b = getattr(want, field), getattr(got, field)
        if a is None:
            assert b is None, f"{field}: the reference has None"
            continue
        assert b.dtype == a.dtype and b.shape == a.shape, (field, b.dtype, b.shape, a.dtype, a.shape)
        assert b.flags.c_contiguous, field
        bits = {1: np.uint8, 4: np.uint32}[a.itemsize]
        diff = np.flatnonzero(a.view(bits).ravel() != b.view(bits).ravel())
        assert diff.size == 0, (f"{field}: {diff.size} entries differ, first at flat index {diff[0]}: "
                                f"twin {b.ravel()[diff[0]]!r}, reference {a.ravel()[diff[0]]!r}")


def _result(type_name: str, u: Unpacked, packed: np.ndarray) -> QuantResult:
    """A QuantResult of unpacked arrays, as ``quantizers.type_result`` builds it."""
    lay = FORMATS[type_name]
    return QuantResult(type_name, u.codes.shape, lay.bits, lay.group_size, u.codes, u.scales,
                       mins=u.mins, codebook=u.codebook, packed=packed)


def _assert_decodes_like_ggml(type_name: str, u: Unpacked, packed: np.ndarray) -> None:
    want = oracle.dequantize(type_name, packed, u.codes.shape[1])
    got = _result(type_name, u, packed).dequantize()
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("imatrix", [None, "random", "with_zeros", "activations"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("type_name", TYPES)
def test_twin_matches_reference_and_ggml(type_name, case, imatrix):
    if imatrix is None and registry.quant_type(type_name).requires_imatrix:
        pytest.skip(f"{type_name} needs an imatrix (ggml aborts without one); the other cases give it one")
    rng = np.random.default_rng(zlib.crc32(f"{type_name} {case} {imatrix}".encode()))
    x = _rows(type_name, case, rng)
    packed = oracle.quantize(type_name, x, importance(imatrix, N_COLS, rng))
    reference, twin = _unpackers(type_name)
    u = twin(packed)
    _assert_same(reference(packed), u)
    _assert_decodes_like_ggml(type_name, u, packed)


@pytest.mark.parametrize("type_name", TYPES)
def test_twin_matches_reference_on_random_bytes(type_name):
    """Any bytes: NaN and inf fp16 fields, negative and spilled scales, every code."""
    rng = np.random.default_rng(zlib.crc32(f"{type_name} bytes".encode()))
    packed = _random_bytes(type_name, 64, rng, finite=False)
    reference, twin = _unpackers(type_name)
    with np.errstate(invalid="ignore"):  # the reference multiplies NaN scales
        _assert_same(reference(packed), twin(packed))
    packed = _random_bytes(type_name, 64, rng, finite=True)
    _assert_decodes_like_ggml(type_name, twin(packed), packed)


@pytest.mark.parametrize("type_name", TYPES)
def test_twin_on_a_whole_layer(type_name):
    """All 384 rows of a real weight, quantized by ggml with an importance matrix."""
    rng = np.random.default_rng(7)
    x = minilm_rows(384, 1536)
    acts = rng.standard_normal((64, x.shape[1])).astype(np.float32)
    packed = oracle.quantize(type_name, x, (acts * acts).mean(axis=0).astype(np.float32))
    reference, twin = _unpackers(type_name)
    u = twin(packed)
    _assert_same(reference(packed), u)
    _assert_decodes_like_ggml(type_name, u, packed)


@pytest.mark.parametrize("type_name", TYPES)
def test_twin_is_deterministic(type_name):
    rng = np.random.default_rng(zlib.crc32(f"{type_name} twice".encode()))
    packed = _random_bytes(type_name, 257, rng, finite=True)
    _, twin = _unpackers(type_name)
    first = twin(packed)
    _assert_same(first, twin(packed))
    flipped = twin(packed[::-1].copy())  # row order does not matter
    _assert_same(first, Unpacked(*(v[::-1].copy() if v is not None and v.ndim == 2 else v
                                   for v in flipped)))


@pytest.mark.parametrize("type_name", TYPES)
def test_type_result_holds_the_reference_arrays(type_name):
    """``quantizers.type_result`` (what ``qviz.quantize`` returns) decodes with the twin: same arrays."""
    rng = np.random.default_rng(zlib.crc32(f"{type_name} api".encode()))
    im = importance("random", N_COLS, rng) if registry.quant_type(type_name).requires_imatrix else None
    packed = oracle.quantize(type_name, _rows(type_name, "normal", rng), im)
    res = type_result(type_name, packed)
    reference, _ = _unpackers(type_name)
    _assert_same(reference(packed), Unpacked(res.codes, res.scales, res.mins, res.codebook))
    assert res.packed is not None and np.array_equal(res.packed, packed)

"""IQ2_XXS and IQ2_XS against ggml's own bytes (the oracle), for the numpy reference and the numba kernel.

Both types need an importance matrix: ggml's ``ggml_quantize_chunk`` asserts one (the process
would abort), so every oracle call here passes one, and quantizing without one is checked to
raise in qviz. Bytes and decoded floats must be identical: ``np.array_equal`` on ``packed``, on
the float32 bit patterns of dequantized values, and on ``QuantResult.dequantize()``.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

import ggml_oracle as oracle
from edge_rows import CASES as EDGE_CASES
from edge_rows import edge_rows, importance, mixed_groups
import qviz
from qviz import registry
from qviz.formats.iq_lattice import lattice
from qviz.formats.spec import FORMATS, QK_K

TYPES = [name for name, t in registry.types().items() if t.family == "gguf_iq2"]
REFERENCE = importlib.import_module(registry.quant_type(TYPES[0]).module_of("numpy"))
KERNEL = importlib.import_module(registry.quant_type(TYPES[0]).module_of("numba"))
MODULE_IDS = {REFERENCE: "reference", KERNEL: "numba"}
LATTICES = {"IQ2_XXS": "iq2xxs", "IQ2_XS": "iq2xs"}

# The numpy reference runs ggml's search interpreted: one row of two super-blocks.
SHAPES = {REFERENCE: (1, 2 * QK_K), KERNEL: (8, 4 * QK_K)}
IMATRICES = {REFERENCE: ["random", "dead_columns"], KERNEL: ["random", "activations", "dead_columns", "with_zeros"]}


def _signed_zero(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """-0.0 and +0.0 mixed with a few normal weights."""
    z = np.where(rng.random(normal.shape) < 0.5, np.float32(-0.0), np.float32(0.0))
    return np.where(rng.random(normal.shape) < 0.2, normal, z).astype(np.float32)


def _grid(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Values on a half-integer grid: ties for every rounding rule."""
    return (rng.integers(-16, 17, normal.shape) * np.float32(0.5)).astype(np.float32)


def _lattice_points(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Runs of 8 that are grid points times a scale, with random signs: the on-grid paths."""
    lat = lattice("iq2xs")
    pts = lat.values[rng.integers(0, len(lat.values), normal.size // 8)].astype(np.float32)
    signs = rng.choice(np.array([-1, 1], np.float32), pts.shape)
    return (pts * signs * np.float32(0.01)).reshape(normal.shape)


def _odd_negatives(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every run of 8 with exactly one or three negatives and ties in ``w * x**2``: the parity fix."""
    x = np.abs(normal).reshape(-1, 8)
    x[:, 0] *= -1
    x[::2, 3:5] = -x[::2, 3:4]
    return x.reshape(normal.shape).astype(np.float32)


def _mixed(normal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sub-blocks each taking one path of the search (edge_rows.mixed_groups)."""
    return mixed_groups(16, *normal.shape, rng)


OWN_CASES = {"signed_zero": _signed_zero, "grid": _grid, "lattice_points": _lattice_points,
             "odd_negatives": _odd_negatives, "mixed": _mixed}
CASES = [*EDGE_CASES, *OWN_CASES, "minilm"]


def _fn(module, verb: str, type_name: str):
    return registry.quant_type(type_name).function(verb, "numpy" if module is REFERENCE else "numba")


def _cases(module):
    return [(case, im) for case in CASES for im in IMATRICES[module]]


@pytest.mark.parametrize("case,imatrix", _cases(REFERENCE))
@pytest.mark.parametrize("type_name", TYPES)
def test_reference_matches_ggml(type_name, case, imatrix):
    _check(REFERENCE, type_name, case, imatrix)


@pytest.mark.parametrize("case,imatrix", _cases(KERNEL))
@pytest.mark.parametrize("type_name", TYPES)
def test_kernel_matches_ggml(type_name, case, imatrix):
    _check(KERNEL, type_name, case, imatrix)


def _check(module, type_name, case, imatrix):
    rng = np.random.default_rng(zlib.crc32(f"{type_name} {case} {imatrix}".encode()))
    n_rows, n_cols = SHAPES[module]
    x = edge_rows(case, n_rows, n_cols, rng, extra_cases=OWN_CASES)
    im = importance(imatrix, n_cols, rng)
    got = _fn(module, "quantize", type_name)(x, im)
    oracle.assert_blocks_equal(type_name, got, oracle.quantize(type_name, x, im))


@pytest.mark.parametrize("type_name", TYPES)
def test_kernel_matches_reference(type_name):
    rng = np.random.default_rng(zlib.crc32(f"{type_name} twin".encode()))
    x = mixed_groups(16, 2, 2 * QK_K, rng)
    im = importance("with_zeros", x.shape[1], rng)
    np.testing.assert_array_equal(_fn(KERNEL, "quantize", type_name)(x, im),
                                  _fn(REFERENCE, "quantize", type_name)(x, im))


@pytest.mark.parametrize("type_name", TYPES)
def test_kernel_matches_ggml_on_a_real_layer(type_name, minilm_layer):
    """MiniLM's (1536, 384) intermediate layer (``qviz.demo.layer``), transposed: 384 rows of 1536."""
    x = np.ascontiguousarray(minilm_layer.T, dtype=np.float32)
    im = importance("squared", x.shape[1], np.random.default_rng(5))
    got = _fn(KERNEL, "quantize", type_name)(x, im)
    oracle.assert_blocks_equal(type_name, got, oracle.quantize(type_name, x, im))


@pytest.mark.parametrize("imatrix", ["random", "dead_columns", "with_zeros"])
@pytest.mark.parametrize("type_name", TYPES)
def test_kernel_matches_ggml_on_mixed_rows(type_name, imatrix):
    """Sub-blocks of every kind side by side, 32-weight groups (IQ2_XXS's sub-block)."""
    rng = np.random.default_rng(zlib.crc32(f"{type_name} mixed {imatrix}".encode()))
    x = mixed_groups(32, 12, 6 * QK_K, rng)
    x[::3, :QK_K] *= np.float32(1e-17)  # a super-block wholly below GROUP_MAX_EPS
    im = importance(imatrix, x.shape[1], rng)
    got = _fn(KERNEL, "quantize", type_name)(x, im)
    oracle.assert_blocks_equal(type_name, got, oracle.quantize(type_name, x, im))


@pytest.mark.parametrize("module", [REFERENCE, KERNEL], ids=MODULE_IDS.get)
@pytest.mark.parametrize("type_name", TYPES)
def test_all_zero_super_block_is_all_zero(type_name, module):
    """ggml stores d = 0 and zero bytes for a super-block whose sub-block scales are all zero."""
    x = np.zeros((1, 2 * QK_K), dtype=np.float32)
    x[0, QK_K:] = np.linspace(-1, 1, QK_K, dtype=np.float32)
    im = np.ones(2 * QK_K, np.float32)
    packed = _fn(module, "quantize", type_name)(x, im)
    oracle.assert_blocks_equal(type_name, packed, oracle.quantize(type_name, x, im))
    assert not packed[0, :FORMATS[type_name].type_size].any()


@pytest.mark.parametrize("module", [REFERENCE, KERNEL], ids=MODULE_IDS.get)
@pytest.mark.parametrize("type_name", TYPES)
def test_quantizing_without_an_imatrix_raises(type_name, module):
    x = np.ones((1, QK_K), np.float32)
    with pytest.raises(ValueError, match=f"{type_name} needs an importance matrix"):
        _fn(module, "quantize", type_name)(x)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("type_name", TYPES)
def test_qviz_quantize_refuses_without_an_imatrix(type_name, backend):
    import qviz

    assert registry.quant_type(type_name).requires_imatrix
    x = np.random.default_rng(0).standard_normal((2, QK_K)).astype(np.float32)
    with pytest.raises(ValueError, match="llama-quantize refuses it without one"):
        qviz.quantize(x, type_name, backend=backend)
    im = np.ones(QK_K, np.float32)
    r = qviz.quantize(x, type_name, imatrix=im, backend=backend)
    oracle.assert_blocks_equal(type_name, r.packed, oracle.quantize(type_name, x, im))


def _packed_cases(type_name: str, rng: np.random.Generator) -> np.ndarray:
    """ggml's bytes of edge rows, plus random bytes with a finite fp16 ``d`` of either sign (n_rows, row_bytes)."""
    n_cols = 4 * QK_K
    x = np.concatenate([edge_rows(c, 2, n_cols, rng) for c in EDGE_CASES])
    packed = oracle.quantize(type_name, x, importance("random", n_cols, rng))
    noise = rng.integers(0, 256, (8, packed.shape[1]), dtype=np.uint8)
    noise.reshape(8, -1, FORMATS[type_name].type_size)[..., 1] &= 0xBF  # d is first: no inf/NaN
    return np.concatenate([packed, noise])


@pytest.mark.parametrize("module", [REFERENCE, KERNEL], ids=MODULE_IDS.get)
@pytest.mark.parametrize("type_name", TYPES)
def test_dequantize_and_unpack_match_ggml(type_name, module):
    rng = np.random.default_rng(zlib.crc32(f"{type_name} dequantize".encode()))
    packed = _packed_cases(type_name, rng)
    backend = "numpy" if module is REFERENCE else "numba"
    oracle.assert_decodes_like_ggml(type_name, backend, packed, 4 * QK_K,
                                    np.array([-43, -25, -8, 8, 25, 43], np.float32), max_code=5)


@pytest.mark.parametrize("type_name", TYPES)
def test_points_decode_to_the_weights(type_name):
    """``points_<type>``: grid numbers and sign bits that, times the steps, are ggml's to_float."""
    rng = np.random.default_rng(zlib.crc32(f"{type_name} points".encode()))
    packed = _packed_cases(type_name, rng)
    pts = getattr(REFERENCE, f"points_{type_name.lower()}")(packed)
    lat = lattice(LATTICES[type_name])
    assert pts.lattice == LATTICES[type_name]
    assert pts.index.dtype == np.uint16 and pts.index.shape == (packed.shape[0], 4 * QK_K // 8)
    assert pts.negative.dtype == np.bool_ and pts.negative.shape == (packed.shape[0], 4 * QK_K)
    assert int(pts.index.max()) < len(lat.values)
    assert (pts.negative.reshape(-1, 8).sum(axis=1) % 2 == 0).all()  # the parity rule
    u = _fn(REFERENCE, "unpack", type_name)(packed)
    magnitude = lat.values[pts.index.astype(np.int64)].reshape(packed.shape[0], -1).astype(np.float32)
    signed = np.where(pts.negative, -magnitude, magnitude)
    steps = np.repeat(u.scales, FORMATS[type_name].group_size, axis=1)
    want = oracle.dequantize(type_name, packed, 4 * QK_K)
    np.testing.assert_array_equal((steps * signed).view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("type_name", TYPES)
def test_lattice_values_are_ggml_grid(type_name):
    """Blocks whose fields select each grid number in turn (d = 1.0, ls = 5, signs off): ggml's to_float
    gives ``lattice(...).values * (0.5 + 5) * 0.25`` for every grid point."""
    lat = lattice(LATTICES[type_name])
    n_points = len(lat.values)
    n_blocks = n_points // 32
    numbers = np.arange(n_points).reshape(n_blocks, 32)
    ts = FORMATS[type_name].type_size
    blocks = np.zeros((n_blocks, ts), np.uint8)
    blocks[:, :2] = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
    ls = 5
    if type_name == "IQ2_XXS":
        for ib in range(8):
            blocks[:, 2 + 8 * ib:6 + 8 * ib] = numbers[:, 4 * ib:4 * ib + 4]
            blocks[:, 6 + 8 * ib:10 + 8 * ib] = np.frombuffer(np.uint32(ls << 28).tobytes(), np.uint8)
    else:
        blocks[:, 2:66] = numbers.astype("<u2").view(np.uint8)
        blocks[:, 66:74] = ls | (ls << 4)
    packed = blocks.reshape(1, -1)
    got = oracle.dequantize(type_name, packed, n_points * 8).reshape(n_points, 8)
    want = lat.values.astype(np.float32) * np.float32((0.5 + ls) * 0.25)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(_fn(REFERENCE, "dequantize", type_name)(packed).reshape(n_points, 8), want)
    np.testing.assert_array_equal(getattr(REFERENCE, f"points_{type_name.lower()}")(packed).index.ravel(),
                                  np.arange(n_points))


@pytest.mark.parametrize("type_name", TYPES)
def test_kernel_is_deterministic(type_name):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((32, 4 * QK_K)).astype(np.float32)
    im = importance("random", x.shape[1], rng)
    quantize = _fn(KERNEL, "quantize", type_name)
    first = quantize(x, im)
    np.testing.assert_array_equal(quantize(x, im), first)
    np.testing.assert_array_equal(quantize(x[::-1].copy(), im)[::-1], first)  # row order does not matter
    oracle.assert_blocks_equal(type_name, first, oracle.quantize(type_name, x, im))


@pytest.mark.parametrize("type_name", TYPES)
def test_kernel_matches_ggml_on_drawn_blocks(type_name):
    """Hypothesis draws rows (float32 in ±1e4, subnormals and repeats included) and an imatrix."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    values = st.floats(-1e4, 1e4, width=32)
    rows = arrays(np.float32, (2, QK_K), elements=values)
    weights = arrays(np.float32, QK_K, elements=st.floats(0, 100, width=32))
    quantize = _fn(KERNEL, "quantize", type_name)

    @settings(max_examples=60, deadline=None)
    @given(rows, weights)
    def check(x, imatrix):
        oracle.assert_blocks_equal(type_name, quantize(x, imatrix), oracle.quantize(type_name, x, imatrix))

    check()


@pytest.mark.parametrize("type_name", TYPES)
def test_record_matches_gguf(type_name):
    """ggml types 16/17, file types MOSTLY_IQ2_XXS/XS (19/20), 66/74 bytes a 256-block; rows no 256-block
    divides fall back to IQ4_NL (llama.cpp's tensor_type_fallback); an imatrix is required."""
    gguf = pytest.importorskip("gguf")
    t = registry.quant_type(type_name)
    g = getattr(gguf.GGMLQuantizationType, type_name)
    assert t.ggml_type == g
    assert t.file_type == getattr(gguf.LlamaFileType, f"MOSTLY_{type_name}")
    assert (t.block_size, t.type_size) == gguf.GGML_QUANT_SIZES[g]
    assert t.fallback == "IQ4_NL" and t.requires_imatrix
    assert t.group_size == {"IQ2_XXS": 32, "IQ2_XS": 16}[type_name]


@pytest.mark.parametrize("type_name", TYPES)
def test_where_ggml_aborts_d_is_inf_and_qviz_rescales(type_name):
    """An imatrix near FLT_MAX overflows the error weights: ggml asserts (aborts; not called here), qviz
    stores ``d = +inf`` (ABORTED_D) in both backends, and ``qviz.quantize`` retries with the imatrix over
    its maximum, which quantizes like a uniform imatrix of ones."""
    import qviz

    x = np.random.default_rng(3).standard_normal((2, QK_K)).astype(np.float32)
    im = np.full(QK_K, 3e38, np.float32)
    ref = _fn(REFERENCE, "quantize", type_name)(x, im)
    np.testing.assert_array_equal(_fn(KERNEL, "quantize", type_name)(x, im), ref)
    aborted = ref[:, :2].copy().view("<u2")[:, 0] == REFERENCE.ABORTED_D
    assert (~aborted | ~ref[:, 2:].any(axis=1)).all()  # an aborted block is d = inf and zeros
    r = qviz.quantize(x, type_name, imatrix=im)
    assert np.isfinite(r.dequantize()).all()
    ones = np.ones(QK_K, np.float32)
    if aborted.any():
        assert r.info.get("imatrix_rescaled")
        oracle.assert_blocks_equal(type_name, r.packed, oracle.quantize(type_name, x, ones))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc tunable")
def test_the_twins_scratch_outlives_the_row_work_on_its_views():
    # every allocation of 4 KiB or more gets its own mapping, unmapped when freed: the twin's scratch,
    # handed to the row's work as borrowed views, must not be freed before that work has run
    script = (
        "import numpy as np, qviz\n"
        "rng = np.random.default_rng(0)\n"
        "w = rng.standard_normal((16, 512)).astype(np.float32)\n"
        "im = rng.random(512).astype(np.float32) + 0.1\n"
        "for t in ('IQ2_XXS', 'IQ2_XS'):\n"
        "    print(t, qviz.quantize(w, t, imatrix=im).packed.tobytes().hex())\n")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "4096"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 512)).astype(np.float32)
    im = rng.random(512).astype(np.float32) + 0.1
    want = "".join(f"{t} {qviz.quantize(w, t, imatrix=im).packed.tobytes().hex()}\n" for t in ("IQ2_XXS", "IQ2_XS"))
    assert run.stdout == want

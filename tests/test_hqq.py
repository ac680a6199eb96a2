"""HQQ against the ``hqq`` package (``Quantizer.quantize(..., optimize=True)`` on CPU), and its numba twin.

The solver's every float32 operation is one of the package's, on tensors of the
same shapes (its torch ``pow`` and sums included), so codes, scales, zeros and
the decoded weight are compared exactly (``np.array_equal``), the iterations
run and the per-iteration errors too. The issue's bound, 1e-6 relative error of
hqq's dequantized weight, is then met with room to spare (the error is 0).
"""
from __future__ import annotations

import numpy as np
import pytest

import qviz
from qviz import registry
from qviz.io import demo

from edge_rows import edge_rows, mixed_groups

EDGE_CASES = ["normal", "outliers", "zero", "constant", "one_huge", "fp16_subnormal", "alternating",
              "all_negative", "tiny", "huge"]


def hqq_package(w: np.ndarray, bits: int, group_size: int | None, round_zero: bool):
    """The package's codes (n_rows, n_cols) uint8, scale and zero (n_groups,) float32 and decode."""
    torch = pytest.importorskip("torch")
    quantize = pytest.importorskip("hqq.core.quantize")
    w_q, meta = quantize.Quantizer.quantize(
        torch.from_numpy(w.copy()), nbits=bits, group_size=group_size, axis=1, optimize=True,
        round_zero=round_zero, bitpack=False, device="cpu")
    assert meta["scale"].dtype == torch.float32 and meta["zero"].dtype == torch.float32
    return (w_q.numpy().astype(np.uint8).reshape(w.shape), meta["scale"].numpy().ravel(),
            meta["zero"].numpy().ravel(), quantize.Quantizer.dequantize(w_q, meta).numpy())


def assert_matches_package(w: np.ndarray, bits: int = 4, group_size: int = 64, round_zero: bool | None = None,
                           backend: str = "numba"):
    rz = bits == 4 if round_zero is None else round_zero
    codes, scale, zero, decoded = hqq_package(w, bits, None if group_size == -1 else group_size, rz)
    r = qviz.quantize(w, "hqq", bits=bits, group_size=group_size, round_zero=round_zero, backend=backend)
    assert r.codes.dtype == np.uint8
    np.testing.assert_array_equal(r.codes, codes)
    np.testing.assert_array_equal(r.scales.ravel(), scale)
    np.testing.assert_array_equal(r.zeros.ravel(), zero)
    got = r.dequantize()
    np.testing.assert_array_equal(got, decoded)  # bit for bit: (code - zero) * scale in float32
    # the bound, far looser than what holds
    diff, scale = (np.linalg.norm(a.astype(np.float64)) for a in (got - decoded, decoded))
    assert diff <= 1e-6 * scale
    return r


MINILM = [n for n in demo.layers() if n.startswith("encoder.")]


def test_minilm_has_36_layers():
    assert len(MINILM) == 36


@pytest.mark.parametrize("bits", [4, 2])
@pytest.mark.parametrize("name", ["encoder.layer.0.attention.self.query", "encoder.layer.2.intermediate.dense",
                                  "encoder.layer.5.output.dense"])
def test_minilm_layers_equal_the_package(name, bits):
    assert_matches_package(demo.layer(name), bits)


@pytest.mark.slow
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("name", MINILM)
def test_all_minilm_layers_equal_the_package(name, bits):
    assert_matches_package(demo.layer(name), bits)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("group_size", [32, 64, 128, -1])
def test_random_rows_equal_the_package(bits, group_size):
    w = np.random.default_rng(bits * 1000 + group_size).standard_normal((48, 256)).astype(np.float32)
    assert_matches_package(w, bits, group_size)


@pytest.mark.parametrize("round_zero", [False, True])
@pytest.mark.parametrize("backend", ["numba", "reference"])
def test_both_backends_and_round_zero_equal_the_package(backend, round_zero):
    w = (np.random.default_rng(7).standard_normal((64, 192)) * 0.05).astype(np.float32)
    assert_matches_package(w, 3, 64, round_zero=round_zero, backend=backend)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("case", EDGE_CASES)
def test_edge_rows_equal_the_package(case, bits):
    w = edge_rows(case, 16, 128, np.random.default_rng(3))
    assert_matches_package(w, bits, 64)


@pytest.mark.parametrize("bits", [2, 4])
def test_mixed_groups_equal_the_package(bits):
    w = mixed_groups(64, 32, 256, np.random.default_rng(11))
    assert_matches_package(w, bits, 64)


def test_single_outlier_and_extremes_of_float32():
    w = np.zeros((4, 64), np.float32)
    w[0, 5] = 1.0  # one outlier in a zero row
    w[1] = np.float32(1e38) * np.linspace(-1, 1, 64, dtype=np.float32)  # a range near float32's max
    w[2] = np.float32(1.4e-45)  # constant subnormal
    w[3, ::2] = -np.float32(3e38)
    assert_matches_package(w, 4, 64)


# ----------------------------------------------------------------------------- twin = reference


SETTINGS = [dict(bits=4), dict(bits=2, iters=40, early_stop=False), dict(bits=3, kappa=1.01),
            dict(bits=1, lp_norm=1.0), dict(bits=8, beta=3.0, round_zero=True)]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("case", ["normal", "outliers", "zero", "constant", "tiny", "mixed"])
def test_numba_twin_equals_the_reference(case, settings):
    rng = np.random.default_rng(5)
    w = mixed_groups(64, 24, 256, rng) if case == "mixed" else edge_rows(case, 24, 256, rng)
    a = qviz.quantize(w, "hqq", backend="reference", **settings)
    b = qviz.quantize(w, "hqq", backend="numba", **settings)
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.scales, b.scales)
    np.testing.assert_array_equal(a.zeros, b.zeros)
    assert a.info["errors"] == b.info["errors"]
    if settings.get("early_stop") is False:
        assert len(a.info["errors"]) == settings["iters"]


def test_twin_is_deterministic():
    w = np.random.default_rng(0).standard_normal((256, 512)).astype(np.float32)
    a, b = (qviz.quantize(w, "hqq") for _ in range(2))
    np.testing.assert_array_equal(a.zeros, b.zeros)
    np.testing.assert_array_equal(a.codes, b.codes)


# ----------------------------------------------------------------------------- the result


def test_result_fields_storage_and_info():
    w = demo.layer("encoder.layer.1.attention.output.dense")
    r = qviz.quantize(w, "hqq", bits=4, group_size=64)
    n_rows, n_cols = w.shape
    assert (r.method, r.bits, r.group_size, r.shape) == ("hqq", 4, 64, w.shape)
    assert r.scales.shape == r.zeros.shape == (n_rows, n_cols // 64)
    assert set(r.stored) == {"scale", "zero"}
    assert all(a.dtype == np.float32 for a in r.stored.values())
    assert r.codes.max() <= 15
    # codes 4 bits; per group of 64: the stored float32 scale and zero (64 bits), nothing counted twice
    assert r.bits_per_weight == 4 + 64 / 64
    info = r.info
    assert info["iterations"] == len(info["errors"]) >= 2
    assert info["rtn_error"] == info["errors"][0]
    assert info["error"] < info["rtn_error"]  # the solver beats RTN's min-max grid on a real layer
    assert r.levels(0, 0).shape == (16,)


def test_rtn_error_is_the_unoptimised_package_result():
    torch = pytest.importorskip("torch")
    quantize = pytest.importorskip("hqq.core.quantize")
    w = np.random.default_rng(1).standard_normal((32, 128)).astype(np.float32)
    w_q, meta = quantize.Quantizer.quantize(torch.from_numpy(w.copy()), nbits=3, group_size=64, axis=1,
                                            optimize=False, bitpack=False, device="cpu")
    rtn = quantize.Quantizer.dequantize(w_q, meta).numpy()
    r = qviz.quantize(w, "hqq", bits=3)
    assert r.info["rtn_error"] == pytest.approx(float(np.abs(w - rtn).mean()), rel=1e-6)


def test_registration():
    m = registry.method("hqq")
    assert m.label == "HQQ" and not m.needs_calibration
    assert [o.name for o in m.controls] == ["bits", "group_size", "iters"]
    assert (m.option("bits").default, m.option("group_size").default, m.option("axis").default,
            m.option("iters").default) == (4, 64, 1, 20)
    assert registry.method("HQQ") is m


def test_callers_array_is_not_modified():
    w = np.random.default_rng(2).standard_normal((8, 128)).astype(np.float32)
    before = w.copy()
    qviz.quantize(w, "hqq")
    qviz.quantize(w, "hqq", backend="reference")
    np.testing.assert_array_equal(w, before)


# ----------------------------------------------------------------------------- refusals


def test_axis_0_is_refused_with_the_fix():
    w = np.ones((64, 64), np.float32)
    with pytest.raises(ValueError, match=r"axis=0: .*runs of consecutive input columns of one row.*pass axis=1"):
        qviz.quantize(w, "hqq", axis=0)
    with pytest.raises(ValueError, match=r"valid axis values: 0, 1"):
        qviz.quantize(w, "hqq", axis=2)


def test_group_size_must_divide_the_row():
    w = np.ones((4, 96), np.float32)
    with pytest.raises(ValueError, match=r"group_size=64 does not divide the rows of 96 columns.*such as 48"):
        qviz.quantize(w, "hqq", group_size=64)
    assert qviz.quantize(w, "hqq", group_size=-1).group_size == 96
    assert qviz.quantize(w, "hqq", group_size=500).group_size == 96  # capped at the row, as every method


def test_range_beyond_float32_is_named():
    w = np.zeros((2, 64), np.float32)
    w[1, 0], w[1, 1] = np.float32(3e38), np.float32(-3e38)
    with pytest.raises(ValueError, match=r"group 1 spans .* beyond float32's largest value.*rescale"):
        qviz.quantize(w, "hqq")


@pytest.mark.parametrize("bad,match", [
    (dict(bits=0), r"bits=0: choose an integer from 1 to 8"),
    (dict(iters=0), r"iters=0: choose an integer from 1"),
    (dict(lp_norm=1.5), r"lp_norm=1.5: choose a number from 0.1 to 1"),
    (dict(backend="torch"), r"valid backends: 'numba', 'reference'"),
])
def test_bad_options(bad, match):
    with pytest.raises(ValueError, match=match):
        qviz.quantize(np.ones((2, 64), np.float32), "hqq", **bad)

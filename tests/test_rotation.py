"""Randomized Hadamard rotations (qviz.rotation) and quantize(..., rotate="hadamard")."""
import numpy as np
import pytest
import scipy.linalg

import qviz
from qviz import summary
from qviz.rotation import fwht, hadamard, largest_block


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.mark.parametrize("n, block", [(8, None), (384, None), (384, 32), (576, None), (96, 2), (5, None)])
def test_rotation_is_signs_times_block_diagonal_sylvester_hadamard(n, block):
    r = hadamard(n, block, seed=3)
    b = largest_block(n) if block is None else block
    h = scipy.linalg.hadamard(b).astype(np.float64) / np.sqrt(b)  # an independent construction
    expected = np.diag(r.signs.astype(np.float64)) @ scipy.linalg.block_diag(*[h] * (n // b))
    np.testing.assert_allclose(r.matrix(), expected, atol=2e-7)
    assert r.block == b and set(np.unique(r.signs)) <= {-1.0, 1.0}


def test_numba_twin_is_bit_identical_and_restore_inverts(rng):
    x = rng.standard_normal((37, 1536)).astype(np.float32)
    x[3, 17] = 40.0  # an outlier column
    r = hadamard(1536, seed=11)
    before = x.copy()
    a = r.apply(x)
    np.testing.assert_array_equal(a, r.apply(x, backend="numpy"))
    np.testing.assert_array_equal(r.restore(a), r.restore(a, backend="numpy"))
    np.testing.assert_allclose(r.restore(a), x, atol=2e-5)
    np.testing.assert_array_equal(x, before)  # never modifies its input
    assert np.abs(a).max() < 0.3 * np.abs(x).max()  # the outlier is spread over its block
    np.testing.assert_array_equal(fwht(fwht(np.eye(4, dtype=np.float32), 4), 4), np.eye(4))


def test_same_seed_same_rotation_other_seed_other_signs():
    assert np.array_equal(hadamard(64, seed=1).signs, hadamard(64, seed=1).signs)
    assert not np.array_equal(hadamard(64, seed=1).signs, hadamard(64, seed=2).signs)


@pytest.mark.parametrize("method, opts", [("rtn", {"bits": 4, "group_size": 64}), ("Q4_0", {}), ("nf4", {}),
                                          ("kmeans", {"bits": 2})])
def test_rotated_result_decodes_to_the_layers_basis(rng, method, opts):
    w = rng.standard_normal((64, 256)).astype(np.float32)
    w[:, 5] *= 30  # an outlier input column
    r = qviz.quantize(w, method, rotate="hadamard", rotate_seed=4, **opts)
    R = hadamard(256, seed=4)
    plain = qviz.quantize(R.apply(w), method, **opts)
    np.testing.assert_array_equal(r.codes, plain.codes)  # the method saw W·R
    np.testing.assert_array_equal(r.dequantize(rotated=True), plain.dequantize())
    np.testing.assert_array_equal(r.dequantize(), R.restore(plain.dequantize()))
    np.testing.assert_array_equal(summary.decode_all(r), r.dequantize())  # the explorers' decoder agrees
    x = rng.standard_normal((16, 256)).astype(np.float32)
    # what the rotated model computes, (x·R)·Q(W·R)ᵀ, is x·Ŵᵀ
    np.testing.assert_allclose(R.apply(x) @ plain.dequantize().T, x @ r.dequantize().T, rtol=1e-4, atol=1e-3)
    assert r.storage_bits == plain.storage_bits + 256 and r.info["rotate"] == "hadamard"
    d = summary.group_detail(r, w, 3, 0)
    assert np.isin(d.w_hat, d.levels).all()  # shown in the basis the grid applies to
    np.testing.assert_allclose(d.w, R.apply(w)[3, d.columns], rtol=1e-6)


def test_calibration_is_rotated_with_the_weight(rng):
    w = rng.standard_normal((32, 128)).astype(np.float32)
    x = rng.standard_normal((200, 128)).astype(np.float32)
    R = hadamard(128, 32, seed=0)
    r = qviz.quantize(w, "gptq", calib=x, rotate="hadamard", rotate_block=32)
    plain = qviz.quantize(R.apply(w), "gptq", calib=R.apply(x))
    np.testing.assert_array_equal(r.codes, plain.codes)
    np.testing.assert_array_equal(r.scales, plain.scales)


def test_rotation_refuses_what_it_cannot_carry(rng):
    w = rng.standard_normal((8, 96)).astype(np.float32)
    with pytest.raises(ValueError, match="valid rotations: 'hadamard'"):
        qviz.quantize(w, "rtn", rotate="givens")
    with pytest.raises(ValueError, match="power of two dividing the 96 columns; choose one of 1, 2, 4, 8, 16, 32"):
        qviz.quantize(w, "rtn", group_size=32, rotate="hadamard", rotate_block=64)
    with pytest.raises(ValueError, match="pass rotate='hadamard' too"):
        qviz.quantize(w, "rtn", group_size=32, rotate_block=32)
    with pytest.raises(ValueError, match="importance of the rotated activations"):
        qviz.quantize(rng.standard_normal((8, 256)).astype(np.float32), "Q4_K", imatrix=np.ones(256),
                      rotate="hadamard")
    with pytest.raises(ValueError, match="hessian= is in the layer's own basis"):
        qviz.quantize(w, "gptq", group_size=32, hessian=np.eye(96), rotate="hadamard")
    with pytest.raises(TypeError, match="rotate_seed"):
        qviz.quantize(w, "rtn", group_size=32, rotate="hadamard", rotate_seed=1.5)


def test_quantlinear_refuses_a_rotated_result(rng):
    from qviz.models.qlinear import QuantLinear

    r = qviz.quantize(rng.standard_normal((8, 64)).astype(np.float32), "rtn", group_size=32, rotate="hadamard")
    with pytest.raises(ValueError, match="quantized after a rotation"):
        QuantLinear.from_result(r)


def test_an_importance_of_the_rotated_columns_goes_through_quantize_rotated(rng):
    from qviz.api import quantize_rotated

    w = rng.standard_normal((8, 256)).astype(np.float32)
    x = rng.standard_normal((64, 256)).astype(np.float32)
    R = hadamard(256, seed=2)
    im = qviz.imatrix(R.apply(x))
    r = quantize_rotated(w, "Q4_K", R, imatrix=im)
    np.testing.assert_array_equal(r.packed, qviz.quantize(R.apply(w), "Q4_K", imatrix=im).packed)
    assert r.rotation is R
    with pytest.raises(TypeError, match="qviz.rotation.Rotation"):
        quantize_rotated(w, "Q4_K", R.matrix())


@pytest.mark.parametrize("fmt", ["gptq", "awq", "compressed_tensors"])
def test_checkpoints_refuse_a_rotated_result(rng, tmp_path, fmt):
    from qviz.io import compressed_tensors, export

    writer = getattr(compressed_tensors if fmt == "compressed_tensors" else export, f"export_{fmt}")
    r = qviz.quantize(rng.standard_normal((16, 128)).astype(np.float32), "rtn", group_size=128, rotate="hadamard")
    with pytest.raises(ValueError, match="quantized after a rotation"):
        writer({"fc": r}, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()

"""Metrics against hand-computed values."""
import numpy as np
import pytest

from qviz import metrics


def test_weight_errors():
    w = np.array([[1.0, -2.0], [3.0, 0.0]], np.float32)
    w_hat = np.array([[1.5, -2.0], [3.0, 1.0]], np.float32)
    assert metrics.mse(w, w_hat) == pytest.approx((0.25 + 1.0) / 4)
    assert metrics.max_abs_error(w, w_hat) == 1.0
    assert metrics.sqnr_db(w, w_hat) == pytest.approx(10 * np.log10(14 / 1.25))
    assert metrics.sqnr_db(w, w) == float("inf")


def test_relative_output_error():
    w = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    w_hat = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    x = np.array([[1.0, 1.0], [2.0, 0.0]], np.float32)
    # W Xᵀ = [[1, 2], [2, 0]] -> 9; (W-Ŵ) Xᵀ = [[0, 0], [1, 0]] -> 1
    assert metrics.relative_output_error(w, w_hat, x) == pytest.approx(1 / 9)
    with pytest.raises(ValueError, match="3 columns but the weight has 2"):
        metrics.relative_output_error(w, w_hat, np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        metrics.mse(w, np.ones((3, 2), np.float32))


def test_model_memory_counts_scales():
    fp16 = metrics.model_memory(70e9, 16)
    assert fp16.total_bytes == pytest.approx(140e9)
    int4 = metrics.model_memory(70e9, 4 + 20 / 128, code_bits=4)
    assert int4.code_bytes == pytest.approx(35e9)
    assert int4.overhead_bytes == pytest.approx(70e9 * 20 / 128 / 8)
    with pytest.raises(ValueError):
        metrics.model_memory(0, 4)


def test_summary_of_a_result(minilm_layer, rng):
    import qviz

    r = qviz.quantize(minilm_layer, "rtn", bits=4)
    x = rng.standard_normal((32, 384)).astype(np.float32)
    s = metrics.summary(r, minilm_layer, x)
    assert s["bits_per_weight"] == r.bits_per_weight
    assert 15 < s["sqnr_db"] < 25 and 0 < s["relative_output_error"] < 0.1

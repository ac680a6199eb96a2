"""The numba summary kernels against the numpy definitions in qviz.summary."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import qviz
from qviz.kernels.numba import summary as kernel
from qviz import summary


def edge_values(edges):
    """Every edge, its float64 neighbours and its float32 roundings (with their neighbours)."""
    e32 = edges.astype(np.float32)
    below, above = np.float32(-np.inf), np.float32(np.inf)
    return np.concatenate([edges, np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf),
                           e32, np.nextafter(e32, below), np.nextafter(e32, above)])


def assert_counts_equal(values, edges):
    got = kernel.histogram_counts(values, edges)
    want = summary.histogram(values, edges).counts
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("n_bins", [1, 2, 7, 120, 1000])
@pytest.mark.parametrize("lo, hi", [(-2.0, 2.0), (0.013, 0.0131), (-1e-7, 3e-5), (1e3, 1e3 + 1e-9),
                                    (5.0, 5.0)])
def test_histogram_equals_numpy(rng, n_bins, lo, hi):
    edges = summary.uniform_edges(lo, hi, n_bins)
    span = edges[-1] - edges[0]
    v = rng.uniform(edges[0] - 0.3 * span, edges[-1] + 0.3 * span, 20_000)  # a third outside
    for values in (v, v.astype(np.float32), edge_values(edges), edge_values(edges).astype(np.float32)):
        assert_counts_equal(values, edges)


def test_histogram_of_a_layer_across_tasks(rng):
    w = (rng.standard_normal((300, 1000)) * 0.02).astype(np.float32)  # 300 000 values: 5 parallel tasks
    w[7, 9] = 1.0  # beyond the cut range: the last bin
    edges = summary.uniform_edges(*summary.histogram_range(w))
    assert_counts_equal(w, edges)
    np.testing.assert_array_equal(kernel.histogram_counts(w, edges), kernel.histogram_counts(w, edges))


def test_histogram_special_values():
    edges = summary.uniform_edges(-1.0, 1.0, 4)
    v = np.array([np.nan, np.inf, -np.inf, 1.0, -1.0, 0.0, -0.0], np.float32)
    assert_counts_equal(v, edges)  # nan is left out, ±inf land in the end bins
    assert kernel.histogram_counts(v, edges).tolist() == [2, 0, 2, 2]
    assert kernel.histogram_counts(np.zeros(0, np.float32), edges).tolist() == [0, 0, 0, 0]


def test_bad_edges_raise():
    with pytest.raises(ValueError, match="ascend"):
        kernel.histogram_counts(np.zeros(3, np.float32), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="ascend"):
        kernel.histogram_counts(np.zeros(3, np.float32), np.array([1.0]))


def test_numpys_linspace_is_the_kernels_formula(rng):
    # the kernel computes edge i as i * step + first; uniform_bins raises if numpy ever differs
    for lo, hi in rng.standard_normal((200, 2)) * 10.0 ** rng.integers(-8, 4, (200, 1)):
        kernel.uniform_bins(summary.uniform_edges(min(lo, hi), max(lo, hi), int(rng.integers(1, 500))))


@given(values=arrays(np.float32, st.integers(0, 300),
                     elements=st.floats(-10, 10, width=32, allow_subnormal=True)),
       lo=st.floats(-5, 5), width=st.floats(1e-6, 10), n_bins=st.integers(1, 200))
def test_histogram_property(values, lo, width, n_bins):
    edges = summary.uniform_edges(lo, lo + width, n_bins)
    assert_counts_equal(np.concatenate([values, edge_values(edges).astype(np.float32)]), edges)


def reference_pass(w, dq, result, edges):
    err = w - dq
    return (summary.histogram(dq, edges).counts, float(np.square(err, dtype=np.float64).sum()),
            float(np.abs(err).max()), summary.group_mean_abs_error(np.abs(err), result), err)


@pytest.mark.parametrize("options", [dict(bits=4, group_size=128), dict(bits=3, group_size=100),
                                     dict(bits=2, group_size=-1), dict(bits=8, group_size=1),
                                     dict(bits=4, per_tensor=True)])
def test_error_pass_equals_numpy(rng, options):
    w = (rng.standard_normal((40, 576)) * 0.05).astype(np.float32)  # 576 = 5·100 + 76: a short last group
    r = qviz.quantize(w, "rtn", **options)
    dq = r.dequantize()
    edges = summary.uniform_edges(*summary.histogram_range(w))
    err = np.empty_like(w)
    group_error = np.empty((40, r.n_groups), np.float32)
    counts, sum_sq, max_abs = kernel.error_pass(w, dq, r.group_size, edges, err, group_error)
    want_counts, want_sq, want_max, want_groups, want_err = reference_pass(w, dq, r, edges)
    np.testing.assert_array_equal(err, want_err)  # one float32 subtraction: exact
    np.testing.assert_array_equal(counts, want_counts)
    assert max_abs == want_max
    assert sum_sq == pytest.approx(want_sq, rel=1e-6)  # float64 sums in another order
    # float64 sums against numpy's float32 ones (reduceat adds ≤ 576 values in order: ≤ 576·2⁻²⁴)
    np.testing.assert_allclose(group_error, want_groups, rtol=1e-5)
    # in place: the decoding becomes the error
    in_place = dq.copy()
    again = kernel.error_pass(w, in_place, r.group_size, edges, in_place, np.empty_like(group_error))
    np.testing.assert_array_equal(in_place, want_err)
    np.testing.assert_array_equal(again[0], counts)
    assert again[1:] == (sum_sq, max_abs)  # deterministic


def test_error_pass_skips_nan_in_the_max():
    w = np.zeros((2, 8), np.float32)
    dq = np.full((2, 8), 0.5, np.float32)
    dq[1, 3] = np.nan
    edges = summary.uniform_edges(-1.0, 1.0, 4)
    err = np.empty_like(w)
    group_error = np.empty((2, 2), np.float32)
    counts, sum_sq, max_abs = kernel.error_pass(w, dq, 4, edges, err, group_error)
    assert max_abs == 0.5 and np.isnan(sum_sq) and counts.tolist() == [0, 0, 0, 15]
    assert np.isnan(group_error[1, 0]) and group_error[0].tolist() == [0.5, 0.5]


def test_sum_squares(rng):
    a = rng.standard_normal((33, 70)).astype(np.float32)
    assert kernel.sum_squares(a) == pytest.approx(float(np.sum(a.astype(np.float64) ** 2)), rel=1e-12)


@pytest.mark.parametrize("method, options", [("rtn", dict(bits=4, group_size=100)), ("rtn", dict(sym=True)),
                                             ("rtn", dict(per_tensor=True)), ("Q4_K", {}), ("nf4", {})])
def test_summarize_equals_the_numpy_definitions(rng, method, options):
    w = (rng.standard_normal((24, 512)) * 0.05).astype(np.float32)
    r = qviz.quantize(w, method, **options)
    stats = summary.weight_stats(w)
    s = summary.summarize(r, w, stats)
    counts, sum_sq, max_abs, groups, err = reference_pass(w, r.dequantize(), r, stats.hist.edges)
    np.testing.assert_array_equal(s.dequant_hist.counts, counts)
    np.testing.assert_array_equal(s.error_hist.counts, summary.histogram(err, s.error_hist.edges).counts)
    assert s.metrics["max_abs_error"] == max_abs
    assert s.metrics["mse"] == pytest.approx(sum_sq / w.size, rel=1e-6)
    np.testing.assert_allclose(s.group_error, groups, rtol=1e-5)
    np.testing.assert_array_equal(stats.hist.counts, summary.histogram(w, stats.hist.edges).counts)
    np.testing.assert_array_equal(summary.decode_all(r).view(np.uint32), r.dequantize().view(np.uint32))


@pytest.mark.parametrize("method, options", [("nf4", {}), ("fp4", {"double_quant": True}), ("fp8", {}),
                                             ("fp8", {"granularity": "tensor"}), ("mxfp4", {}), ("nvfp4", {}),
                                             ("hqq", {"group_size": 64})])
def test_numba_decoders_of_the_tensor_formats_are_bit_exact(rng, method, options):
    w = (rng.standard_normal((256, 512)) * 0.05).astype(np.float32)  # above summary.FEW: the kernels run
    r = qviz.quantize(w, method, **options)
    np.testing.assert_array_equal(summary.decode_all(r).view(np.uint32), r.dequantize().view(np.uint32))
    rot = qviz.quantize(w, method, rotate="hadamard", **options)
    np.testing.assert_array_equal(summary.decode_all(rot), rot.dequantize())


def test_summarize_into_a_reused_scratch_buffer(rng):
    from qviz.kernels.numba.buffers import float_output

    w = (rng.standard_normal((64, 1024)) * 0.02).astype(np.float32)
    stats = summary.weight_stats(w)
    scratch = np.full(w.shape, np.nan, np.float32)
    for method in ("Q4_K", "Q8_0", "rtn", "nf4"):  # GGUF kernels, the affine kernel, numpy
        r = qviz.quantize(w, method)
        want = summary.summarize(r, w, stats)
        got = summary.summarize(r, w, stats, scratch)
        np.testing.assert_array_equal(got.dequant_hist.counts, want.dequant_hist.counts)
        np.testing.assert_array_equal(got.error_hist.counts, want.error_hist.counts)
        np.testing.assert_array_equal(got.group_error, want.group_error)
        assert got.metrics == want.metrics
        np.testing.assert_array_equal(scratch, w - r.dequantize())  # it holds W − Ŵ
    with pytest.raises(ValueError, match="C-contiguous float32 array of shape"):
        summary.summarize(qviz.quantize(w, "Q8_0"), w, stats, scratch[:, :512])
    with pytest.raises(ValueError, match="float32"):
        float_output((2, 2), np.zeros((2, 2), np.float64))

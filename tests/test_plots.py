"""qviz.plots: the numbers behind the figures (against naive numpy) and the figures' traces."""
import numpy as np
import pytest

import qviz
from qviz.plots import compare as compare_plots
from qviz.plots import layer as layer_plots
from qviz import summary


@pytest.fixture(scope="module")
def w():
    """A real weight whose rows fit the K-quants: MiniLM encoder.layer.0.output.dense, (384, 1536)."""
    return qviz.demo.layer("encoder.layer.0.output.dense")


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(7).standard_normal((48, 1536)).astype(np.float32)


@pytest.fixture(scope="module")
def stats(w, x):
    return summary.weight_stats(w, x)


@pytest.fixture(scope="module")
def q4k(w, stats):
    return summary.summarize(qviz.quantize(w, "Q4_K"), w, stats)


def test_histogram_is_numpys_with_outliers_in_the_end_bins(rng):
    v = rng.standard_normal(10_000).astype(np.float32)
    edges = summary.uniform_edges(-2.0, 2.0, 40)
    h = summary.histogram(v, edges)
    want, _ = np.histogram(np.clip(v, -2.0, 2.0), edges)  # the oracle: numpy on clipped values
    np.testing.assert_array_equal(h.counts, want)
    assert h.counts.sum() == v.size and h.width == pytest.approx(0.1)
    np.testing.assert_allclose(h.centers, np.linspace(-1.95, 1.95, 40))
    # a constant array still gets bins (widened to ±0.5)
    assert summary.uniform_edges(3.0, 3.0, 4).tolist() == [2.5, 2.75, 3.0, 3.25, 3.5]


def test_weight_histogram_range_cuts_rare_outliers(rng):
    w = rng.standard_normal((64, 512)).astype(np.float32)
    w[3, 7] = 1000.0  # one outlier must not squeeze the bulk into one bin
    st = summary.weight_stats(w)
    lo, hi = st.hist.edges[0], st.hist.edges[-1]
    assert hi < 10 and lo > -10 and st.hist.counts.sum() == w.size and st.hist.counts[-1] >= 1
    assert st.sum_sq == pytest.approx(float(np.sum(w.astype(np.float64) ** 2)), rel=1e-12)
    small = np.array([[0.0, 1.0, 2.0, 3.0]], np.float32)  # no outliers: the full range
    assert summary.histogram_range(small) == (0.0, 3.0)


@pytest.mark.parametrize("method, options", [("rtn", dict(bits=3, group_size=100)), ("Q4_K", {}),
                                             ("Q6_K", {}), ("IQ4_NL", {})])
def test_summary_matches_metrics_and_decoding(w, x, stats, method, options):
    r = qviz.quantize(w, method, **options)
    s = summary.summarize(r, w, stats)
    want = qviz.metrics.summary(r, w, x)
    assert s.metrics["bits_per_weight"] == want["bits_per_weight"]
    for key in ("mse", "sqnr_db", "max_abs_error"):
        # W − Ŵ is rounded to float32 once (metrics subtracts in float64): ≤ 2^-23 relative
        assert s.metrics[key] == pytest.approx(want[key], rel=2 ** -23), key
    # X·Eᵀ as float32 products on the QR-reduced activations (metrics: float64): ~1e-6 relative
    assert s.metrics["relative_output_error"] == pytest.approx(want["relative_output_error"], rel=1e-4)
    w_hat = r.dequantize()
    np.testing.assert_array_equal(s.dequant_hist.counts, summary.histogram(w_hat, stats.hist.edges).counts)
    err = w - w_hat
    np.testing.assert_array_equal(s.error_hist.counts, summary.histogram(err, s.error_hist.edges).counts)
    assert s.error_hist.edges[-1] == pytest.approx(float(np.abs(err).max()))
    # per-group mean |error| against a plain loop over the groups
    g = r.group_size
    naive = np.array([[np.abs(err[i, j:j + g]).mean() for j in range(0, w.shape[1], g)]
                      for i in range(w.shape[0])])
    np.testing.assert_allclose(s.group_error, naive, rtol=1e-5)  # float32 means of ≤ 256 values
    assert s.group_error[s.worst_group] == s.group_error.max()


def test_decode_rows_is_dequantize(w):
    for r in (qviz.quantize(w, "Q5_K"), qviz.quantize(w, "Q8_0"), qviz.quantize(w, "rtn", per_tensor=True),
              qviz.quantize(w, "nf4")):
        for start, stop in ((5, 17), (0, 64)):  # a few rows (numpy), more (the kernels)
            got = summary.decode_rows(r, start, stop)
            np.testing.assert_array_equal(got.view(np.uint32), r.dequantize()[start:stop].view(np.uint32))


def test_act_order_groups_follow_g_idx(w, x):
    r = qviz.quantize(w[:32], "gptq", bits=4, group_size=128, act_order=True, calib=x)
    assert r.g_idx is not None
    s = summary.summarize(r, w[:32])
    err = np.abs(w[:32] - r.dequantize())
    for group in (0, 5, 11):
        cols = summary.group_columns(r, group)
        np.testing.assert_array_equal(cols, np.flatnonzero(r.g_idx == group))
        assert s.group_error[3, group] == pytest.approx(err[3, cols].mean(), rel=1e-5)


def test_pool_against_a_loop(rng):
    grid = rng.random((600, 37)).astype(np.float32)
    p = summary.pool(grid, "max", max_cells=256)
    assert p.block == (3, 1) and p.values.shape == (200, 37)
    np.testing.assert_array_equal(p.values[10, 4], grid[30:33, 4].max())
    p = summary.pool(grid, "mean", max_cells=16)  # blocks 38 × 3, the last ones partial
    assert p.block == (38, 3) and p.values.shape == (16, 13)
    assert p.values[15, 12] == pytest.approx(grid[570:, 36:].mean(), rel=1e-6)
    assert p.row_starts[1] == 38 and p.col_starts[-1] == 36
    np.testing.assert_array_equal(summary.pool(grid[:5, :5]).values, grid[:5, :5])
    assert summary.worst_in_block(grid, 38, 3, (38, 3)) == \
        tuple(np.add(np.unravel_index(grid[38:76, 3:6].argmax(), (38, 3)), (38, 3)))
    with pytest.raises(ValueError, match="'max' or 'mean'"):
        summary.pool(grid, "median")
    with pytest.raises(IndexError, match="no group"):
        summary.worst_in_block(grid, 600, 0, (1, 1))


def test_summarize_refuses_a_weight_of_another_shape(w, q4k):
    with pytest.raises(ValueError, match=r"\(384, 1536\)"):
        summary.summarize(q4k.result, w[:10])


def test_weight_histogram_traces(q4k):
    fig = layer_plots.weight_histogram(q4k, 7, 3)
    weights, dequantized, levels = fig.data
    np.testing.assert_array_equal(weights.y, q4k.weight_hist.counts)
    np.testing.assert_allclose(weights.x, q4k.weight_hist.centers)
    np.testing.assert_array_equal(dequantized.y, q4k.dequant_hist.counts)
    want = q4k.result.levels(7, 3).astype(np.float64)
    np.testing.assert_array_equal(np.array(levels.x[::3], float), want)  # one vertical line per level
    assert len(levels.x) == 3 * 16 and np.isnan(levels.x[2])  # a gap between lines
    assert fig.layout.yaxis.type == "log" and "weight value" in fig.layout.xaxis.title.text


def test_heatmaps_pool_the_parameters_and_errors(q4k):
    fig = layer_plots.scale_heatmap(q4k)
    scale, mins = fig.data
    np.testing.assert_allclose(scale.z, summary.pool(q4k.result.scales, "mean").values)
    np.testing.assert_allclose(mins.z, summary.pool(q4k.result.mins, "mean").values)
    assert "min" in fig.layout.annotations[1].text
    em = layer_plots.error_map(q4k, (2, 9))
    np.testing.assert_allclose(em.data[0].z, summary.pool(q4k.group_error, "max").values)
    assert em.data[1].x == (9,) and em.data[1].y == (2,)
    assert em.layout.yaxis.autorange == "reversed"


def test_symmetric_format_has_no_zero_grid(w, stats):
    s = summary.summarize(qviz.quantize(w, "Q8_0"), w, stats)
    fig = layer_plots.scale_heatmap(s)
    assert len(fig.data) == 2 and np.isnan(np.asarray(fig.data[1].z, float)).all()
    assert "symmetric" in fig.layout.annotations[1].text


def test_group_detail_draws_every_weight_and_its_error(w, q4k):
    fig = layer_plots.group_detail(summary.group_detail(q4k.result, w, 11, 40))
    levels, error, w_trace, w_hat = fig.data
    cols = np.arange(40 * 32, 41 * 32)
    np.testing.assert_array_equal(w_trace.x, cols)
    np.testing.assert_array_equal(w_trace.y, w[11, cols])
    np.testing.assert_array_equal(w_hat.y, q4k.result.dequantize()[11, cols])
    np.testing.assert_allclose(w_trace.customdata, w[11, cols] - w_hat.y)
    np.testing.assert_array_equal(np.array(levels.y[::3], float), q4k.result.levels(11, 40))
    np.testing.assert_array_equal(error.x[:3], [cols[0], cols[0], np.nan])  # w → ŵ, then a gap
    np.testing.assert_array_equal(error.y[:2], [w[11, cols[0]], w_hat.y[0]])


def test_error_histogram_and_metrics_panel(q4k):
    fig = layer_plots.error_histogram(q4k)
    np.testing.assert_array_equal(fig.data[0].y, q4k.error_hist.counts)
    panel = layer_plots.metrics_html(q4k, "test activations", note="a note")
    assert "4.5 bits per weight" in panel and "test activations" in panel and "a note" in panel
    gb7 = qviz.metrics.model_memory(7e9, 4.5).total_bytes / 1e9
    assert f"{gb7:.1f} GB" in panel and "39.4 GB" in panel  # 70e9 · 4.5 / 8


def test_pareto_front_against_brute_force(rng):
    b = rng.integers(2, 9, 40).astype(float)
    e = rng.random(40)
    front = set(compare_plots.pareto_front(b, e).tolist())
    for i in range(40):
        dominated = any(b[j] <= b[i] and e[j] <= e[i] and (b[j] < b[i] or e[j] < e[i]) for j in range(40))
        assert (i in front) == (not dominated)
    with pytest.raises(ValueError, match="one length"):
        compare_plots.pareto_front([1, 2], [1])


def test_pareto_figure_and_table():
    fig = compare_plots.pareto_figure(["a", "b", "c"], [4.5, 8.5, 4.5], [1e-3, 1e-5, 2e-3], "MSE")
    points, front = fig.data
    assert points.text == ("a", "b", "c") and list(points.x) == [4.5, 8.5, 4.5]
    assert list(front.x) == [4.5, 8.5] and list(front.y) == [1e-3, 1e-5]
    assert fig.layout.yaxis.type == "log"
    table = compare_plots.table_html(["a", "b"], [{"mse": 0.5}, "ValueError: bad <bits>"], {"mse": "MSE"})
    assert table.count("<tr>") == 3 and "0.5" in table and "bad &lt;bits&gt;" in table


def test_many_levels_draw_what_the_group_uses(w, stats):
    s = summary.summarize(qviz.quantize(w, "Q8_0"), w, stats)
    fig = layer_plots.group_detail(summary.group_detail(s.result, w, 3, 2))
    used = np.unique(s.result.dequantize()[3, 64:96])
    np.testing.assert_array_equal(np.array(fig.data[0].y[::3], float), used)
    assert "256 levels" in fig.layout.title.text
    rug = layer_plots.weight_histogram(s, 3, 2).data[2]
    assert max(y for y in rug.y if y is not None) == 3.0  # a rug, not lines ...
    inside = s.result.levels(3, 2)
    inside = inside[(inside >= stats.hist.edges[0]) & (inside <= stats.hist.edges[-1])]
    np.testing.assert_array_equal(np.array(rug.x[::3], float), inside)  # ... of the levels in the bins

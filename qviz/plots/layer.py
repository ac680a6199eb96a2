"""Figures of one quantized layer: pure functions, decoded numbers -> plotly Figure.

Every function here draws from a :class:`~qviz.summary.LayerSummary`
(bins, per-group errors, metrics; never raw points) or, for one group, a
:class:`~qviz.summary.GroupDetail` (its weights, decoded weights and levels).
Nothing here decodes. Each returns a new
``go.Figure`` whose traces are the same in number and kind for every
setting (a trace's index means the same thing in every drawing).

Colours are Okabe–Ito (colour-blind safe), heatmaps viridis / cividis.

>>> import qviz
>>> from qviz import summary
>>> from qviz.plots import layer
>>> w = qviz.demo.layer("encoder.layer.0.output.dense")
>>> s = summary.summarize(qviz.quantize(w, "Q4_K"), w)
>>> fig = layer.weight_histogram(s, *s.worst_group)
>>> [t.name for t in fig.data]
['weights', 'dequantized', 'levels']
"""
from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from qviz.metrics import model_memory
from qviz.summary import GroupDetail, LayerSummary, pool

#: Okabe & Ito (2008), "Color Universal Design": safe for the common colour-vision deficiencies.
OKABE_ITO = {
    "black": "#000000", "orange": "#E69F00", "sky_blue": "#56B4E9", "green": "#009E73",
    "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7",
}
HEIGHT = 330
#: a fixed width, so that two figures fit side by side in a notebook's output area
WIDTH = 470
#: the plotly template widgets and reports apply once (figures leave it unset: setting it costs ~10 ms)
TEMPLATE = "plotly_white"
#: the layout every figure of a layer shares (size, margins, legend on top)
LAYOUT = dict(height=HEIGHT, width=WIDTH, margin=dict(l=60, r=20, t=60, b=50),
               legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0))
#: more levels than this are drawn as a rug, not as lines across the histogram
MANY_LEVELS = 32
#: the models whose size the metrics panel quotes, in parameters
MODEL_SIZES = {"7B": 7e9, "70B": 70e9}


def _segments(a0, a1, b0, b1) -> tuple[np.ndarray, np.ndarray]:
    """Segments (a0[i], b0[i]) → (a1[i], b1[i]) as one line trace's x, y (NaN between segments).

    Each argument is an array or a scalar (broadcast); float64 (3·n,) each.
    """
    a0, a1, b0, b1 = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (a0, a1, b0, b1)))
    x = np.full((a0.size, 3), np.nan)
    y = np.full((a0.size, 3), np.nan)
    x[:, 0], x[:, 1], y[:, 0], y[:, 1] = a0.ravel(), a1.ravel(), b0.ravel(), b1.ravel()
    return x.ravel(), y.ravel()


def _vlines(xs: np.ndarray, y0: float, y1: float) -> tuple[np.ndarray, np.ndarray]:
    """x, y of vertical segments at ``xs`` from y0 to y1, NaN-separated."""
    return _segments(xs, xs, y0, y1)


def weight_histogram(s: LayerSummary, row: int, group: int) -> go.Figure:
    """Histogram of the weights and of the dequantized weights, with one group's levels.

    Parameters
    ----------
    s : LayerSummary
    row, group : int
        The group whose grid (``result.levels(row, group)``) is drawn.

    Returns
    -------
    go.Figure
        Traces: ``weights`` (bars: counts per bin), ``dequantized`` (bars, same
        bins), ``levels`` (vertical lines; ``x[::3]`` are the levels; beyond
        MANY_LEVELS a short rug of those inside the bins). Log counts.
    """
    levels = s.result.levels(row, group)
    top = float(max(s.weight_hist.counts.max(), s.dequant_hist.counts.max(), 1)) * 1.5
    # up to MANY_LEVELS levels span the plot; more (Q8_0's 256) are a rug along the bottom,
    # within the bins (an outlier group's wide grid would squeeze the histogram)
    if len(levels) <= MANY_LEVELS:
        lx, ly = _vlines(levels, 0.8, top)
    else:
        edges = s.weight_hist.edges
        lx, ly = _vlines(levels[(levels >= edges[0]) & (levels <= edges[-1])], 0.8, 3.0)
    bars = dict(width=s.weight_hist.width, hovertemplate="%{x:.4g}: %{y} weights<extra></extra>")
    fig = go.Figure([
        go.Bar(name="weights", x=s.weight_hist.centers, y=s.weight_hist.counts,
               marker_color=OKABE_ITO["sky_blue"], **bars),
        go.Bar(name="dequantized", x=s.dequant_hist.centers, y=s.dequant_hist.counts,
               marker_color=OKABE_ITO["vermillion"], opacity=0.6, **bars),
        go.Scatter(name="levels", x=lx, y=ly, mode="lines", hoverinfo="x", opacity=0.7,
                   line=dict(color=OKABE_ITO["black"], width=1,
                             dash="dot" if len(levels) <= MANY_LEVELS else "solid")),
    ])
    n_bins = len(s.weight_hist.counts)
    lo, hi = s.weight_hist.edges[0], s.weight_hist.edges[-1]
    fig.update_layout(
        **LAYOUT, barmode="overlay", bargap=0,
        title=(f"{'Rotated weights W·R' if s.result.rotation is not None else 'Weights'}, "
               f"{n_bins} bins on [{lo:.3g}, {hi:.3g}]"
               f"<br><sup>{len(levels)} levels of row {row}, group {group}</sup>"),
        xaxis_title="weight value", yaxis=dict(title="weights per bin (count, log)", type="log"))
    return fig


def _param_grid(s: LayerSummary) -> tuple[np.ndarray | None, str]:
    """The second heatmap: zero points, mins, or nothing (and its title)."""
    r = s.result
    if r.zeros is not None:
        return r.zeros, "zero point (code units)"
    if r.mins is not None:
        return r.mins, "min (weight units)"
    if r.codebook is not None:
        return None, "no zero/min: codebook levels"
    return None, f"no zero/min: symmetric, zero at 2^{r.bits - 1}"


def _heatmap(grid: np.ndarray, how: str, colorscale: str, colorbar_x: float, name: str,
             unit: str, n_rows: int, n_groups: int) -> tuple[go.Heatmap, str]:
    grid = np.broadcast_to(grid, (n_rows, n_groups))  # per-tensor parameters
    p = pool(grid, how)
    pooled = p.block != (1, 1)
    note = f"{how} of {p.block[0]}×{p.block[1]} blocks" if pooled else ""
    return go.Heatmap(
        name=name, z=p.values, x=p.col_starts, y=p.row_starts, colorscale=colorscale,
        colorbar=dict(title=unit, x=colorbar_x, len=0.9),
        hovertemplate=f"row %{{y}}, group %{{x}}<br>{name}: %{{z:.4g}}<extra></extra>"), note


def scale_heatmap(s: LayerSummary) -> go.Figure:
    """Per-group scale and zero point (or min), rows × groups, pooled to ≤ 256 × 256.

    Returns
    -------
    go.Figure
        Two heatmaps: ``scale`` (mean-pooled) and ``zero/min`` (mean-pooled;
        empty for symmetric and codebook formats). ``x`` is the first group and
        ``y`` the first row of each cell.
    """
    r = s.result
    n_rows, n_groups = s.group_error.shape
    second, second_title = _param_grid(s)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.22,
                        subplot_titles=("scale (weight units per code)", second_title))
    scale, note = _heatmap(r.scales, "mean", "Viridis", 0.395, "scale", "scale", n_rows, n_groups)
    fig.add_trace(scale, 1, 1)
    if second is None:
        fig.add_trace(go.Heatmap(name="zero/min", z=[[np.nan]], x=[0], y=[0], showscale=False,
                                 colorscale="Viridis", hoverinfo="skip"), 1, 2)
    else:
        zm, _ = _heatmap(second, "mean", "Viridis", 1.0, "zero/min", "zero/min", n_rows, n_groups)
        fig.add_trace(zm, 1, 2)
    # one line: the subplot titles sit where a second line would
    fig.update_layout(**LAYOUT, title=f"Per-group parameters of {r.method}" + (f", {note}" if note else ""))
    fig.update_xaxes(title_text=f"group ({r.group_size} columns)")
    fig.update_yaxes(autorange="reversed")
    fig.update_yaxes(title_text="output row", row=1, col=1)
    fig.update_yaxes(showticklabels=False, row=1, col=2)  # the same rows; room for the colour bar
    return fig


def error_map(s: LayerSummary, selected: tuple[int, int] | None = None) -> go.Figure:
    """Mean |W − Ŵ| of every group, rows × groups, max-pooled to ≤ 256 × 256.

    Parameters
    ----------
    s : LayerSummary
    selected : (row, group), optional
        Marked with a ring.

    Returns
    -------
    go.Figure
        Traces: ``mean |error|`` (heatmap; ``x`` first group, ``y`` first row of
        each cell) and ``selected`` (one marker, or none).
    """
    n_rows, n_groups = s.group_error.shape
    heat, note = _heatmap(s.group_error, "max", "Cividis", 1.0, "mean |error|",
                          "|W − Ŵ|", n_rows, n_groups)
    sx, sy = ([selected[1]], [selected[0]]) if selected is not None else ([], [])
    fig = go.Figure([heat, go.Scatter(
        name="selected", x=sx, y=sy, mode="markers", hoverinfo="skip", showlegend=False,
        marker=dict(symbol="circle-open", size=14, color=OKABE_ITO["vermillion"], line_width=3))])
    fig.update_layout(**LAYOUT, title=f"Mean |W − Ŵ| per group<br><sup>{note + '; ' if note else ''}"
                                       "click a cell</sup>",
                      xaxis_title=f"group ({s.result.group_size} columns)",
                      yaxis=dict(title="output row", autorange="reversed"))
    return fig


def error_histogram(s: LayerSummary) -> go.Figure:
    """Histogram of the rounding errors W − Ŵ.

    Returns
    -------
    go.Figure
        One bar trace ``W − Ŵ``: counts in the summary's error bins. Log counts.
    """
    h = s.error_hist
    fig = go.Figure([go.Bar(name="W − Ŵ", x=h.centers, y=h.counts, width=h.width,
                            marker_color=OKABE_ITO["blue"],
                            hovertemplate="%{x:.3g}: %{y} weights<extra></extra>")])
    fig.update_layout(**LAYOUT, bargap=0, title="Rounding error of every weight",
                      xaxis_title="W − Ŵ (weight units)",
                      yaxis=dict(title="weights per bin (count, log)", type="log"))
    return fig


def group_detail(d: GroupDetail) -> go.Figure:
    """One group's weights against its levels, each weight's rounding error drawn.

    Parameters
    ----------
    d : GroupDetail
        The group's levels, columns, weights and decoded weights
        (:func:`qviz.summary.group_detail`).

    Returns
    -------
    go.Figure
        Traces: ``levels`` (horizontal lines, ``y[::3]`` the levels; with more
        than MANY_LEVELS levels only those the group uses), ``error`` (vertical
        segments from w to ŵ), ``w`` and ``ŵ`` (markers at the columns).
    """
    levels, cols, w_g, dq_g = d.levels, d.columns, d.w, d.w_hat
    drawn = levels if len(levels) <= MANY_LEVELS else np.unique(dq_g)
    x0, x1 = float(cols[0]) - 0.5, float(cols[-1]) + 0.5
    lx, ly = _segments(x0, x1, drawn, drawn)  # horizontal lines at the levels
    ex, ey = _segments(cols, cols, w_g, dq_g)  # from each weight to its level
    err = w_g - dq_g
    fig = go.Figure([
        go.Scatter(name="levels", x=lx, y=ly, mode="lines", hoverinfo="y",
                   line=dict(color="#BBBBBB", width=1)),
        go.Scatter(name="error", x=ex, y=ey, mode="lines", hoverinfo="skip",
                   line=dict(color=OKABE_ITO["vermillion"], width=2)),
        go.Scatter(name="w", x=cols, y=w_g, mode="markers", customdata=err,
                   marker=dict(color=OKABE_ITO["blue"], size=7),
                   hovertemplate="column %{x}<br>w = %{y:.5g}<br>w − ŵ = %{customdata:.3g}<extra></extra>"),
        go.Scatter(name="ŵ", x=cols, y=dq_g, mode="markers", hoverinfo="skip",
                   marker=dict(color=OKABE_ITO["vermillion"], size=7, symbol="diamond")),
    ])
    runs = ""
    if d.lattice is not None:
        fig.add_traces(_lattice_traces(d))
        k, dims = d.lattice.values.shape
        runs = f"{k} grid points of the {d.lattice.lattice} lattice, {dims} weights each; "
    fig.update_layout(
        **LAYOUT,
        title=(f"Row {d.row}, group {d.group}: {len(cols)} weights, {len(levels)} levels"
               f"<br><sup>{runs}{'' if drawn is levels else f'{len(drawn)} used drawn; '}"
               f"mean |w − ŵ| = {float(np.abs(err).mean()):.3g}</sup>"),
        xaxis_title="input column", yaxis_title="weight value")
    return fig


def _lattice_traces(d: GroupDetail) -> list[go.Scatter]:
    """Run boundaries and each run's grid point number (lattice types: IQ1/IQ2/IQ3)."""
    lat = d.lattice
    k, dims = lat.values.shape
    cols = d.columns
    top = float(max(np.abs(d.w).max(), np.abs(d.w_hat).max())) * 1.1 or 1.0
    edges = cols[0] - 0.5 + dims * np.arange(1, k, dtype=np.float64)
    bx, by = _segments(edges, edges, np.full(k - 1, -top), np.full(k - 1, top))
    centers = cols[0] - 0.5 + dims * (np.arange(k) + 0.5)
    signs = np.where(lat.negative.reshape(k, dims), "−", "+")
    hover = [f"grid point #{n}: ({', '.join(map(str, v.tolist()))})<br>signs {''.join(sg)}"
             for n, v, sg in zip(lat.numbers.tolist(), lat.values, signs)]
    return [go.Scatter(name="runs", x=bx, y=by, mode="lines", hoverinfo="skip", showlegend=False,
                       line=dict(color="#888888", width=1, dash="dot")),
            go.Scatter(name="grid point", x=centers, y=np.full(k, top), mode="text",
                       text=[f"#{n}" for n in lat.numbers.tolist()], customdata=hover,
                       hovertemplate="%{customdata}<extra></extra>",
                       textfont=dict(color=OKABE_ITO["vermillion"]))]


def _fmt(v: float) -> str:
    return f"{v:.4g}" if np.isfinite(v) else str(v)


def metrics_html(s: LayerSummary, calibration: str | None = None, note: str | None = None,
                 crest_before: float | None = None) -> str:
    """The metrics panel: bits per weight, errors, what 7B and 70B models would weigh.

    Parameters
    ----------
    s : LayerSummary
    calibration : str, optional
        Which activations the output error used (shown next to it).
    note : str, optional
        A line above the table (e.g. the fallback type a K-quant got).
    crest_before : float, optional
        max|w|/RMS of the unrotated weight, shown beside the rotated one's for
        a rotated result.

    Returns
    -------
    str
        An HTML table; it always contains ``"<bpw> bits per weight"``.
    """
    m = s.metrics
    bpw = m["bits_per_weight"]
    rows = [("storage", f"{bpw:.4g} bits per weight ({s.result.method})"),
            ("MSE", _fmt(m["mse"])), ("SQNR", f"{_fmt(m['sqnr_db'])} dB"),
            ("max |W − Ŵ|", _fmt(m["max_abs_error"]))]
    if "weight_crest" in m:
        crest = _fmt(m["weight_crest"])
        if s.result.rotation is not None:
            before = "" if crest_before is None else f"{_fmt(crest_before)} → "
            crest = f"{before}{crest} after the Hadamard rotation"
        rows.append(("outliers: max |w| / RMS(w)", crest))
    if "relative_output_error" in m:
        rows.append(("relative output error ‖(W−Ŵ)Xᵀ‖²/‖WXᵀ‖²", _fmt(m["relative_output_error"])))
        if calibration:
            rows.append(("activations X", calibration))
    for label, n in MODEL_SIZES.items():
        mem = model_memory(n, bpw)
        rows.append((f"a {label} model", f"{mem.total_bytes / 1e9:.1f} GB "
                                         f"(fp16: {n * 2 / 1e9:.0f} GB)"))
    body = "".join(f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
                   f"<td>{html.escape(v)}</td></tr>" for k, v in rows)
    head = f"<p><b>{html.escape(note)}</b></p>" if note else ""
    return f"<div class='qviz-metrics'>{head}<table>{body}</table></div>"

"""Figures of the GGUF tools beyond one layer: pure functions -> plotly figures.

The GGUF explorer draws a tensor with :mod:`qviz.plots.layer`; the sensitivity
scan (:func:`qviz.widgets.scan.scan`) draws its layers × settings table here.
"""
from __future__ import annotations

import numpy as np


def sensitivity_heatmap(layers, settings, values, metric, types=None, bits_per_weight=None):
    """Layers × settings heatmap of a sensitivity scan.

    Parameters
    ----------
    layers, settings : list of str
        Row and column names.
    values : ndarray, shape (n_layers, n_settings), float64
        The measure; NaN cells are blank.
    metric : str
        Its name. Errors (anything but ``"sqnr_db"``) are drawn on a log10
        scale; for every measure darker means worse.
    types : list of list of str, optional
        The method each cell really used, shown on hover.
    bits_per_weight : ndarray, shape (n_layers, n_settings), optional
        Shown on hover.

    Returns
    -------
    plotly.graph_objects.Figure
        One heatmap; its ``z`` is ``values`` (SQNR) or their log10 (errors).

    Examples
    --------
    >>> fig = sensitivity_heatmap(["fc1", "fc2"], ["Q4_K", "Q8_0"],
    ...                           np.array([[1e-3, 1e-5], [4e-3, 2e-5]]), "relative_output_error")
    >>> fig.data[0].z.round(2).tolist()
    [[-3.0, -5.0], [-2.4, -4.7]]
    """
    import plotly.graph_objects as go

    values = np.asarray(values, dtype=np.float64)
    is_sqnr = metric == "sqnr_db"
    with np.errstate(divide="ignore"):
        z = values if is_sqnr else np.log10(values)
    n_layers, n_settings = values.shape
    bpw = np.full(values.shape, np.nan) if bits_per_weight is None else np.asarray(bits_per_weight)
    kinds = types or [[""] * n_settings for _ in range(n_layers)]
    custom = np.dstack([values, bpw, np.array(kinds, dtype=object)])
    fig = go.Figure(go.Heatmap(
        z=z, x=list(settings), y=list(layers), customdata=custom,
        colorscale="YlOrRd", reversescale=is_sqnr,
        colorbar=dict(title=metric if is_sqnr else f"log10 {metric}"),
        text=[[f"{v:.3g}" for v in row] for row in values], texttemplate="%{text}",
        hovertemplate=("%{y}<br>%{x} (%{customdata[2]}, %{customdata[1]:.4g} bpw)<br>"
                       f"{metric}: %{{customdata[0]:.4g}}<extra></extra>")))
    fig.update_layout(title=dict(text=f"{metric} by layer and setting"),
                      height=max(300, 120 + 22 * n_layers),
                      yaxis=dict(autorange="reversed"), margin=dict(l=20, r=20, t=60, b=40))
    return fig

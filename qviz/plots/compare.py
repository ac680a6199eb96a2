"""Figures of one layer under many settings: the Pareto plot and the table.

Pure functions of plain lists (labels, bits per weight, errors), so the
widget and the static report draw the same thing.

>>> fig = pareto_figure(["a", "b", "c"], [4.5, 8.5, 4.0], [1e-3, 1e-5, 5e-3], "MSE")
>>> [t.name for t in fig.data], pareto_front([4.5, 8.5, 4.0], [1e-3, 1e-5, 5e-3]).tolist()
(['settings', 'Pareto front'], [2, 0, 1])
"""
from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go

from qviz.plots.layer import LAYOUT, OKABE_ITO


def pareto_front(bits_per_weight, error) -> np.ndarray:
    """Indices of the settings no other setting beats on both size and error.

    A setting is dominated when another has at most its bits per weight and
    at most its error, and is smaller in one of them.

    Parameters
    ----------
    bits_per_weight, error : sequence of float, length n

    Returns
    -------
    ndarray, int64
        The non-dominated indices, by increasing bits per weight.
    """
    b = np.asarray(bits_per_weight, dtype=np.float64)
    e = np.asarray(error, dtype=np.float64)
    if b.shape != e.shape or b.ndim != 1:
        raise ValueError(f"bits_per_weight and error must be 1-D of one length, got {b.shape}, {e.shape}")
    order = np.lexsort((e, b))  # by size, ties by error
    front, best = [], np.inf
    for i in order:
        if e[i] < best:
            front.append(int(i))
            best = e[i]
    return np.array(front, dtype=np.int64)


def pareto_figure(labels, bits_per_weight, error, error_name: str) -> go.Figure:
    """Bits per weight against error, one point per setting, the Pareto front joined.

    Parameters
    ----------
    labels : sequence of str
    bits_per_weight, error : sequence of float
    error_name : str
        The y axis title, e.g. "relative output error".

    Returns
    -------
    go.Figure
        Traces: ``settings`` (markers with labels; point ``i`` is setting ``i``)
        and ``Pareto front`` (a line through the non-dominated points). Log error.
    """
    front = pareto_front(bits_per_weight, error)
    b = np.asarray(bits_per_weight, dtype=np.float64)
    e = np.asarray(error, dtype=np.float64)
    fig = go.Figure([
        go.Scatter(name="settings", x=b, y=e, text=list(labels), mode="markers+text",
                   textposition="top center", cliponaxis=False,
                   marker=dict(size=11, color=OKABE_ITO["blue"]),
                   hovertemplate="%{text}<br>%{x:.4g} bits per weight<br>%{y:.4g}<extra></extra>"),
        go.Scatter(name="Pareto front", x=b[front], y=e[front], mode="lines", hoverinfo="skip",
                   line=dict(color=OKABE_ITO["orange"], width=2, dash="dash")),
    ])
    fig.update_layout(**{**LAYOUT, "height": 420, "width": 700},
                      title="Size against error (click a point to explore it)",
                      xaxis_title="bits per weight", yaxis=dict(title=f"{error_name} (log)", type="log"))
    return fig


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def table_html(labels, rows: list, columns: dict) -> str:
    """An HTML table: one row per setting, a message in place of a failed one.

    Parameters
    ----------
    labels : sequence of str
        The settings.
    rows : list of (dict or str)
        Each setting's metrics (keys of ``columns``), or the error it raised.
    columns : dict
        Metric key -> column title.
    """
    head = "".join(f"<th>{html.escape(t)}</th>" for t in ["setting", *columns.values()])
    body = []
    for label, row in zip(labels, rows):
        if isinstance(row, str):
            cells = f"<td colspan='{len(columns)}' style='color:#D55E00'>{html.escape(row)}</td>"
        else:
            cells = "".join(f"<td>{_cell(row.get(k, '—'))}</td>" for k in columns)
        body.append(f"<tr><td>{html.escape(label)}</td>{cells}</tr>")
    return (f"<table class='qviz-compare-table'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")

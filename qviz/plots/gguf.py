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


def _role_and_layer(name: str) -> tuple[str, int | None]:
    """``"blk.3.attn_v.weight"`` -> ``("attn_v", 3)``; other names -> (name without ``.weight``, None)."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[0] == "blk" and parts[1].isdigit():
        return ".".join(parts[2:-1] if parts[-1] in ("weight", "bias") else parts[2:]), int(parts[1])
    return name.removesuffix(".weight"), None


def recipe_map(tensors, title: str = "Type of every weight matrix"):
    """Layers × roles map of the types a GGUF file (or a requantize plan) gives its weight matrices.

    Parameters
    ----------
    tensors : iterable of (name, type_name, bits_per_weight, n_elements), or RecipePlan
        One entry per tensor, GGUF names (``blk.<i>.<role>.weight``); 1-D
        tensors and tensors outside the blocks (``token_embd``, ``output``) are
        named in the subtitle instead. A :class:`~qviz.io.gguf_recipes.RecipePlan`
        (:func:`qviz.gguf.plan`) gives its rows of two or more dimensions.
    title : str

    Returns
    -------
    plotly.graph_objects.Figure
        One heatmap: ``y`` the roles, ``x`` the layer numbers, ``z`` each
        tensor's bits per weight (NaN where a layer has no such tensor) and its
        type as the cell's text.

    Examples
    --------
    >>> fig = recipe_map([("blk.0.attn_v.weight", "Q6_K", 6.5625, 4096),
    ...                   ("blk.1.attn_v.weight", "Q4_K", 4.5, 4096),
    ...                   ("blk.0.ffn_down.weight", "Q6_K", 6.5625, 8192),
    ...                   ("output.weight", "Q6_K", 6.5625, 8192)])
    >>> fig.data[0].y, fig.data[0].text
    (('attn_v', 'ffn_down'), (['Q6_K', 'Q4_K'], ['Q6_K', '']))
    """
    import plotly.graph_objects as go

    if hasattr(tensors, "rows"):  # a RecipePlan
        tensors = [(r.name, r.type, r.bits_per_weight, r.n_elements) for r in tensors.rows if len(r.shape) >= 2]
    cells: dict[tuple[str, int], tuple[str, float]] = {}
    others: list[str] = []
    total_bits = total = 0.0
    for name, type_name, bpw, n in tensors:
        total_bits += bpw * n
        total += n
        role, layer = _role_and_layer(name)
        if layer is None:
            others.append(f"{role} {type_name}")
        else:
            cells[role, layer] = (type_name, float(bpw))
    roles = sorted({r for r, _ in cells}, key=lambda r: (not r.startswith("attn"), r))
    layers = sorted({i for _, i in cells})
    z = np.full((len(roles), len(layers)), np.nan)
    text = [[""] * len(layers) for _ in roles]
    for (role, layer), (type_name, bpw) in cells.items():
        r, c = roles.index(role), layers.index(layer)
        z[r, c], text[r][c] = bpw, type_name
    mean = total_bits / total if total else float("nan")
    fig = go.Figure(go.Heatmap(
        z=z, x=layers, y=roles, text=text, texttemplate="%{text}", colorscale="Viridis",
        colorbar=dict(title="bits per weight"), xgap=1, ygap=1,
        hovertemplate="blk.%{x}.%{y}: %{text}, %{z:.4g} bits per weight<extra></extra>"))
    fig.update_layout(
        title=dict(text=f"{title}<br><sup>{mean:.4g} bits per weight over these tensors"
                        f"{'; ' + ', '.join(others) if others else ''}</sup>"),
        xaxis_title="layer", height=max(300, 140 + 26 * len(roles)),
        yaxis=dict(autorange="reversed", type="category"), xaxis=dict(type="category"),
        margin=dict(l=20, r=20, t=80, b=40))
    return fig


def importance_curve(importance, name: str):
    """An imatrix vector: the importance of every input column of one tensor.

    Parameters
    ----------
    importance : ndarray, shape (n_cols,), float32
        Mean squared activation per input column (llama.cpp imatrix).
    name : str
        The tensor's name.

    Returns
    -------
    plotly.graph_objects.Figure
        One line: ``x`` the columns, ``y`` the importance (log axis).
    """
    import plotly.graph_objects as go

    v = np.asarray(importance, dtype=np.float64)
    top = np.argsort(v)[::-1][:3]
    fig = go.Figure(go.Scatter(x=np.arange(len(v)), y=v, mode="lines", name="importance",
                               line=dict(color="#0072B2", width=1),
                               hovertemplate="column %{x}: %{y:.4g}<extra></extra>"))
    fig.update_layout(
        title=dict(text=f"imatrix weighting of {name}<br><sup>the quantizer weights each column's error by "
                        f"this; largest at columns {', '.join(map(str, top.tolist()))} "
                        f"({v.max() / max(np.median(v), 1e-30):.3g}× the median)</sup>"),
        xaxis_title="input column", yaxis=dict(title="mean squared activation (log)", type="log"),
        height=300, margin=dict(l=60, r=20, t=70, b=40))
    return fig

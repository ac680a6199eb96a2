"""``qviz.compare``: one layer under many settings, on the same activations.

A table of the metrics and a Pareto plot of bits per weight against error;
clicking a point opens that setting in :func:`qviz.explore` below the plot,
sharing the layer (and so its cache of quantized settings).
"""
from __future__ import annotations

import html

import ipywidgets as widgets

from qviz.plots import compare as compare_plots
from qviz.session import METRIC_COLUMNS, Layer, Setting, measure, rank, resolve_for, settings_of
from qviz.widgets import controls
from qviz.widgets.explore import Explorer
from qviz.widgets.figure import FigureView


class Comparison(widgets.VBox):
    """The widget ``qviz.compare`` returns.

    Attributes
    ----------
    layer : Layer
    settings : list of Setting
        In the order given.
    outcomes : list
        Per setting, its :class:`~qviz.summary.LayerSummary` or the
        error message it raised.
    points : list of int
        Point ``i`` of the plot is ``settings[points[i]]`` (failed settings
        have no point).
    table : HTML
        One row per setting (class ``qviz-compare-table``).
    figure : FigureView
        Traces ``settings`` (one point per successful setting) and ``Pareto front``.
    message : HTML
        Empty, or what a click raised (:meth:`show_error`; class ``qviz-message``).
    detail : VBox
        Holds the explorer of the clicked point.
    explorer : Explorer or None
    """

    def __init__(self, layer: Layer, settings: list[Setting]):
        self.layer = layer
        self.settings = settings
        self.outcomes = measure(layer, settings)
        ranking = rank(layer, settings, self.outcomes)
        self.points = ranking.points
        self.table = widgets.HTML(compare_plots.table_html(ranking.labels, ranking.rows, METRIC_COLUMNS))
        self.figure = FigureView(compare_plots.pareto_figure(
            ranking.point_labels, ranking.bits_per_weight, ranking.error, ranking.error_name))
        self.figure.on_click(self._on_click)
        self.message = widgets.HTML()
        self.message.add_class("qviz-message")
        self.detail = widgets.VBox()
        self.explorer = None
        acts = layer.calibration or "none (the error is the weight MSE)"
        header = widgets.HTML(f"<b>{html.escape(layer.name)}</b> · {layer.shape[0]} × {layer.shape[1]} "
                              f"weights, {len(settings)} settings<br><small>activations: "
                              f"{html.escape(acts)}</small>")
        super().__init__([header, self.table, self.figure, self.message, self.detail])
        self.add_class("qviz-compare")

    def show_error(self, text: str) -> None:
        """Show ``text``, the error a click raised, above the detail (see ``shows_errors``)."""
        self.message.value = controls.error_html(text)

    @controls.shows_errors
    def _on_click(self, trace: int, index, x, y) -> None:
        if trace == 0 and isinstance(index, int):  # a point of ``settings``
            self.show(self.points[index])

    def show(self, index: int) -> Explorer:
        """Explore ``settings[index]`` below the plot (replacing the previous one).

        Raises
        ------
        ValueError, TypeError
            For a setting whose options the explorer refuses (``bits=9``: the
            registry's message, as in its row of the table).
        """
        setting = self.settings[index]
        self.explorer = Explorer(self.layer, setting)
        self.detail.children = [widgets.HTML(f"<h4>{html.escape(setting.label)}</h4>"), self.explorer]
        self.message.value = ""
        return self.explorer


def compare(obj, methods, calib=None, *, weight=None) -> Comparison:
    """Compare settings of one layer: a table and a Pareto plot (an ipywidgets VBox).

    Parameters
    ----------
    obj
        The layer, any kind :func:`qviz.explore` accepts.
    methods : list
        Method names (``"Q4_K"``) and ``(method, options)`` pairs
        (``("rtn", {"bits": 3, "group_size": 64})``).
    calib : array_like, shape (n_samples, n_cols), optional
        Activations. Without them, settings that need some (GPTQ, AWQ, an
        imatrix) get the explorer's default ones and the errors are relative
        output errors on those; when none needs any, the error is the MSE.
    weight : array_like, optional
        The original weight behind a QuantResult ``obj``.

    Returns
    -------
    Comparison
        Its ``figure`` has one point per setting that worked; a setting that
        failed shows its message in the table, an option value out of range
        included (``("rtn", {"bits": 9})``: "bits=9: choose an integer from 2
        to 8", the message of :func:`qviz.quantize`), as the static report
        does. Clicking a point opens it in an explorer below.

    Raises
    ------
    TypeError, ValueError
        For a malformed list, an unknown method, or an option the method does
        not take.

    Examples
    --------
    >>> import numpy as np, qviz
    >>> w = np.random.default_rng(0).standard_normal((64, 512)).astype(np.float32)
    >>> c = qviz.compare(w, ["Q4_K", "Q8_0", ("rtn", {"bits": 3})])
    >>> [round(o.metrics["bits_per_weight"], 3) for o in c.outcomes]
    [4.5, 8.5, 3.148]
    """
    settings = settings_of(methods)
    layer, _ = resolve_for(obj, settings, calib, weight=weight)
    return Comparison(layer, settings)

"""A plotly figure as a light widget: redrawn whole, clickable, sharing one plotly.js per page.

plotly's own ``FigureWidget`` ships its 5 MB JavaScript bundle in every
widget's state; anywidget gives each widget 2 s to load it, and one that
misses that ignores every later update (an explorer holds five figures, so on
a busy machine the last ones froze). A :class:`FigureView` holds only its
figure's JSON; its front end (``figure.js``) asks the kernel for plotly.js
once per page and redraws with ``Plotly.react`` whenever a new figure is set.

>>> import plotly.graph_objects as go
>>> view = FigureView(go.Figure(go.Bar(name="counts", x=[1, 2], y=[3, 4])))
>>> view.data[0].name
'counts'
"""
from __future__ import annotations

import functools
import json
import pathlib
from typing import Callable

import anywidget
import plotly.graph_objects as go
import traitlets

from qviz.plots.layer import TEMPLATE

#: plotly.js as plotly.py ships it (the version its figures' JSON is written for)
PLOTLY_JS = pathlib.Path(go.__file__).parents[1] / "package_data" / "plotly.min.js"


@functools.cache
def _plotly_js() -> bytes:
    return PLOTLY_JS.read_bytes()


@functools.cache
def _template_json() -> str:
    import plotly.io as pio

    return json.dumps(pio.templates[TEMPLATE].to_plotly_json())


class FigureView(anywidget.AnyWidget):
    """One plotly figure in a notebook, replaced whole by :meth:`draw`.

    Parameters
    ----------
    figure : go.Figure, optional
        The first figure (an empty one without).

    Attributes
    ----------
    figure : go.Figure
        The figure on display (read-only; :meth:`draw` replaces it).
    data, layout
        ``figure.data`` and ``figure.layout``.
    """

    _esm = pathlib.Path(__file__).with_name("figure.js")
    _spec = traitlets.Unicode("").tag(sync=True)
    _template = traitlets.Unicode("").tag(sync=True)

    def __init__(self, figure: go.Figure | None = None, **kwargs):
        super().__init__(**kwargs)
        self._template = _template_json()
        self._figure = go.Figure()
        self._click_callbacks: list[Callable] = []
        self.on_msg(self._on_message)
        if figure is not None:
            self.draw(figure)

    @property
    def figure(self) -> go.Figure:
        return self._figure

    @property
    def data(self):
        return self._figure.data

    @property
    def layout(self):
        return self._figure.layout

    def draw(self, figure: go.Figure) -> None:
        """Show ``figure`` instead of the current one (one message to the front end)."""
        if not isinstance(figure, go.Figure):
            raise TypeError(f"draw takes a plotly go.Figure, not {type(figure).__name__}")
        from plotly.io.json import to_json_plotly

        spec = figure.to_plotly_json()
        spec["layout"].pop("template", None)  # the front end applies the shared one
        self._figure = figure
        self._spec = to_json_plotly(spec)  # numpy arrays as base64 typed arrays

    def clear(self, title: str = "") -> None:
        """Show an empty figure, with ``title`` (say why it is empty)."""
        self.draw(go.Figure(layout={"title": {"text": title}}))

    def on_click(self, callback: Callable[[int, int, object, object], None]) -> None:
        """Call ``callback(trace, index, x, y)`` when a point is clicked in the browser.

        ``trace`` is the index of the clicked trace in ``figure.data``, ``index``
        the point's index in it (a heatmap gives ``[row, column]``), ``x`` and
        ``y`` its coordinates.
        """
        self._click_callbacks.append(callback)

    def click(self, trace: int, index, x, y) -> None:
        """Run the click callbacks as a click in the browser would."""
        for callback in self._click_callbacks:
            callback(trace, index, x, y)

    def _on_message(self, widget, content, buffers) -> None:
        kind = content.get("kind") if isinstance(content, dict) else None
        if kind == "plotly.js?":
            self.send({"kind": "plotly.js"}, buffers=[_plotly_js()])
        elif kind == "click":
            self.click(content.get("trace"), content.get("index"), content.get("x"), content.get("y"))

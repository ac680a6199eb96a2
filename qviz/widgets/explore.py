"""``qviz.explore``: one layer under one quantization setting, live.

The widget is state plus render. Its state is the values of its controls
(method and the method's options) and the selected group (row, group); one
``_update()`` turns the controls into a :class:`~qviz.session.Setting`,
asks the layer for that setting's summary (quantized through ``qviz.quantize``
once per setting, then cached) and redraws every view from the pure functions
of :mod:`qviz.plots.layer` onto its :class:`~qviz.widgets.figure.FigureView` s.
Callbacks hold no quantization arithmetic, and every one is guarded by
:func:`qviz.widgets.controls.shows_errors`: what it raises is shown in
``message`` (:meth:`Explorer.show_error`), and the next good change renders.
"""
from __future__ import annotations

import html
import logging

import ipywidgets as widgets
import plotly.graph_objects as go

from qviz.plots import layer as layer_plots
from qviz.session import Layer, Setting, fallback_note, method_options, resolve
from qviz.summary import block_shape, worst_in_block
from qviz.widgets import controls
from qviz.widgets.figure import FigureView

log = logging.getLogger(__name__)

#: the figures of an explorer, in display order
VIEWS = ("weights", "scales", "errors", "error_histogram", "group")
#: where explore starts when neither a result nor a method is given
DEFAULT_SETTING = ("rtn", {"bits": 4, "group_size": 128})


def _cell() -> widgets.Layout:
    """One cell of the explorer's wrapping grid: as wide as a figure."""
    return widgets.Layout(width=f"{layer_plots.WIDTH}px", min_width="0")


class Explorer(widgets.VBox):
    """The widget ``qviz.explore`` returns.

    Public state (kept stable for notebooks and browser tests):

    * ``controls`` : dict of ipywidgets. ``"method"`` (Dropdown of
      ``qviz.method_names()``), every method option (``"bits"``,
      ``"group_size"``, ``"sym"``, ``"act_order"``, ``"imatrix"``, ``"damp"``,
      ``"per_tensor"``, and the options of methods registered later), and
      ``"row"``, ``"group"`` (the selected group). Options that do not apply
      to the method are hidden (``layout.display == "none"``). Setting a
      value from Python updates the widget synchronously.
    * ``figures`` : dict of :class:`~qviz.widgets.figure.FigureView` keyed by :data:`VIEWS`:
      ``"weights"`` (traces weights, dequantized, levels), ``"scales"``
      (scale and zero/min heatmaps), ``"errors"`` (mean |error| heatmap,
      selected marker), ``"error_histogram"``, ``"group"`` (levels, error,
      w, ŵ). Traces are updated in place, never replaced. Clicking a heatmap
      cell selects the worst group inside it.
    * ``metrics`` : HTML, the metrics panel (contains "<bpw> bits per weight").
    * ``message`` : HTML, empty or a sentence: the error a change raised
      (a bad setting's, any callback's: :meth:`show_error`), the fallback a
      K-quant got ("Q4_K → Q5_0 for 384-wide rows …").
    * ``view_messages`` : dict of HTML, one per view: empty, or the error
      that view raised (the other views carry on).
    * ``header`` : HTML naming the layer and which activations are used.
    * ``layer``, ``setting``, ``summary``, ``result``, ``row``, ``group``.

    CSS classes: ``qviz-explore`` on the widget, ``qviz-view-<name>`` on each
    view's box, ``qviz-metrics``, ``qviz-message``, ``qviz-controls``.
    """

    def __init__(self, layer: Layer, setting: Setting):
        setting = setting.check()  # bits=9 is the registry's message, not a TraitError of a control
        self.layer = layer
        self.setting = setting
        self.summary = None
        self.row, self.group = 0, 0
        self._busy = False
        self.header = widgets.HTML(self._header_html())
        self.controls = {"method": controls.method_control(setting.method),
                         **controls.all_option_controls()}
        self.controls["row"] = widgets.BoundedIntText(description="row", min=0, max=layer.shape[0] - 1,
                                                      style=controls.STYLE,
                                                      layout=widgets.Layout(width="150px"))
        self.controls["group"] = widgets.BoundedIntText(description="group", min=0, max=0,
                                                        style=controls.STYLE,
                                                        layout=widgets.Layout(width="150px"))
        self.message = widgets.HTML()
        self.message.add_class("qviz-message")
        self.metrics = widgets.HTML()
        self.metrics.add_class("qviz-metrics")
        self.figures = {name: FigureView() for name in VIEWS}
        for name in ("scales", "errors"):
            self.figures[name].on_click(self._on_heatmap_click)
        self.view_messages = {name: widgets.HTML() for name in VIEWS}
        self._set_controls(setting)
        for name, control in self.controls.items():
            handler = self._on_select if name in ("row", "group") else self._on_setting
            control.observe(handler, names="value")
        super().__init__(children=self._children())
        self.add_class("qviz-explore")
        self._update()

    # ---- layout -------------------------------------------------------------------------
    def _header_html(self) -> str:
        n_rows, n_cols = self.layer.shape
        acts = self.layer.calibration or "none (no output error; GPTQ/AWQ/imatrix need calib=)"
        return (f"<b>{html.escape(self.layer.name)}</b> · {n_rows} × {n_cols} weights"
                f"<br><small>activations: {html.escape(acts)}</small>")

    def _view(self, name: str) -> widgets.VBox:
        box = widgets.VBox([self.figures[name], self.view_messages[name]], layout=_cell())
        box.add_class(f"qviz-view-{name}")
        return box

    def _children(self) -> list:
        options = [c for n, c in self.controls.items() if n not in ("method", "row", "group")]
        top = widgets.HBox([self.controls["method"], *options],
                           layout=widgets.Layout(flex_flow="row wrap", align_items="center"))
        top.add_class("qviz-controls")
        selection = widgets.HBox([self.controls["row"], self.controls["group"]])
        if not self.layer.has_weight:  # a bare QuantResult: nothing to re-quantize
            top.layout.display = "none"
        metrics = widgets.VBox([self.metrics], layout=_cell())
        # fixed-width cells that wrap: two columns where there is room, one where there is not
        grid = widgets.HBox(
            [self._view("weights"), metrics, self._view("scales"), self._view("errors"),
             self._view("error_histogram"), self._view("group")],
            layout=widgets.Layout(flex_flow="row wrap", grid_gap="4px 12px", width="100%"))
        return [self.header, top, selection, self.message, grid]

    # ---- state --------------------------------------------------------------------------
    @property
    def result(self):
        """The QuantResult on display (None before the first successful update)."""
        return None if self.summary is None else self.summary.result

    def _set_controls(self, setting: Setting) -> None:
        self._busy = True
        try:
            self.controls["method"].value = setting.method
            for key, value in setting.options:
                control = self.controls.get(key)
                if control is not None:
                    controls.set_value(control, key, value)
        finally:
            self._busy = False

    def _current_setting(self) -> Setting:
        if not self.layer.has_weight:
            return self.layer.given
        method = self.controls["method"].value
        options = {}
        for key in method_options(method):
            value = self.controls[key].value
            options[key] = float(f"{value:.4g}") if isinstance(value, float) else value
        return Setting.of((method, options))

    @controls.shows_errors
    def _on_setting(self, change) -> None:
        if not self._busy:
            self._update()

    @controls.shows_errors
    def _on_select(self, change) -> None:
        if not self._busy:
            self.select(self.controls["row"].value, self.controls["group"].value)

    @controls.shows_errors
    def _on_heatmap_click(self, trace: int, index, x, y) -> None:
        """A heatmap cell (x: its first group, y: its first row) → the worst group inside it."""
        if self.summary is None or x is None or y is None:
            return
        grid = self.summary.group_error
        self.select(*worst_in_block(grid, int(y), int(x), block_shape(*grid.shape)))

    # ---- render -------------------------------------------------------------------------
    def show_error(self, text: str) -> None:
        """Show ``text``, the error a change raised, as the message (see ``shows_errors``).

        The message names the setting the controls now hold and, when an
        earlier one rendered, says that the figures still show that one.
        """
        try:
            label = self._current_setting().label
        except Exception:  # the controls themselves are what failed
            label = str(self.controls["method"].value)
        shown = f"; the figures still show {self.setting.label}" if self.summary else ""
        self.message.value = controls.error_html(f"{label}: {text}") + html.escape(shown)

    @controls.shows_errors
    def _update(self) -> None:
        """Controls → setting → (cached) summary → every view."""
        options = {k: c for k, c in self.controls.items() if k not in ("method", "row", "group")}
        method = self.controls["method"].value
        wanted = method_options(method) if self.layer.has_weight else {}
        if wanted.get("imatrix") is True and not options["imatrix"].value and self.setting.method != method:
            self._busy = True  # a type that refuses to work without one (IQ2_XXS …): switch it on
            try:
                options["imatrix"].value = True
            finally:
                self._busy = False
        controls.show_only(options, wanted)
        setting = self._current_setting()
        s = self.layer.summary(setting)  # a bad setting raises: shown by show_error
        first = self.summary is None
        self.setting, self.summary = setting, s
        notes = [fallback_note(s.result)]
        if not self.layer.has_weight:
            notes.append("A QuantResult without its original weight: it is measured against its own "
                         "decoding, so every error is 0. Pass weight= to see the errors.")
        self.message.value = "<br>".join(html.escape(n) for n in notes if n)
        n_rows, n_groups = s.group_error.shape
        if first or not (self.row < n_rows and self.group < n_groups):
            self.row, self.group = s.worst_group
        self._sync_selection(n_groups)
        self._render(VIEWS)

    def _sync_selection(self, n_groups: int) -> None:
        self._busy = True
        try:
            self.controls["group"].max = n_groups - 1
            self.controls["row"].value, self.controls["group"].value = self.row, self.group
        finally:
            self._busy = False

    def select(self, row: int, group: int) -> None:
        """Show group ``group`` of row ``row`` (levels, group detail, marker)."""
        if self.summary is None:
            return
        n_rows, n_groups = self.summary.group_error.shape
        if not (0 <= row < n_rows and 0 <= group < n_groups):
            raise IndexError(f"(row, group) = ({row}, {group}) is outside {n_rows} rows × {n_groups} groups")
        self.row, self.group = int(row), int(group)
        self._sync_selection(n_groups)
        self._render(("weights", "errors", "group"))

    def _figure(self, name: str) -> go.Figure:
        s, sel = self.summary, (self.row, self.group)
        if name == "weights":
            return layer_plots.weight_histogram(s, *sel)
        if name == "scales":
            return layer_plots.scale_heatmap(s)
        if name == "errors":
            return layer_plots.error_map(s, sel)
        if name == "error_histogram":
            return layer_plots.error_histogram(s)
        return layer_plots.group_detail(self.layer.group_detail(s, *sel))

    def _render(self, views) -> None:
        """Redraw ``views``; one view's exception is shown under it and spares the rest."""
        for name in views:
            try:
                self.figures[name].draw(self._figure(name))
                self.view_messages[name].value = ""
            except Exception as e:
                log.info("explore: the %s view failed", name, exc_info=True)
                self.view_messages[name].value = controls.error_html(
                    f"this view failed: {type(e).__name__}: {e}")
        try:
            self.metrics.value = layer_plots.metrics_html(self.summary, self.layer.calibration,
                                                          crest_before=self.layer.stats.crest)
        except Exception as e:
            log.info("explore: the metrics panel failed", exc_info=True)
            self.metrics.value = controls.error_html(f"metrics failed: {type(e).__name__}: {e}")


def explore(obj, calib=None, *, weight=None, method: str | None = None, **options) -> Explorer:
    """An interactive explorer of one layer's quantization (an ipywidgets VBox).

    Parameters
    ----------
    obj
        What to explore: an ``nn.Linear`` (or any module with ``.weight``), a
        2-D torch tensor or numpy array (out × in), ``(model, "layer.name")``,
        a :class:`~qviz.result.QuantResult`, ``(gguf_path, "tensor.name")``, or
        the name of a bundled MiniLM layer (``qviz.demo.layers()``).
        A QuantResult is shown as it is; with ``weight=`` its errors are measured
        and the controls start from its settings. A GGUF tensor starts from its
        stored type, measured against its own decoded values (the file holds no
        original weights); other settings requantize those values.
    calib : array_like, shape (n_samples, n_cols), optional
        The layer's input activations, for GPTQ/AWQ, the imatrix and the
        relative output error. Without it the explorer uses a default and says
        which in its header: the real inputs of a bundled MiniLM Linear layer
        on the bundled text (``qviz.io.calib.capture``; a few seconds, once
        per session), random-normal activations otherwise.
    weight : array_like, shape (n_rows, n_cols), optional
        The original weight behind a QuantResult ``obj``.
    method : str, optional
        Where the controls start (default RTN 4-bit, groups of 128, or the
        result's own setting); a name of :func:`qviz.method_names`.
    **options
        That method's options, e.g. ``bits=3``, ``group_size=64``.

    Returns
    -------
    Explorer
        A ``widgets.VBox``; see :class:`Explorer` for its controls, figures and
        panels. GGUF types use llama-quantize's fallback on rows that do not
        fit their blocks, and say so.

    Raises
    ------
    TypeError
        For an object of another kind (the message lists the accepted ones),
        an option the method does not take, or an option value of the wrong
        kind.
    ValueError
        For an unknown method or an option value out of range, with the
        message :func:`qviz.quantize` gives (``bits=9: choose an integer from
        2 to 8``).

    Examples
    --------
    >>> import numpy as np, qviz
    >>> w = np.random.default_rng(0).standard_normal((64, 512)).astype(np.float32)
    >>> ex = qviz.explore(w, method="Q4_K")  # in a notebook, display ex
    >>> ex.controls["method"].value = "Q8_0"  # every view follows
    >>> "8.5 bits per weight" in ex.metrics.value
    True
    """
    if method is None and options:
        raise TypeError(f"options {', '.join(options)} need a method=, e.g. method='rtn'")
    setting = None if method is None else Setting.of((method, options)).check()  # bad settings fail first
    layer, given = resolve(obj, calib, weight=weight)
    return Explorer(layer, setting or given or Setting.of(DEFAULT_SETTING))

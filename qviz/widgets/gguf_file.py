"""``explore_gguf``: the tensors of a GGUF file, their blocks, and what another type would change.

State: the file, the picked tensor and the type to requantize it to. Views
come from :class:`TensorViews`, which calls :func:`qviz.quantize` and
:func:`qviz.summary.summarize` and keeps the last few results; the
figures are the functions of :mod:`qviz.plots.layer`. Callbacks only set state
and redraw; each is guarded by :func:`qviz.widgets.controls.shows_errors`, so
anything one raises (a type gguf-py cannot decode, a type the rows do not fit)
shows as a message inside the widget, and the next good pick renders.
"""
from __future__ import annotations

import html
import os
from collections import Counter, OrderedDict
from pathlib import Path
from typing import NamedTuple

import ipywidgets as widgets
import numpy as np

from qviz import registry
from qviz.api import quantize
from qviz.io import demo, gguf
from qviz.io.imatrix import check_imatrix_for, read_imatrix
from qviz.plots.gguf import importance_curve, recipe_map
from qviz.plots.layer import metrics_html, scale_heatmap, weight_histogram
from qviz.session import fallback_note
from qviz.summary import summarize, weight_stats
from qviz.widgets import controls
from qviz.widgets.figure import FigureView

#: tensors whose views are kept (decoded weights and summaries)
CACHE_SIZE = 4
#: the tensor shown first: the first block-quantized matrix of at most this many weights
FIRST_TENSOR_MAX = 1 << 22


class Stored(NamedTuple):
    """One tensor as the file stores it."""

    weight: np.ndarray  # decoded, float32, (n_rows, n_cols) or 1-D
    stats: object  # qviz.summary.WeightStats of a matrix, or None
    summary: object  # LayerSummary of the stored blocks, or None


class Requantized(NamedTuple):
    """One tensor stored as another type, measured against its decoded weights."""

    summary: object  # qviz.summary.LayerSummary
    requested: str
    note: str  # which fallback applied, or ""


def _human(n_bytes: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:,} {unit}" if unit == "bytes" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError("unreachable")


def tensor_labels(rows: list[dict]) -> list[tuple[str, str]]:
    """(label, name) per row of ``GGUFFile.table()``: name, type, shape, bpw, size in columns."""
    width = max(len(r["name"]) for r in rows)
    out = []
    for r in rows:
        shape = " × ".join(map(str, r["shape"]))
        label = (f"{r['name']:<{width}}  {r['type']:<6} {shape:<13} "
                 f"{r['bits_per_weight']:6.3f} bpw  {_human(r['bytes']):>10}")
        out.append((label, r["name"]))
    return out


class TensorViews:
    """What the explorer shows of one file's tensors, computed on demand, last few kept.

    Parameters
    ----------
    f : GGUFFile
    imatrix : mapping of str to ndarray (n_cols,), float32, optional
        Importance vectors by tensor name, used when requantizing a tensor that has one.
    """

    def __init__(self, f, imatrix=None):
        self.f = f
        self.imatrix = {} if imatrix is None else imatrix
        self._stored: OrderedDict = OrderedDict()
        self._requantized: OrderedDict = OrderedDict()

    @staticmethod
    def _remember(cache: OrderedDict, key, value):
        cache[key] = value
        while len(cache) > CACHE_SIZE:
            cache.popitem(last=False)
        return value

    def stored(self, name: str) -> Stored:
        """Tensor ``name`` decoded, its weight statistics, and its stored blocks summarized.

        ``stats`` is None for 1-D tensors; ``summary`` is None for those and for
        types the registry does not know (F32, F16, …).
        """
        if name in self._stored:
            self._stored.move_to_end(name)
            return self._stored[name]
        info = self.f.tensor(name)
        w = self.f.decode(name)
        w = w.reshape(-1, info.shape[-1]) if w.ndim > 1 else w
        stats = weight_stats(w) if w.ndim == 2 else None
        summary = None
        if info.type_name in registry.TYPES and stats is not None:
            summary = summarize(self.f.result(name), w, stats)
        return self._remember(self._stored, name, Stored(w, stats, summary))

    def requantized(self, name: str, type_name: str) -> Requantized:
        """Tensor ``name`` quantized to ``type_name`` (llama-quantize's fallback for rows it
        does not divide), against its decoded weights.

        Raises
        ------
        ValueError
            For a 1-D tensor, or rows that neither the type nor its fallback divides.
        """
        key = (name, type_name)
        if key in self._requantized:
            self._requantized.move_to_end(key)
            return self._requantized[key]
        w, stats, _ = self.stored(name)
        if stats is None:
            raise ValueError(f"{name} is 1-D: requantize keeps such tensors as they are")
        r = quantize(w, type_name, fallback=True, imatrix=self.imatrix.get(name))
        summary = summarize(r, w, stats)
        return self._remember(self._requantized, key,
                              Requantized(summary, type_name, fallback_note(r) or ""))


def _first_tensor(f) -> str:
    blocks = [t for t in f.tensors if t.type_name in registry.TYPES and len(t.shape) == 2]
    small = [t for t in blocks if t.n_elements <= FIRST_TENSOR_MAX]
    return (small or blocks or f.tensors)[0].name


def _file_html(f) -> str:
    size = os.path.getsize(f.path) if f.path is not None else sum(t.n_bytes for t in f.tensors)
    types = ", ".join(f"{n} × {t}" for t, n in Counter(t.type_name for t in f.tensors).most_common())
    name = f.metadata.get("general.name", "")
    arch = f.metadata.get("general.architecture", "")
    return (f"<div class='qviz-gguf-file'><b>{html.escape(Path(str(f.path)).name)}</b> "
            f"{html.escape(str(name))} ({html.escape(str(arch))}), GGUF v{f.version}: "
            f"{len(f.tensors)} tensors, {_human(size)}; {html.escape(types)}</div>")


def file_recipe(f) -> list[tuple[str, str, float, int]]:
    """(name, type, bits per weight, weights) of every tensor of two or more dimensions in ``f``."""
    return [(t.name, t.type_name, t.bits_per_weight, t.n_elements) for t in f.tensors if len(t.shape) >= 2]


def _requant_html(info, req: Requantized) -> str:
    r = req.summary.result
    change = (f"{info.type_name} {info.bits_per_weight:.4g} bpw, {_human(info.n_bytes)} → "
              f"{r.method} {r.bits_per_weight:.4g} bpw, {_human(r.nbytes)} "
              f"({(r.nbytes - info.n_bytes) / info.n_bytes:+.1%}); errors against the decoded "
              f"{info.type_name} weights")
    return f"<p>{html.escape(change)}</p>" + metrics_html(req.summary, note=req.note or None)


class GGUFExplorer(widgets.VBox):
    """The widget :func:`explore_gguf` returns.

    Attributes
    ----------
    views : TensorViews
        The file and what has been computed of it.
    filter : ipywidgets.Text
        Shows only the tensors whose name contains it.
    tensors : ipywidgets.Select
        The tensor table; its value is the picked tensor's name.
    type : ipywidgets.Dropdown
        The type to requantize to.
    recipe : FigureView
        The file's recipe: the type of every weight matrix by layer and role.
    blocks, histogram : FigureView
        The stored block scales and mins (heatmaps); the decoded weights with
        the requantized ones and one group's levels (histogram).
    importance : FigureView
        The picked tensor's imatrix weighting (empty without an imatrix entry).
    tensor_info, metrics, message : ipywidgets.HTML
        The picked tensor; the requantize panel (contains "<bpw> bits per
        weight"); empty or what went wrong (:meth:`show_error`).
    """

    def __init__(self, f, tensor: str | None = None, type_name: str = "Q4_K", imatrix=None, plan=None):
        self.views = TensorViews(f, imatrix)
        self.plan = plan
        self.labels = tensor_labels(f.table())
        self.filter = widgets.Text(placeholder="filter names, e.g. blk.3.", description="filter")
        self.tensors = widgets.Select(options=self.labels, value=tensor or _first_tensor(f), rows=12,
                                      layout=widgets.Layout(width="100%"))
        self.tensors.add_class("qviz-gguf-tensors")
        self.type = widgets.Dropdown(options=list(registry.types()), value=type_name,
                                     description="requantize to", style={"description_width": "initial"})
        self.tensor_info = widgets.HTML()
        self.metrics = widgets.HTML()
        self.message = widgets.HTML()
        self.histogram = FigureView()
        self.blocks = FigureView()
        self.recipe = FigureView()
        self.importance = FigureView()
        self._importance_box = widgets.Box([self.importance], layout=widgets.Layout(display="none"))
        self._drawn: dict[str, object] = {}  # what blocks and the requantize panel show now
        style = widgets.HTML("<style>.qviz-gguf-tensors select {font-family: monospace;"
                             " font-size: 12px; white-space: pre}</style>")
        super().__init__([style, widgets.HTML(_file_html(f)), self.recipe, self.filter, self.tensors,
                          self.message, self.tensor_info, self.blocks, self._importance_box, self.type,
                          self.metrics, self.histogram])
        if plan is None:
            self.recipe.draw(recipe_map(file_recipe(f), title=f"The recipe of {Path(str(f.path)).name}"))
        else:
            self.recipe.draw(recipe_map(plan, title=f"{plan.recipe.name} for {Path(str(f.path)).name}, planned"))
        self.add_class("qviz-gguf")
        self.filter.observe(self._on_filter, names="value")
        self.tensors.observe(self._on_tensor, names="value")
        self.type.observe(self._on_type, names="value")
        self._on_tensor(None)

    @controls.shows_errors
    def _on_filter(self, change) -> None:
        picked = [(label, name) for label, name in self.labels if change["new"] in name]
        if picked:
            self.tensors.options = picked
            self.message.value = ""
        else:
            self.message.value = controls.error_html(f"no tensor name contains {change['new']!r}")

    @controls.shows_errors
    def _on_tensor(self, change) -> None:
        planned = self.planned_type()
        if planned is not None and planned != self.type.value:
            self.type.unobserve(self._on_type, names="value")  # show_tensor draws it once
            try:
                self.type.value = planned
            finally:
                self.type.observe(self._on_type, names="value")
        self.show_tensor()

    def planned_type(self) -> str | None:
        """The type the plan gives the picked tensor, when there is a plan and it is a quant type."""
        name = self.tensors.value
        if self.plan is None or name is None:
            return None
        try:
            row = self.plan[name]
        except KeyError:
            return None
        return row.type if row.converted and row.type in registry.TYPES else None

    @controls.shows_errors
    def _on_type(self, change) -> None:
        self.show_requantized()

    def show_error(self, text: str) -> None:
        """Show ``text``, the error a pick raised, and clear the figures it left stale.

        What the callbacks call (see ``shows_errors``): the blocks stay when
        they are the picked tensor's; the requantize panel and histogram stay
        only when they show the picked tensor as the picked type.
        """
        self.message.value = controls.error_html(text)
        name = self.tensors.value
        if self._drawn.get("blocks") != name:
            self.blocks.clear()
            self._drawn.pop("blocks", None)
        if self._drawn.get("requantized") != (name, self.type.value):
            self.histogram.clear()
            self.metrics.value = ""
            self._drawn.pop("requantized", None)

    def show_tensor(self) -> None:
        """Draw the picked tensor's stored blocks, then its requantization.

        Raises
        ------
        NotImplementedError
            For a type gguf-py cannot decode (Q8_1, Q8_K, …).
        ValueError
            For a 1-D tensor, or rows the chosen type cannot store.
        """
        name = self.tensors.value
        if name is None:
            return
        info = self.views.f.tensor(name)
        planned = ""
        if self.plan is not None and name in self.plan.types:
            row = self.plan[name]
            planned = (f"<br>{html.escape(self.plan.recipe.name)} gives it <b>{html.escape(row.type)}</b>: "
                       f"{html.escape(row.why)}")
        self.tensor_info.value = (f"<b>{html.escape(name)}</b>: {info.type_name}, shape "
                                  f"{' × '.join(map(str, info.shape))}, "
                                  f"{info.bits_per_weight:.4g} bits per weight, {_human(info.n_bytes)}"
                                  f"{planned}")
        stored = self.views.stored(name).summary
        self.message.value = ""
        if stored is None:
            self.blocks.clear(f"{info.type_name} stores plain numbers: no block scales")
        else:
            self.blocks.draw(scale_heatmap(stored))
        self._drawn["blocks"] = name
        has = name in self.views.imatrix
        self._importance_box.layout.display = "" if has else "none"
        if has:
            self.importance.draw(importance_curve(self.views.imatrix[name], name))
        self.show_requantized()

    def show_requantized(self) -> None:
        """Draw what storing the picked tensor as the chosen type would change.

        Raises
        ------
        NotImplementedError, ValueError
            As :meth:`show_tensor`.
        """
        name, type_name = self.tensors.value, self.type.value
        if name is None:
            return
        req = self.views.requantized(name, type_name)
        self.message.value = ""
        self.metrics.value = _requant_html(self.views.f.tensor(name), req)
        self.histogram.draw(weight_histogram(req.summary, *req.summary.worst_group))
        self._drawn["requantized"] = (name, type_name)


def explore_gguf(path=None, tensor: str | None = None, type: str = "Q4_K", imatrix=None,
                 recipe=None) -> GGUFExplorer:
    """Explore a GGUF file: its tensor table, each tensor's blocks, and other types.

    Pick a tensor to see its decoded weights (histogram) and its stored block
    scales and mins (heatmap, pooled for big tensors); pick a type to see what
    requantizing the tensor would change: bits per weight, size, and MSE/SQNR
    against the decoded weights (llama-quantize's fallback type when the rows
    do not fit the type's blocks, and the widget says so).

    Parameters
    ----------
    path : path, optional
        A GGUF file; default the bundled SmolLM2-135M (:func:`qviz.demo.smollm2_gguf`).
    tensor : str, optional
        The tensor shown first (default: the first block-quantized matrix of
        at most 4M weights).
    type : str
        The type to requantize to first, a name of :func:`qviz.registry.types`.
    imatrix : path or mapping of str to ndarray (n_cols,), float32, optional
        An importance matrix (llama.cpp imatrix file, either format, or vectors by
        tensor name, :func:`qviz.gguf.read_imatrix`): the picked tensor's weighting
        is drawn and requantizing uses it (the types that need one: IQ2_XXS, IQ2_XS, IQ1_S).
    recipe : str or RecipePlan, optional
        A llama-quantize recipe (``"Q4_K_M"``, :data:`qviz.gguf.RECIPES`) or a plan made
        with options (:func:`qviz.gguf.plan`): the map at the top shows its type for
        every tensor instead of the file's own, and picking a tensor picks its planned
        type and says which rule chose it.

    Returns
    -------
    GGUFExplorer
        An ipywidgets VBox; see :class:`GGUFExplorer` for its parts.

    Raises
    ------
    GGUFError, FileNotFoundError
        For a file that is missing or not a valid GGUF.
    KeyError, ValueError
        For an unknown ``tensor`` or ``type``.

    Examples
    --------
    >>> ex = explore_gguf(tensor="blk.0.ffn_down.weight", type="Q6_K")
    >>> "6.562 bits per weight (Q6_K)" in ex.metrics.value
    True
    >>> ex.tensors.value = "blk.0.attn_q.weight"  # 576 wide: Q6_K falls back to Q8_0
    >>> "Q6_K → Q8_0" in ex.metrics.value
    True
    """
    type = registry.resolve_name(type, registry.types(), "GGUF type")  # ValueError: the closest names
    f = gguf.read(demo.smollm2_gguf() if path is None else path)
    if tensor is not None:
        f.tensor(tensor)  # KeyError naming the closest names
    if isinstance(imatrix, (str, os.PathLike)):
        imatrix = read_imatrix(imatrix)
    if imatrix is not None:
        check_imatrix_for(f, imatrix)  # ValueError naming a tensor this model lacks or a wrong length
    plan = gguf.plan(f, recipe, imatrix=imatrix) if isinstance(recipe, str) else recipe
    if plan is not None and not isinstance(plan, gguf.RecipePlan):
        raise TypeError(f"recipe must be a recipe name (one of qviz.gguf.RECIPES) or a "
                        f"qviz.gguf.plan(...) result; got {recipe.__class__.__name__}")
    return GGUFExplorer(f, tensor, type, imatrix, plan)

"""``qviz.report``: the explorers' figures as one self-contained HTML page.

For one layer and a few settings: the comparison table and Pareto plot, then
per setting the metrics panel and the five figures of :func:`qviz.explore`
(drawn at the group with the largest error). plotly.js is embedded once, so
the page opens offline; it is written to a temporary file and renamed.

The layer, its activations and the settings are resolved as the widgets do
(:mod:`qviz.session`, which imports no ipywidgets).
"""
from __future__ import annotations

import datetime
import html
import os
import tempfile
from pathlib import Path

from qviz.plots import compare as compare_plots
from qviz.plots import layer as layer_plots
from qviz.session import METRIC_COLUMNS, fallback_note, measure, rank, resolve_for, settings_of

#: the settings of a report when none are given
DEFAULT_METHODS = (("rtn", {"bits": 4, "group_size": 128}), ("rtn", {"bits": 3, "group_size": 128}),
                   "Q4_K", "Q8_0")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
.grid { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 8px 16px; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; border-bottom: 1px solid #ddd; }
.note { color: #D55E00; }
"""


class _Figures:
    """Figures to HTML: plotly.js goes into the first one only."""

    def __init__(self):
        self.first = True

    def __call__(self, fig) -> str:
        fig.update_layout(template=layer_plots.TEMPLATE)
        out = fig.to_html(full_html=False, include_plotlyjs=self.first)
        self.first = False
        return out


def _section(s, layer, to_html) -> str:
    row, group = s.worst_group
    note = fallback_note(s.result)
    figures = [layer_plots.weight_histogram(s, row, group), layer_plots.scale_heatmap(s),
               layer_plots.error_map(s, (row, group)), layer_plots.error_histogram(s),
               layer_plots.group_detail(layer.group_detail(s, row, group))]
    cells = [layer_plots.metrics_html(s, layer.calibration)] + [to_html(f) for f in figures]
    head = f"<p class='note'>{html.escape(note)}</p>" if note else ""
    return head + "<div class='grid'>" + "".join(f"<div>{c}</div>" for c in cells) + "</div>"


def report(obj, path="report.html", methods=None, calib=None, *, weight=None,
           title: str | None = None) -> Path:
    """Write a self-contained HTML report of one layer under some settings.

    Parameters
    ----------
    obj
        The layer, any kind :func:`qviz.explore` accepts.
    path : str or PathLike
        Where to write (its folder must exist).
    methods : list, optional
        Method names and ``(method, options)`` pairs, as for :func:`qviz.compare`;
        default :data:`DEFAULT_METHODS`.
    calib : array_like, shape (n_samples, n_cols), optional
        Activations; the same default as :func:`qviz.compare` without them.
    weight : array_like, optional
        The original weight behind a QuantResult ``obj``.
    title : str, optional

    Returns
    -------
    Path
        The file written: one HTML page with plotly.js embedded once.

    Examples
    --------
    >>> import numpy as np, qviz, tempfile, pathlib
    >>> w = np.random.default_rng(0).standard_normal((64, 512)).astype(np.float32)
    >>> path = qviz.report(w, pathlib.Path(tempfile.mkdtemp()) / "report.html", ["Q4_K", "Q8_0"])
    >>> path.read_text().count("plotly.js v")
    1
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder {str(path.parent)!r} of {str(path)!r} does not exist")
    settings = settings_of(DEFAULT_METHODS if methods is None else methods)
    layer, given = resolve_for(obj, settings, calib, weight=weight)
    if given is not None and given not in settings:
        settings.insert(0, given)
    outcomes = measure(layer, settings)
    ranking = rank(layer, settings, outcomes)
    to_html = _Figures()
    parts = [compare_plots.table_html(ranking.labels, ranking.rows, METRIC_COLUMNS)]
    if ranking.points:
        parts.append(to_html(compare_plots.pareto_figure(
            ranking.point_labels, ranking.bits_per_weight, ranking.error, ranking.error_name)))
    for i in ranking.points:
        parts.append(f"<h2>{html.escape(ranking.labels[i])}</h2>" + _section(outcomes[i], layer, to_html))
    title = title or f"qviz report: {layer.name}"
    acts = layer.calibration or "none (errors are weight errors)"
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{layer.shape[0]} × {layer.shape[1]} weights · activations: {html.escape(acts)} · "
            f"{datetime.date.today().isoformat()}</p>{''.join(parts)}</body></html>")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is for reading
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path

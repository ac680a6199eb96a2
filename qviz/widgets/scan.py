"""``scan``: how much every linear layer suffers under every quantization setting.

A grid of layers × settings. Each cell quantizes one weight one way
(:func:`qviz.quantize`) and measures the relative output error on the layer's
calibration inputs, or without calibration the weight SQNR and MSE. The cells
are independent, so the grid runs locally or, given a ``dask.distributed``
client, on a cluster: every weight (and its activations) is scattered once and
each cell is one task.

On a cluster, a worker that dies loses the cells it was running and the
weights scattered to it. Finished cells are kept; the scheduler reruns a cell
whose worker died (up to ``distributed.scheduler.allowed-failures`` times),
and cells lost with scattered data are sent again, weights re-scattered, up to
:data:`RESUBMITS` times. When cells still cannot finish, :func:`scan` raises
:class:`ScanIncomplete`, which says a worker died and holds the partial
:class:`ScanResult` (NaN in the cells that did not finish).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

#: the per-cell numbers, in the order ScanResult holds them
MEASURES = ("bits_per_weight", "mse", "sqnr_db", "max_abs_error", "relative_output_error")
#: times the cells a dying worker lost (with the weights scattered to it) are sent again
RESUBMITS = 3


@dataclass(frozen=True)
class ScanResult:
    """A sensitivity table: layers × settings.

    Attributes
    ----------
    layers : list of str
        Row names.
    settings : list of str
        Column names, the explorers' labels (``"Q4_K"``, ``"RTN 4-bit g128"``).
    types : list of list of str
        The method every cell really used (a GGUF type's fallback for rows it
        does not divide); ``""`` where the setting cannot store the layer.
    bits_per_weight, mse, sqnr_db, max_abs_error : ndarray, shape (n_layers, n_settings), float64
        NaN where skipped.
    relative_output_error : ndarray, shape (n_layers, n_settings), float64, or None
        ``‖(W - Ŵ)Xᵀ‖² / ‖WXᵀ‖²`` on the calibration inputs; None without them.
    notes : list of str
        Why cells were skipped (or, in :attr:`ScanIncomplete.result`, lost).
    """

    layers: list[str]
    settings: list[str]
    types: list[list[str]]
    bits_per_weight: np.ndarray
    mse: np.ndarray
    sqnr_db: np.ndarray
    max_abs_error: np.ndarray
    relative_output_error: np.ndarray | None = None
    notes: tuple[str, ...] = ()

    @property
    def metric(self) -> str:
        """The headline measure: ``"relative_output_error"`` with calibration, else ``"sqnr_db"``."""
        return "sqnr_db" if self.relative_output_error is None else "relative_output_error"

    @property
    def values(self) -> np.ndarray:
        """The headline measure, shape (n_layers, n_settings), float64."""
        return getattr(self, self.metric)

    def table(self) -> list[dict]:
        """One dict per cell (``pandas.DataFrame(result.table())``)."""
        rows = []
        for i, layer in enumerate(self.layers):
            for j, setting in enumerate(self.settings):
                row = {"layer": layer, "setting": setting, "type": self.types[i][j]}
                for m in MEASURES:
                    values = getattr(self, m)
                    if values is not None:
                        row[m] = float(values[i, j])
                rows.append(row)
        return rows

    def widget(self):
        """The table as a plotly heatmap (a :class:`~qviz.widgets.figure.FigureView`)."""
        from qviz.plots.gguf import sensitivity_heatmap
        from qviz.widgets.figure import FigureView

        return FigureView(sensitivity_heatmap(self.layers, self.settings, self.values,
                                                   self.metric, self.types, self.bits_per_weight))

    def _repr_mimebundle_(self, **kwargs):
        return self.widget()._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return (f"ScanResult({len(self.layers)} layers × {len(self.settings)} settings, "
                f"metric={self.metric!r})")


class ScanIncomplete(RuntimeError):
    """A scan on a cluster whose dead workers left cells unfinished.

    The message says that a worker died, how many cells finished and which
    were lost; ``result`` is the :class:`ScanResult` of the cells that did
    finish (NaN, type ``""`` and a note for each lost one).

    Attributes
    ----------
    result : ScanResult
        The partial scan.
    lost : list of (str, str)
        (layer, setting) of each cell that did not finish.
    """

    def __init__(self, message: str, result: ScanResult, lost: list[tuple[str, str]]):
        super().__init__(message)
        self.result = result
        self.lost = lost


def check_settings(settings) -> list:
    """Normalize ``settings`` to :class:`~qviz.session.Setting` s (the explorers' own).

    Option values are checked by the registry (:meth:`qviz.session.Setting.check`)
    before any cell runs: ``("rtn", {"bits": 9})`` raises "bits=9: choose an
    integer from 2 to 8", as :func:`qviz.quantize` would.

    Raises
    ------
    TypeError, ValueError
        For a malformed item, an unknown method or option, an option value
        out of range or of the wrong kind, or a repeated setting.
    """
    from qviz.session import Setting

    if isinstance(settings, (str, tuple)) or not isinstance(settings, Sequence) or not settings:
        raise TypeError(f"settings must be a non-empty list such as ['Q4_K', ('rtn', "
                        f"{{'bits': 4}})], got {settings!r}")
    out = [Setting.of(item).check() for item in settings]
    labels = [s.label for s in out]
    repeated = sorted({lab for lab in labels if labels.count(lab) > 1})
    if repeated:
        raise ValueError(f"settings repeat {repeated}; list each once")
    return out


def measure(w: np.ndarray, setting, x: np.ndarray | None = None) -> dict:
    """Quantize one weight one way: the numbers of one cell.

    Parameters
    ----------
    w : ndarray, shape (n_out, n_in), float32
    setting : qviz.session.Setting
        Quantized as the explorers do (:func:`~qviz.session.quantize_setting`):
        quant types with llama-quantize's fallback, calibrated methods (and an
        imatrix) from ``x``.
    x : ndarray, shape (n_samples, n_in), float32, optional
        The layer's inputs.

    Returns
    -------
    dict
        ``type`` (the method the result has) and the :data:`MEASURES` (the
        relative output error only with ``x``).

    Examples
    --------
    >>> import numpy as np
    >>> from qviz.session import Setting
    >>> w = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    >>> cell = measure(w, Setting.of("Q4_K"))
    >>> cell["type"], cell["bits_per_weight"]
    ('Q5_0', 5.5)
    """
    from qviz.metrics import summary
    from qviz.session import quantize_setting

    r = quantize_setting(w, setting, x)
    return {"type": r.method, **summary(r, w, x)}


def _skip_reason(setting, w: np.ndarray) -> str | None:
    """Why ``setting`` cannot store ``w`` (a quant type its rows do not fit), or None."""
    from qviz import registry
    from qviz.quantizers import resolve_type

    if registry.method(setting.method).quant_type is None:
        return None
    try:
        resolve_type(setting.method, w.shape[1], fallback=True)
    except ValueError as e:
        return str(e)
    return None


def layer_inputs(model, names: list[str], calib) -> dict[str, np.ndarray]:
    """Run ``model`` once on ``calib`` and record the input of each named ``nn.Linear``.

    Parameters
    ----------
    model : torch.nn.Module
    names : list of str
        ``named_modules`` names of the layers to record.
    calib : torch.Tensor or mapping of str to torch.Tensor
        Model inputs: ``model(calib)`` or ``model(**calib)`` (a tokenizer's output).

    Returns
    -------
    dict of str to ndarray, shape (n_tokens, n_in), float32
    """
    import torch

    modules = dict(model.named_modules())
    seen: dict[str, list] = {n: [] for n in names}
    hooks = [modules[n].register_forward_pre_hook(
        lambda m, args, n=n: seen[n].append(args[0].detach().reshape(-1, args[0].shape[-1])))
        for n in names]
    try:
        with torch.no_grad():
            model(**calib) if isinstance(calib, Mapping) else model(calib)
    finally:
        for h in hooks:
            h.remove()
    missing = [n for n, xs in seen.items() if not xs]
    if missing:
        raise ValueError(f"running the model on calib never called {missing[:3]}; "
                         f"scan those layers without calibration")
    return {n: torch.cat(xs).float().cpu().numpy() for n, xs in seen.items()}


def _activations(model, weights: dict, calib) -> dict[str, np.ndarray]:
    """Calibration inputs per layer, validated against each weight's width."""
    from qviz.arrays import as_activations

    if calib is None:
        return {}
    if isinstance(calib, Mapping) and set(calib) <= set(weights):
        acts = dict(calib)
    elif hasattr(model, "named_modules"):
        acts = layer_inputs(model, list(weights), calib)
    else:
        unknown = sorted(set(calib) - set(weights)) if isinstance(calib, Mapping) else []
        raise ValueError(f"calib must map layer names to their inputs (unknown names: "
                         f"{unknown[:3]}), or be model inputs when model is a torch module")
    return {n: as_activations(x, weights[n].shape[1], name=f"calib[{n!r}]") for n, x in acts.items()}


def _check_client(client):
    try:
        from distributed import Client
    except ImportError:
        raise ImportError("client= needs dask.distributed: pip install 'qviz[scan]' "
                          "(or pip install dask distributed)") from None
    if not isinstance(client, Client):
        raise TypeError(f"client must be a dask.distributed.Client, got {type(client).__name__}")
    return client


def _run_local(weights, acts, cells, bar):
    for i, j, name, setting in cells:
        yield (i, j), measure(weights[name], setting, acts.get(name))
        bar.update()


def _run_on_cluster(client, weights, acts, cells, bar, lost: dict):
    """Run ``cells`` on the cluster, yielding ((i, j), cell) as they finish.

    A cell lost with a dead worker is sent again in the next round (at most
    :data:`RESUBMITS` rounds), its weight and activations scattered again; a
    cell the scheduler gave up on (``KilledWorker``: its workers died more than
    ``allowed-failures`` times) is not. What could not finish is left in
    ``lost``: (i, j) -> the error. An error a cell raises itself (a bad
    setting) propagates as it is.
    """
    from concurrent.futures import CancelledError

    from distributed import KilledWorker, as_completed

    pending = list(cells)
    for _ in range(1 + RESUBMITS):
        names = list(dict.fromkeys(name for _, _, name, _ in pending))
        # lists, not dicts: a scattered dict's keys become task keys, and weights and
        # activations share their names. hash=False: content-hashed keys would be shared
        # with an earlier scan of the same arrays, whose clean-up below would cancel them.
        w_futures = dict(zip(names, client.scatter([weights[n] for n in names], hash=False)))
        with_x = [n for n in names if n in acts]
        x_futures = dict(zip(with_x, client.scatter([acts[n] for n in with_x], hash=False))) if with_x else {}
        # pure=False: a cell sent again is a new task, never the forgotten key of a lost one
        tasks = {client.submit(measure, w_futures[name], setting, x_futures.get(name), pure=False):
                 (i, j, name, setting) for i, j, name, setting in pending}
        again = []
        for i, j, _, _ in pending:
            lost.pop((i, j), None)
        try:
            for future in as_completed(tasks):
                cell = tasks[future]
                try:
                    value = future.result()
                except KilledWorker as e:  # the scheduler's retries are spent: final
                    lost[cell[:2]] = e
                    continue
                except CancelledError as e:  # its worker, or the data it needed, is gone
                    lost[cell[:2]] = e
                    again.append(cell)
                    continue
                yield cell[:2], value
                bar.update()
        finally:
            client.cancel([*tasks, *w_futures.values(), *x_futures.values()])
        if not again:
            return
        pending = again


def scan(model, settings, client=None, calib=None, *, layers=None, progress: bool = True) -> ScanResult:
    """Quantize every linear layer with every setting and measure the damage.

    Parameters
    ----------
    model : torch.nn.Module or mapping of str to array_like
        A model (its ``nn.Linear`` layers) or layer name -> (out, in) weight.
    settings : list
        Method names (``"Q4_K"``, ``"rtn"``) or ``(method, options)`` pairs
        (``("rtn", {"bits": 4, "group_size": 128})``, ``("Q4_K", {"imatrix": True})``),
        the options the explorers offer. GGUF types use llama-quantize's
        fallback for rows they do not divide; a cell neither fits is skipped.
    client : dask.distributed.Client, optional
        Run the cells on this cluster (weights scattered once, one task per
        cell); by default they run here, one after the other.
    calib : optional
        Calibration: layer name -> inputs (n_samples, n_in), or, for a torch
        model, model inputs (a tensor, or a mapping such as a tokenizer's
        output) from which every layer's inputs are recorded. With it the
        headline measure is the relative output error, and methods that take
        calibration (GPTQ, AWQ, an imatrix) get the layer's inputs.
    layers : str or list of str, optional
        fnmatch patterns of the layers to scan (default: all).
    progress : bool
        Show a progress bar (tqdm).

    Returns
    -------
    ScanResult
        Displays as a heatmap in a notebook; ``.table()`` lists every cell.

    Raises
    ------
    ScanIncomplete
        When dask workers died and some cells could not be finished even
        after the scheduler's reruns and :data:`RESUBMITS` rounds of sending
        lost cells again; its ``.result`` is the partial ScanResult (NaN
        where lost) and its message says a worker died.
    TypeError, ValueError
        For bad settings (option values are checked before any cell runs:
        "bits=9: choose an integer from 2 to 8"), layers or calibration.

    Examples
    --------
    >>> import qviz
    >>> weights = {n: qviz.demo.layer(n) for n in ["encoder.layer.0.attention.self.query",
    ...                                            "encoder.layer.0.output.dense"]}
    >>> s = scan(weights, ["Q4_K", ("rtn", {"bits": 8})], progress=False)
    >>> s.types
    [['Q5_0', 'rtn'], ['Q4_K', 'rtn']]
    >>> s.settings
    ['Q4_K', 'RTN 8-bit g128']
    >>> bool((s.sqnr_db[:, 1] > s.sqnr_db[:, 0]).all())
    True
    """
    from tqdm.auto import tqdm

    from qviz.plan import named_weights
    from qviz.session import needs_calibration

    settings = check_settings(settings)
    if client is not None:
        client = _check_client(client)
    weights = named_weights(model, layers)
    acts = _activations(model, weights, calib)
    names = list(weights)
    uncalibrated = [n for n in names if n not in acts]
    for s in settings:
        if needs_calibration(s.method, s.kwargs) and uncalibrated:
            raise ValueError(f"{s.label} needs each layer's inputs, and {uncalibrated[:3]} have "
                             f"none: pass calib= (model inputs, or layer name -> activations)")
    shape = (len(names), len(settings))
    table = {m: np.full(shape, np.nan) for m in MEASURES}
    types = [[""] * len(settings) for _ in names]
    notes, cells = [], []
    for i, name in enumerate(names):
        for j, s in enumerate(settings):
            reason = _skip_reason(s, weights[name])
            if reason is None:
                cells.append((i, j, name, s))
            else:
                notes.append(f"{name} × {s.label}: {reason}")
    lost: dict = {}
    with tqdm(total=len(cells), desc="scan", unit="cell", disable=not progress) as bar:
        run = _run_local(weights, acts, cells, bar) if client is None else \
            _run_on_cluster(client, weights, acts, cells, bar, lost)
        for (i, j), cell in run:
            types[i][j] = cell["type"]
            for m in MEASURES:
                table[m][i, j] = cell.get(m, np.nan)
    lost_cells = [(names[i], settings[j].label) for i, j in sorted(lost)]
    notes += [f"{name} × {label}: lost, a dask worker died running it ({type(lost[cell]).__name__})"
              for (name, label), cell in zip(lost_cells, sorted(lost))]
    result = ScanResult(names, [s.label for s in settings], types,
                        table["bits_per_weight"], table["mse"], table["sqnr_db"],
                        table["max_abs_error"],
                        table["relative_output_error"] if acts else None, tuple(notes))
    if lost:
        shown = ", ".join(f"{n} × {lab}" for n, lab in lost_cells[:3]) + (" …" if len(lost) > 3 else "")
        last = next(reversed(lost.values()))
        raise ScanIncomplete(
            f"a dask worker died and the cluster could not finish {len(lost)} of {len(cells)} cells "
            f"({shown}; last error: {type(last).__name__}: {last}); the {len(cells) - len(lost)} "
            f"cells that finished are in this error's .result (a ScanResult, NaN where lost)",
            result, lost_cells)
    return result

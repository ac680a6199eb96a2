"""The session model: a layer, its activations, its settings and their summaries.

What the explorers (:mod:`qviz.widgets`) and the static report
(:mod:`qviz.html_report`) share; no widgets here. A :class:`Layer` holds one
float32 weight, the activations the output error and the calibrated methods
use (given, or a default that says what it is), the weight's histogram
(computed once) and a cache of :class:`~qviz.summary.LayerSummary` per
:class:`Setting`. Quantization happens only in :func:`quantize_setting`,
through :func:`qviz.quantize`.

What a method is called, which options its controls show and whether it
takes the layer's activations all come from its record in :mod:`qviz.registry`.

>>> layer, _ = resolve(np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32))
>>> layer.summary(Setting.of("q4_k")).metrics["bits_per_weight"]
4.5
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from qviz import api, registry
from qviz.arrays import as_activations, as_weight
from qviz.io import calib as calib_io
from qviz.registry import Option
from qviz.result import QuantResult
from qviz.summary import GroupDetail, LayerSummary, decode_rows, group_detail, summarize, weight_stats

log = logging.getLogger(__name__)

ACCEPTED = ("an nn.Linear (or any module with .weight), a 2-D torch tensor or numpy array, "
            "(model, 'layer.name'), a QuantResult, (gguf_path, 'tensor.name'), "
            "or the name of a bundled MiniLM layer (qviz.demo.layers())")
#: summaries kept per layer (the given result is kept besides)
MAX_CACHED = 8
#: samples of the default random-normal activations
N_RANDOM = 128
#: rows of real MiniLM inputs kept per layer, and 128-token sequences run to get them
N_REAL = 512
N_SEQUENCES = 8
#: the one on/off control that stands for a method's importance option
IMATRIX = Option("imatrix", "bool", False, "importance per input column, computed from the layer's "
                 "activations (qviz.imatrix): llama.cpp's imatrix", control=True)
#: the on/off control every method gets: quantize W·R for a randomized Hadamard R (qviz.rotation)
ROTATE = Option("rotate", "bool", False, "quantize the weight after a randomized Hadamard rotation of its "
                "inputs (QuaRot): outliers spread out", control=True)


def method_label(method: str) -> str:
    """``"RTN"``, ``"GPTQ"``, ``"k-means"``, ``"Q4_K"`` … (the registry's label)."""
    return registry.method(method).label


def control_options(method: str) -> tuple[Option, ...]:
    """The options a method's controls show: ``registry.method(method).controls``, then :data:`ROTATE`.

    The option whose role is ``"importance"`` is shown as :data:`IMATRIX`, an
    on/off switch: the explorers compute the importance from the layer's
    activations. It starts on where the method cannot do without it (IQ2_XXS,
    IQ2_XS, IQ1_S). Every method can run after a rotation (``rotate=`` of
    :func:`qviz.quantize`), shown as the on/off :data:`ROTATE`.
    """
    return (*((IMATRIX if o.optional else dataclasses.replace(IMATRIX, default=True))
              if o.role == "importance" else o for o in registry.method(method).controls), ROTATE)


def method_options(method: str) -> dict[str, object]:
    """The options a method's controls show, with their defaults (:func:`control_options`).

    Examples
    --------
    >>> method_options("rtn")
    {'bits': 4, 'group_size': 128, 'sym': False, 'per_tensor': False, 'rotate': False}
    >>> method_options("Q4_K")
    {'imatrix': False, 'rotate': False}
    """
    return {o.name: o.default for o in control_options(method)}


def needs_calibration(method: str, options: dict | None = None) -> bool:
    """Whether a setting uses activations: the imatrix is on, or the method takes them (GPTQ, AWQ)."""
    return bool((options or {}).get("imatrix")) or registry.method(method).takes_calibration


def _option_text(key: str, value) -> str:
    if key == "bits":
        return f"{value}-bit"
    if key == "group_size":
        return "per-channel" if value == -1 else f"g{value}"
    if isinstance(value, bool):
        return key.replace("_", "-") if value else ""
    return f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"


@dataclasses.dataclass(frozen=True)
class Setting:
    """A method and its options: one point of ``compare``, one state of ``explore``.

    ``options`` holds every option of :func:`method_options` (defaults filled
    in), sorted, so equal settings are equal keys.
    """

    method: str
    options: tuple[tuple[str, object], ...] = ()

    @classmethod
    def of(cls, item) -> Setting:
        """A Setting from ``"Q4_K"``, ``("rtn", {"bits": 3})`` or a Setting.

        Raises
        ------
        TypeError
            For anything else, or for options the method does not take.
        ValueError
            For an unknown method (the registry's error, naming the closest
            names). A unique case-insensitive spelling is the registered name.
        """
        if isinstance(item, Setting):
            return item
        if isinstance(item, str):
            method, given = item, {}
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) \
                and isinstance(item[1], dict):
            method, given = item
        else:
            raise TypeError(f"a setting is a method name such as 'Q4_K' or a pair "
                            f"(method, options dict) such as ('rtn', {{'bits': 3}}); got {item!r}")
        method = registry.method(method).name
        options = method_options(method)
        unknown = sorted(set(given) - set(options))
        if unknown:
            raise TypeError(f"method {method!r} takes no option(s) {', '.join(unknown)} here; "
                            f"its options are: {', '.join(options) or 'none'}")
        options.update(given)
        return cls(method, tuple(sorted(options.items())))

    def check(self) -> Setting:
        """This setting, its option values checked as :func:`qviz.quantize` checks them.

        Each value is checked by its registry record (:meth:`qviz.registry.Option.check`
        of :func:`control_options`, where ``imatrix`` is on/off), so an
        explorer refuses ``bits=9`` with the message ``qviz.quantize`` gives
        ("bits=9: choose an integer from 2 to 8") before it builds controls.

        Returns
        -------
        Setting
            Equal to this one, numpy numbers as Python ones.

        Raises
        ------
        ValueError
            For a value out of range or not among the choices.
        TypeError
            For a value of the wrong kind (``sym="yes"``).

        Examples
        --------
        >>> Setting.of(("rtn", {"bits": 9})).check()
        Traceback (most recent call last):
        ...
        ValueError: bits=9: choose an integer from 2 to 8
        """
        imatrix = dict(self.options).get("imatrix", False)
        if not isinstance(imatrix, (bool, np.bool_)):
            raise TypeError(f"{self.method}: imatrix is on or off here (got {type(imatrix).__name__}): "
                            f"pass imatrix=True and calib= (the layer's inputs), and the imatrix is "
                            f"computed from them (qviz.imatrix)")
        schema = {o.name: o for o in control_options(self.method)}
        options = tuple((k, schema[k].check(self.method, bool(v) if k == "imatrix" else v))
                        for k, v in self.options)
        return dataclasses.replace(self, options=options)

    @property
    def kwargs(self) -> dict:
        return dict(self.options)

    @property
    def label(self) -> str:
        """Short text, e.g. ``"RTN 4-bit g128"``, ``"Q4_K imatrix"``."""
        defaults = method_options(self.method)
        parts = [method_label(self.method)]
        for key, value in self.options:
            if key in ("bits", "group_size") or value != defaults.get(key):
                parts.append(_option_text(key, value))
        return " ".join(p for p in parts if p)


def setting_of(result: QuantResult) -> Setting:
    """The setting a result was (most likely) made with, for the controls to start from."""
    method = registry.method(result.info.get("requested", result.method)).name
    options = method_options(method)
    for key in options:
        if key in result.info and isinstance(result.info[key], (bool, int, float)):
            options[key] = type(options[key])(result.info[key])
    if "bits" in options:
        options["bits"] = int(result.bits)
    if "group_size" in options:
        options["group_size"] = -1 if result.group_size >= result.shape[1] else int(result.group_size)
    if "sym" in options:
        options["sym"] = result.zeros is None and result.mins is None
    if "act_order" in options:
        options["act_order"] = result.g_idx is not None or bool(result.info.get("act_order", False))
    options["rotate"] = result.rotation is not None
    return Setting(method, tuple(sorted(options.items())))


def quantize_setting(w: np.ndarray, setting: Setting, x: np.ndarray | None) -> QuantResult:
    """``qviz.quantize`` of ``w`` under ``setting``, handing over the activations it needs.

    The method's ``"calibration"`` option gets ``x``; with ``imatrix`` on, its
    ``"importance"`` option gets ``qviz.imatrix(x)``. With ``rotate`` on, the
    weight and ``x`` are rotated first (:func:`rotation_of`). Quant types use
    llama-quantize's fallback for rows that do not fit their blocks
    (``fallback=True``).

    Raises
    ------
    ValueError
        When the setting needs activations and ``x`` is None, and whatever
        ``qviz.quantize`` raises for a bad setting.
    """
    kwargs = setting.kwargs
    if needs_calibration(setting.method, kwargs) and x is None:
        raise ValueError(f"{setting.label} needs calibration activations; pass calib= "
                         f"(the layer's inputs, n_samples × {w.shape[1]})")
    m = registry.method(setting.method)
    R = rotation_of(w) if kwargs.pop("rotate", False) else None
    if R is not None and x is not None:
        x = R.apply(x)  # what the rotated layer's quantizer sees
    importance, calibration = m.role("importance"), m.role("calibration")
    if kwargs.pop("imatrix", False) and importance is not None:
        kwargs[importance] = calib_io.imatrix(x, w.shape[1])
    if calibration is not None:
        kwargs[calibration] = x
    if m.quant_type is not None:
        kwargs["fallback"] = True
    if R is not None:
        return api.quantize_rotated(w, m.name, R, **kwargs)
    return api.quantize(w, m.name, **kwargs)


def rotation_of(w: np.ndarray):
    """The rotation the explorers' ``rotate`` switch applies: ``qviz.rotation.hadamard(n_cols)``, seed 0."""
    from qviz.rotation import hadamard

    return hadamard(w.shape[1])


def fallback_note(result: QuantResult) -> str | None:
    """``"Q4_K → Q5_0 for 384-wide rows …"`` when llama-quantize's fallback was used."""
    requested = result.info.get("requested")
    if requested is None or requested == result.method:
        return None
    block = registry.quant_type(requested).block_size
    return (f"{requested} → {result.method} for {result.shape[1]}-wide rows "
            f"(rows are not a multiple of {requested}'s {block}-weight blocks; "
            f"llama-quantize falls back to {result.method})")


def _demo_name(w: np.ndarray) -> str | None:
    """The bundled MiniLM layer ``w`` is (the very array ``qviz.demo.layer`` returned), if any."""
    if 384 not in w.shape:  # every MiniLM matrix has the hidden size 384 on one side
        return None
    try:
        from qviz.io import demo

        return next((n for n in demo.layers() if demo.layer(n) is w), None)
    except (ImportError, OSError):
        return None


@functools.lru_cache(maxsize=1)
def _minilm_inputs() -> dict[str, np.ndarray]:
    """Sampled inputs of every Linear layer of the bundled MiniLM on the bundled text."""
    from qviz.io import models

    model, tokenizer = models.load_minilm()
    stats = calib_io.capture(model, tokenizer, max_samples=N_REAL, hessian=False, seq_len=128,
                             n_sequences=N_SEQUENCES, progress=False)
    return {name: st.sample for name, st in stats.items()}


def default_activations(name: str | None, n_cols: int) -> tuple[np.ndarray, str]:
    """Activations for a layer whose user gave none, and a sentence saying which.

    For a Linear layer of the bundled MiniLM: its real inputs, ``N_REAL`` rows
    sampled from ``N_SEQUENCES`` × 128 tokens of the bundled calibration text
    (``qviz.io.calib.capture``, computed once per process). Otherwise (or when
    that fails) ``N_RANDOM`` random-normal rows, seed 0.
    """
    if name is not None:
        try:
            inputs = _minilm_inputs()
            if name in inputs:
                x = as_activations(inputs[name], n_cols)
                return x, (f"real inputs of this MiniLM layer: {x.shape[0]} token rows sampled from "
                           f"{N_SEQUENCES} × 128 tokens of Python's pydoc_data.topics text")
        except Exception:  # a default must not break the explorer; say random instead
            log.warning("no MiniLM activations for %s; using random-normal ones", name, exc_info=True)
    x = np.random.default_rng(0).standard_normal((N_RANDOM, n_cols)).astype(np.float32)
    return x, (f"random-normal activations ({N_RANDOM} × {n_cols}, seed 0): no calibration "
               f"was given; pass calib= for the layer's real inputs")


class Layer:
    """One weight under exploration: activations, histogram, cached summaries.

    Attributes
    ----------
    name : str
    weight : ndarray, shape (n_rows, n_cols), float32
        The reference the errors are measured against (read only).
    x : ndarray, shape (n_samples, n_cols), float32, or None
        Activations for GPTQ/AWQ, the imatrix and the output error.
    calibration : str
        Which activations ``x`` are, in words ("" when None).
    has_weight : bool
        False when only a QuantResult was given: ``weight`` is its decoding.
    given : Setting or None
        The setting of a given result, kept in the cache for good.
    """

    def __init__(self, name: str, weight: np.ndarray, x: np.ndarray | None, calibration: str,
                 has_weight: bool = True, given: QuantResult | None = None):
        self.name = name
        self.weight = weight
        self.x = x
        self.calibration = calibration if x is not None else ""
        self.has_weight = has_weight
        self.stats = weight_stats(weight, x)
        self._rotation_key, self._rotation = None, None  # (W·R, its WeightStats) of the last rotation
        self._cache: collections.OrderedDict[Setting, LayerSummary] = collections.OrderedDict()
        self._scratch = None
        self._pinned: dict[Setting, LayerSummary] = {}
        self.given = None
        if given is not None:
            self.given = setting_of(given) if has_weight else Setting(given.method)
            self._pinned[self.given] = summarize(given, weight, self.stats_for(given), None,
                                                 self.rotated_weight(given))

    @property
    def shape(self) -> tuple[int, int]:
        return self.weight.shape

    def stats_for(self, result: QuantResult):
        """:attr:`stats`, or those of ``W·R`` and ``X·R`` for a result quantized after rotation ``R``."""
        if result.rotation is None:
            return self.stats
        return self._rotated(result.rotation)[1]

    def rotated_weight(self, result: QuantResult) -> np.ndarray | None:
        """``W·R`` for a result quantized after rotation ``R`` (kept for the last rotation), else None."""
        return None if result.rotation is None else self._rotated(result.rotation)[0]

    def _rotated(self, R) -> tuple:
        key = (R.kind, R.block, R.seed)
        if self._rotation_key != key:  # one rotation kept: the explorers' switch uses one R per layer
            w_rot = R.apply(self.weight)
            self._rotation = (w_rot, weight_stats(w_rot, None if self.x is None else R.apply(self.x)))
            self._rotation_key = key
        return self._rotation

    def summary(self, setting: Setting) -> LayerSummary:
        """The summary of ``setting``: cached, else quantized and measured now."""
        if setting in self._pinned:
            return self._pinned[setting]
        if setting in self._cache:
            self._cache.move_to_end(setting)
            return self._cache[setting]
        if self._scratch is None:  # W − Ŵ of every summary, one buffer (see summarize)
            self._scratch = np.empty(self.weight.shape, np.float32)
        result = quantize_setting(self.weight, setting, self.x)
        s = summarize(result, self.weight, self.stats_for(result), self._scratch,
                      self.rotated_weight(result))
        self._cache[setting] = s
        while len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)
        return s

    def group_detail(self, s: LayerSummary, row: int, group: int) -> GroupDetail:
        """Group ``group`` of row ``row`` of ``s``'s result, decoded, with this layer's weights there.

        What :func:`qviz.plots.layer.group_detail` draws (:func:`qviz.summary.group_detail`).
        """
        return group_detail(s.result, self.weight, row, group)


def _is_gguf_path(a) -> bool:
    return isinstance(a, (str, os.PathLike)) and str(a).endswith(".gguf")


def _from_gguf(path, tensor: str) -> tuple[np.ndarray, QuantResult | None, str]:
    from qviz.io import gguf

    f = gguf.read(path)
    info = f.tensor(tensor)
    if info.type_name in registry.TYPES:  # decoded by qviz's kernel: bit-exact ggml, and fast
        result = f.result(tensor)
        weight = decode_rows(result, 0, result.shape[0])
    else:
        result, weight = None, as_weight(f.decode(tensor), name=f"tensor {tensor!r}")
    return weight, result, f"{Path(path).name}: {tensor} ({info.type_name})"


def resolve(obj, calib=None, *, weight=None, default_calib: bool = True) -> tuple[Layer, Setting | None]:
    """Turn what a user hands an explorer into a :class:`Layer` (and a starting setting).

    Parameters
    ----------
    obj
        See :data:`ACCEPTED`.
    calib : array_like, shape (n_samples, n_cols), optional
        The layer's input activations.
    weight : array_like, optional
        The original weight behind a QuantResult ``obj``.
    default_calib : bool
        Without ``calib``, use :func:`default_activations` (True), or none.

    Raises
    ------
    TypeError
        For an object of another kind, naming the accepted kinds.
    """
    given, has_weight, demo_name = None, True, None
    if isinstance(obj, QuantResult):
        given = obj
        if weight is None:
            w, has_weight = obj.dequantize(), False
        else:
            w = as_weight(weight)
            if w.shape != obj.shape:
                raise ValueError(f"weight has shape {w.shape} but the result is {obj.shape}")
        name = f"{method_label(obj.method)} result"
    elif isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[1], str) and _is_gguf_path(obj[0]):
        w, given, name = _from_gguf(*obj)
    elif isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[1], str) \
            and hasattr(obj[0], "get_submodule"):
        try:
            module = obj[0].get_submodule(obj[1])
        except AttributeError as e:
            raise KeyError(f"the model has no submodule {obj[1]!r} ({e})") from None
        w, name = as_weight(module, name=obj[1]), obj[1]
    elif isinstance(obj, str):
        from qviz.io import demo

        w, name = demo.layer(obj), obj
        demo_name = obj.removesuffix(".weight")
    elif hasattr(obj, "weight") or hasattr(obj, "detach") or isinstance(obj, np.ndarray):
        w = as_weight(obj)
        demo_name = _demo_name(w)
        name = demo_name or f"{type(obj).__name__} {w.shape[0]} × {w.shape[1]}"
    else:
        raise TypeError(f"cannot explore a {type(obj).__name__}; pass {ACCEPTED}")
    if calib is not None:
        x = as_activations(calib, w.shape[1])
        source = f"the given activations ({x.shape[0]} samples)"
    elif default_calib and has_weight:
        x, source = default_activations(demo_name, w.shape[1])
    else:
        x, source = None, ""
    layer = Layer(name, w, x, source, has_weight, given)
    return layer, layer.given


#: metric key -> column title, for the comparison tables
METRIC_COLUMNS = {"bits_per_weight": "bits per weight", "mse": "MSE", "sqnr_db": "SQNR (dB)",
                  "max_abs_error": "max |W − Ŵ|", "relative_output_error": "relative output error"}


def measure(layer: Layer, settings: list[Setting]) -> list[LayerSummary | str]:
    """Each setting's summary, or the message of the error it raised."""
    out: list[LayerSummary | str] = []
    for setting in settings:
        try:
            out.append(layer.summary(setting))
        except Exception as e:  # one bad setting is one row's message, not a failed comparison
            log.info("%s failed", setting.label, exc_info=True)
            out.append(f"{type(e).__name__}: {e}")
    return out


def error_key(layer: Layer) -> tuple[str, str]:
    """The error a comparison ranks by: the output error with activations, else MSE."""
    if layer.x is not None:
        return "relative_output_error", "relative output error"
    return "mse", "MSE"


class Ranking(NamedTuple):
    """Settings measured on one layer, as the comparison table and the Pareto plot show them.

    labels : list of str                  one per setting
    rows : list of (dict or str)          each setting's metrics, or the message of its error
    points : list of int                  the settings that worked, in order
    bits_per_weight : list of float       of each point
    error : list of float                 of each point: the measure :func:`error_key` names
    error_name : str                      what ``error`` is, e.g. "relative output error"
    """

    labels: list[str]
    rows: list
    points: list[int]
    bits_per_weight: list[float]
    error: list[float]
    error_name: str

    @property
    def point_labels(self) -> list[str]:
        """The label of each point."""
        return [self.labels[i] for i in self.points]


def rank(layer: Layer, settings: list[Setting], outcomes: list[LayerSummary | str]) -> Ranking:
    """The table rows and Pareto points of ``outcomes`` (:func:`measure` of ``settings``)."""
    key, name = error_key(layer)
    points = [i for i, o in enumerate(outcomes) if not isinstance(o, str)]
    return Ranking([s.label for s in settings], [o if isinstance(o, str) else o.metrics for o in outcomes],
                   points, [outcomes[i].metrics["bits_per_weight"] for i in points],
                   [outcomes[i].metrics.get(key, float("nan")) for i in points], name)


def resolve_for(obj, settings: list[Setting], calib=None, *, weight=None) -> tuple[Layer, Setting | None]:
    """:func:`resolve` for a comparison: default activations only when a setting needs some.

    Without ``calib`` and without a setting that uses activations (GPTQ, AWQ,
    an imatrix), the layer has none and the comparison ranks by MSE.
    """
    wants = calib is not None or any(needs_calibration(s.method, s.kwargs) for s in settings)
    return resolve(obj, calib, weight=weight, default_calib=wants)


def settings_of(methods) -> list[Setting]:
    """Settings from a list of method names and (method, options) pairs."""
    if isinstance(methods, (str, tuple)) or not hasattr(methods, "__iter__"):
        raise TypeError(f"methods must be a list of method names or (method, options) pairs, "
                        f"e.g. ['Q4_K', ('rtn', {{'bits': 3}})]; got {methods!r}")
    settings = [Setting.of(m) for m in methods]
    if not settings:
        raise ValueError("methods is empty; give at least one method name")
    return settings

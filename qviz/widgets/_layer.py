"""What the explorers and the report share: the layer, its activations, settings, a cache.

No widgets here (``qviz.html_report`` uses it too). A :class:`Layer` holds one
float32 weight, the activations the output error and the calibrated methods
use (given, or a default that says what it is), the weight's histogram
(computed once) and a cache of :class:`~qviz.plots.summary.LayerSummary` per
:class:`Setting`. Quantization happens only in :func:`quantize_setting`,
through :func:`qviz.quantize`.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import inspect
import logging
import os
from pathlib import Path

import numpy as np

from qviz import api
from qviz.arrays import as_activations, as_weight
from qviz.formats.spec import FORMATS
from qviz.io import calib as calib_io
from qviz.plots.summary import LayerSummary, decode_rows, summarize, weight_stats
from qviz.result import QuantResult

log = logging.getLogger(__name__)

ACCEPTED = ("an nn.Linear (or any module with .weight), a 2-D torch tensor or numpy array, "
            "(model, 'layer.name'), a QuantResult, (gguf_path, 'tensor.name'), "
            "or the name of a bundled MiniLM layer (qviz.demo.layers())")
#: parameters through which a method receives the layer's activations
CALIB_PARAMS = ("calib", "x", "activations")
#: parameters through which a method receives an importance per input column; the
#: explorers show them as one "imatrix" on/off option, the imatrix of the activations
IMPORTANCE_PARAMS = ("imatrix", "importance")
#: parameters the explorers never show (the explorers set or ignore them)
HIDDEN = ("w", "name", "hessian", "backend", "fallback", "blocksize", "static_groups",
          "random_state", "seed", "device")
#: display names of methods (GGUF types keep their upstream spelling)
METHOD_LABELS = {"rtn": "RTN", "gptq": "GPTQ", "awq": "AWQ", "kmeans": "k-means", "nf4": "NF4"}
#: summaries kept per layer (the given result is kept besides)
MAX_CACHED = 8
#: samples of the default random-normal activations
N_RANDOM = 128
#: rows of real MiniLM inputs kept per layer, and 128-token sequences run to get them
N_REAL = 512
N_SEQUENCES = 8


def method_label(method: str) -> str:
    """``"RTN"``, ``"GPTQ"``, ``"k-means"``, ``"Q4_K"`` …"""
    return METHOD_LABELS.get(method, method)


def _function(method: str):
    if method in FORMATS:
        return api.quantize_gguf
    try:
        return api.METHODS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; valid methods: "
                         f"{', '.join(api.method_names())}") from None


def method_options(method: str) -> dict[str, object]:
    """The options a method's controls show, with their defaults.

    Derived from the method's signature in :data:`qviz.api.METHODS`: every
    keyword with a bool, int or float default, except :data:`HIDDEN`, and
    ``imatrix`` (on/off) for a method that takes an importance per column
    (:data:`IMPORTANCE_PARAMS`; it is computed from the layer's activations).
    The GGUF types have that one option.

    Examples
    --------
    >>> method_options("rtn")
    {'bits': 4, 'group_size': 128, 'sym': False, 'per_tensor': False}
    >>> method_options("Q4_K")
    {'imatrix': False}
    """
    if method in FORMATS:
        return {"imatrix": False}
    out = {}
    for p in inspect.signature(_function(method)).parameters.values():
        if p.name in HIDDEN or p.name in CALIB_PARAMS or p.default is inspect.Parameter.empty:
            continue
        if p.name in IMPORTANCE_PARAMS:
            out["imatrix"] = False
        elif isinstance(p.default, (bool, int, float)):
            out[p.name] = p.default
    return out


def needs_calibration(method: str, options: dict | None = None) -> bool:
    """Whether a setting uses activations (GPTQ/AWQ, or an imatrix)."""
    if (options or {}).get("imatrix"):
        return True
    if method in FORMATS:
        return False
    return any(p in CALIB_PARAMS for p in inspect.signature(_function(method)).parameters)


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
            For an unknown method.
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
        options = method_options(method)
        unknown = sorted(set(given) - set(options))
        if unknown:
            raise TypeError(f"method {method!r} takes no option(s) {', '.join(unknown)} here; "
                            f"its options are: {', '.join(options) or 'none'}")
        options.update(given)
        return cls(method, tuple(sorted(options.items())))

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
    method = result.info.get("requested", result.method)
    if method not in FORMATS and method not in api.METHODS:
        raise ValueError(f"{method!r} is not a method qviz.quantize knows")
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
    return Setting(method, tuple(sorted(options.items())))


def quantize_setting(w: np.ndarray, setting: Setting, x: np.ndarray | None) -> QuantResult:
    """``qviz.quantize`` of ``w`` under ``setting``, handing over the activations it needs.

    GGUF types use llama-quantize's fallback for rows that do not fit their
    blocks (``fallback=True``) and, with ``imatrix`` on, the importance of ``x``.

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
    params = inspect.signature(_function(setting.method)).parameters
    importance = calib_io.imatrix(x, w.shape[1]) if kwargs.pop("imatrix", False) else None
    kwargs.update({p: importance for p in IMPORTANCE_PARAMS if p in params and importance is not None})
    kwargs.update({p: x for p in CALIB_PARAMS if p in params})
    if setting.method in FORMATS:
        kwargs["fallback"] = True
    return api.quantize(w, setting.method, **kwargs)


def fallback_note(result: QuantResult) -> str | None:
    """``"Q4_K → Q5_0 for 384-wide rows …"`` when llama-quantize's fallback was used."""
    requested = result.info.get("requested")
    if requested is None or requested == result.method:
        return None
    block = FORMATS[requested].block_size
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
        self._cache: collections.OrderedDict[Setting, LayerSummary] = collections.OrderedDict()
        self._scratch = None
        self._pinned: dict[Setting, LayerSummary] = {}
        self.given = None
        if given is not None:
            self.given = setting_of(given) if has_weight else Setting(given.method)
            self._pinned[self.given] = summarize(given, weight, self.stats)

    @property
    def shape(self) -> tuple[int, int]:
        return self.weight.shape

    def summary(self, setting: Setting) -> LayerSummary:
        """The summary of ``setting``: cached, else quantized and measured now."""
        if setting in self._pinned:
            return self._pinned[setting]
        if setting in self._cache:
            self._cache.move_to_end(setting)
            return self._cache[setting]
        if self._scratch is None:  # W − Ŵ of every summary, one buffer (see summarize)
            self._scratch = np.empty(self.weight.shape, np.float32)
        s = summarize(quantize_setting(self.weight, setting, self.x), self.weight, self.stats,
                      self._scratch)
        self._cache[setting] = s
        while len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)
        return s


def _is_gguf_path(a) -> bool:
    return isinstance(a, (str, os.PathLike)) and str(a).endswith(".gguf")


def _from_gguf(path, tensor: str) -> tuple[np.ndarray, QuantResult | None, str]:
    from qviz.io import gguf

    f = gguf.read(path)
    info = f.tensor(tensor)
    if info.type_name in FORMATS:  # decoded by qviz's kernel: bit-exact ggml, and fast
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


def settings_of(methods) -> list[Setting]:
    """Settings from a list of method names and (method, options) pairs."""
    if isinstance(methods, (str, tuple)) or not hasattr(methods, "__iter__"):
        raise TypeError(f"methods must be a list of method names or (method, options) pairs, "
                        f"e.g. ['Q4_K', ('rtn', {{'bits': 3}})]; got {methods!r}")
    settings = [Setting.of(m) for m in methods]
    if not settings:
        raise ValueError("methods is empty; give at least one method name")
    return settings

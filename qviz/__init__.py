"""qviz: see what LLM weight quantization does.

Exact RTN and GGUF (llama.cpp) types on real layers, with the numbers a user
can check: ``quantize``, ``dequantize``, :class:`QuantResult`, ``metrics``, and
the bundled real models in ``demo``.

>>> import qviz
>>> w = qviz.demo.layer("encoder.layer.0.intermediate.dense")
>>> r = qviz.quantize(w, "rtn", bits=4, group_size=128)
>>> round(r.bits_per_weight, 4)
4.1562

``import qviz`` stays light: numpy only. torch, numba, plotly and ipywidgets
load when a function needs them.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> (module, attribute); attribute None means the module itself
_EXPORTS = {
    "quantize": ("qviz.api", "quantize"),
    "dequantize": ("qviz.api", "dequantize"),
    "method_names": ("qviz.api", "method_names"),
    "methods": ("qviz.registry", "methods"),
    "types": ("qviz.registry", "types"),
    "register_type": ("qviz.registry", "register_type"),
    "register_method": ("qviz.registry", "register_method"),
    "registry": ("qviz.registry", None),
    "to_quantized_modules": ("qviz.models.qlinear", "to_quantized_modules"),
    "QuantResult": ("qviz.result", "QuantResult"),
    "FORMATS": ("qviz.registry", "TYPES"),
    "imatrix": ("qviz.io.calib", "imatrix"),
    "gguf": ("qviz.io.gguf", None),
    "metrics": ("qviz.metrics", None),
    "explore": ("qviz.widgets.explore", "explore"),
    "compare": ("qviz.widgets.compare", "compare"),
    "scan": ("qviz.widgets.scan", "scan"),
    "explore_gguf": ("qviz.widgets.gguf_file", "explore_gguf"),
    "suggest_types": ("qviz.plan", "suggest_types"),
    "report": ("qviz.html_report", "report"),
    "quantize_model": ("qviz.models.quantize_model", "quantize_model"),
    "demo": ("qviz.io.demo", None),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'qviz' has no attribute {name!r}") from None
    mod = importlib.import_module(module)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))

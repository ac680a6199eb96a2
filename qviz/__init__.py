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

#: module -> the public names it gives the top level, under the same names
_FUNCTIONS = {
    "qviz.api": ("quantize", "dequantize", "method_names"),
    "qviz.registry": ("methods", "types", "register_type", "register_method"),
    "qviz.result": ("QuantResult",),
    "qviz.io.calib": ("imatrix",),
    "qviz.io.imatrix": ("read_imatrix", "write_imatrix"),
    "qviz.models.qlinear": ("to_quantized_modules",),
    "qviz.models.quantize_model": ("quantize_model",),
    "qviz.widgets.explore": ("explore",),
    "qviz.widgets.compare": ("compare",),
    "qviz.widgets.scan": ("scan",),
    "qviz.widgets.gguf_file": ("explore_gguf",),
    "qviz.plan": ("suggest_types",),
    "qviz.html_report": ("report",),
}
#: public name -> (module, attribute); attribute None means the module itself
_EXPORTS = {
    **{name: (module, name) for module, names in _FUNCTIONS.items() for name in names},
    "FORMATS": ("qviz.registry", "TYPES"),
    "registry": ("qviz.registry", None),
    "gguf": ("qviz.io.gguf", None),
    "metrics": ("qviz.metrics", None),
    "rotation": ("qviz.rotation", None),
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

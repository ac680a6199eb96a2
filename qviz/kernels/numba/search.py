"""Compiled twins of :mod:`qviz.formats.ggml_search` and the rounding helpers.

Importing this module teaches numba the plain-Python functions of
``formats/rounding.py`` and ``formats/ggml_search.py``
(``numba.extending.register_jitable``), so any ``@njit`` kernel can call
``ggml_search.make_qx_quants`` or ``rounding.nearest_int`` directly: numba
compiles the very code the numpy reference runs. The module also exports
``@njit`` dispatchers of the same names for calling a search from Python
(tests, notebooks).

``error_model="numpy"`` gives C's IEEE division (x/0 is inf or nan instead
of a Python ``ZeroDivisionError``); it changes no result that ggml defines.
No fastmath: contraction or reassociation would change bytes.

numba's cache keys a kernel on its own file only: after editing
``ggml_search.py`` or ``rounding.py``, delete the stale cache
(``find qviz -name '*.nbi' -delete``) or the kernels keep the old code.
"""
from __future__ import annotations

from numba import njit
from numba.extending import register_jitable

from qviz.formats import ggml_search, rounding

#: the jit options of every qviz format kernel that calls these helpers.
JIT_OPTIONS = {"cache": True, "error_model": "numpy"}

_ROUNDING = ("nearest_int", "round_away", "fp16_bits", "fp16_value", "fp16_round")
_SEARCH = ("_qx_weight", "_min_weight", "make_qx_quants", "make_q3_quants",
           "make_qkx2_quants", "make_qkx3_quants", "make_qp_quants",
           "best_index_int8", "make_iq4nl_quants")

for _name in _ROUNDING:
    register_jitable(error_model="numpy")(getattr(rounding, _name))
for _name in _SEARCH:
    register_jitable(error_model="numpy")(getattr(ggml_search, _name))

nearest_int = njit(**JIT_OPTIONS)(rounding.nearest_int)
round_away = njit(**JIT_OPTIONS)(rounding.round_away)
fp16_bits = njit(**JIT_OPTIONS)(rounding.fp16_bits)
fp16_value = njit(**JIT_OPTIONS)(rounding.fp16_value)
make_qx_quants = njit(**JIT_OPTIONS)(ggml_search.make_qx_quants)
make_q3_quants = njit(**JIT_OPTIONS)(ggml_search.make_q3_quants)
make_qkx2_quants = njit(**JIT_OPTIONS)(ggml_search.make_qkx2_quants)
make_qkx3_quants = njit(**JIT_OPTIONS)(ggml_search.make_qkx3_quants)
make_qp_quants = njit(**JIT_OPTIONS)(ggml_search.make_qp_quants)
best_index_int8 = njit(**JIT_OPTIONS)(ggml_search.best_index_int8)
make_iq4nl_quants = njit(**JIT_OPTIONS)(ggml_search.make_iq4nl_quants)

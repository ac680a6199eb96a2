"""What the ggml type modules share: packed rows split into block fields and back, and per-type docstrings.

:func:`fields` and :func:`assemble` are the one pair between packed rows and
their fields, in the order the type's record lists them (ggml-common.h
``block_<type>``). :func:`describe` gives every per-type function
(``quantize_q4_k``, ``dequantize_q6_k``, ``unpack_q8_0`` …) its docstring from
one template per verb (:data:`QUANTIZE`, :data:`DEQUANTIZE`, :data:`UNPACK`),
filled from the type's record (block size, type size, fields) and a few
values the family module gives (ggml's notes, the examples).
:func:`describe_twins` attaches the same text, with a line about the twin, to
the functions of a numba or torch twin module.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from qviz.formats.spec import FORMATS
from qviz.registry import types

__all__ = ["fields", "assemble", "describe", "describe_twins", "QUANTIZE", "DEQUANTIZE", "UNPACK"]

F = TypeVar("F", bound=Callable)


def fields(type_name: str, packed: npt.NDArray[np.uint8]) -> dict[str, np.ndarray]:
    """Split packed rows into their block fields.

    Parameters
    ----------
    type_name : str
        A registered type, e.g. ``"Q4_K"``.
    packed : ndarray, shape (n_rows, n_blocks * type_size), uint8

    Returns
    -------
    dict of str to ndarray
        Field name -> uint8 view of shape (n_rows, n_blocks, nbytes), in
        storage order.

    Raises
    ------
    ValueError
        When the rows are not whole blocks.

    Examples
    --------
    >>> f = fields("Q4_0", np.zeros((3, 36), dtype=np.uint8))
    >>> {k: v.shape for k, v in f.items()}
    {'d': (3, 2, 2), 'qs': (3, 2, 16)}
    """
    t = FORMATS[type_name]
    if packed.ndim != 2 or packed.shape[1] % t.type_size:
        raise ValueError(f"{type_name} packed rows have shape {packed.shape}; expected (n_rows, n_blocks * "
                         f"{t.type_size}): every row is whole {t.type_size}-byte blocks")
    n_rows, n_blocks = packed.shape[0], packed.shape[1] // t.type_size
    blocks = packed.reshape(n_rows, n_blocks, t.type_size)
    out, off = {}, 0
    for f in t.fields:
        out[f.name] = blocks[..., off:off + f.nbytes]
        off += f.nbytes
    return out


def assemble(type_name: str, **parts: np.ndarray) -> np.ndarray:
    """Join block fields into packed rows, the inverse of :func:`fields`.

    Parameters
    ----------
    type_name : str
    **parts : ndarray, shape (n_rows, n_blocks, nbytes), uint8
        One per field of the type, by ggml's name.

    Returns
    -------
    ndarray, shape (n_rows, n_blocks * type_size), uint8

    Examples
    --------
    >>> assemble("Q4_0", d=np.ones((1, 2, 2), np.uint8), qs=np.zeros((1, 2, 16), np.uint8)).shape
    (1, 36)
    """
    # (n_rows, n_blocks, type_size)
    blocks = np.concatenate([parts[f.name] for f in FORMATS[type_name].fields], axis=-1)
    return blocks.reshape(blocks.shape[0], blocks.shape[1] * blocks.shape[2])


# ------------------------------------------------------------------ docstrings
#
# Placeholders every template may use, from the type's record: name (Q4_K),
# lower (q4_k), ggml (q4_K, ggml's spelling in function names), block_size,
# type_size, bits, nmax (2**bits - 1), group_size, n_groups (groups per
# block), layout ("d 2, dmin 2, scales 12, qs 128"); and, by backend: array
# (ndarray or torch.Tensor), out (the numba dequantizers' ``out``
# parameter) and twin (the line that names the reference).

QUANTIZE = """Quantize rows to {name}, byte-identical to ggml.
{summary}
Parameters
----------
x : {array}, shape (n_rows, n_cols), float32
    C-contiguous rows; n_cols a multiple of {block_size}.
imatrix : {array}, shape (n_cols,), float32, optional
    {imatrix}

Returns
-------
{array}, shape (n_rows, n_cols // {block_size} * {type_size}), uint8
    ggml's ``block_{ggml}`` rows: {layout}.

Notes
-----
{notes}{twin}

Examples
--------
{examples}
"""

DEQUANTIZE = """ggml's ``dequantize_row_{ggml}`` on each row: {formula}.
{summary}
Parameters
----------
packed : {array}, shape (n_rows, n_blocks * {type_size}), uint8
    ``block_{ggml}`` rows: {layout}.{out}

Returns
-------
{array}, shape (n_rows, n_blocks * {block_size}), float32
    Bit-exact with ggml.

Notes
-----
ggml-quants.c ``dequantize_row_{ggml}``.{twin}

Examples
--------
{examples}
"""

UNPACK = """Decode {name} rows into codes and the {groups} of each {group_size}-weight group.

Parameters
----------
packed : {array}, shape (n_rows, n_blocks * {type_size}), uint8
    ``block_{ggml}`` rows: {layout}.

Returns
-------
Unpacked
    ``codes`` (n_rows, n_cols) uint8, {codes}; ``scales``
    (n_rows, n_cols // {group_size}) float32, {scales}{mins}.

Notes
-----
The arrays a ``QuantResult`` holds: its ``dequantize()`` repeats ggml's
``dequantize_row_{ggml}`` from them.{twin}

Examples
--------
{examples}
"""

#: default values of the templates' per-type placeholders
DEFAULTS = {
    "summary": "",
    "imatrix": "Importance of each column (llama-imatrix's mean squared activation), or None.",
    "notes": "ggml-quants.c ``quantize_row_{ggml}_ref`` without ``imatrix`` and "
             "``quantize_row_{ggml}_impl`` with it (the paths of ``ggml_quantize_chunk``).",
    "codes": "0..{nmax}",
    "mins": None,
}

#: what each backend's twin says about itself, and how it spells arrays
BACKENDS = {
    "numpy": {"array": "ndarray", "twin": "", "out": ""},
    "numba": {"array": "ndarray",
              "twin": "\n\nThe numba twin of :func:`{reference}`: the same result, rows in parallel.",
              "out": "\nout : ndarray, shape (n_rows, n_blocks * {block_size}), float32, C-contiguous, "
                     "optional\n    Written instead of a new array (see :mod:`qviz.kernels.numba.buffers`)."},
    "torch": {"array": "torch.Tensor",
              "twin": "\n\nThe torch twin of :func:`{reference}`, on the input's device: every product "
                      "is one torch op in ggml's order, so nothing is fused into an FMA.",
              "out": ""},
}

#: the examples of a torch twin (the references' examples take numpy arrays)
TORCH_EXAMPLES = (">>> {function}(torch.zeros((2, {type_size}), dtype=torch.uint8)).shape\n"
                  "torch.Size([2, {block_size}])")

#: (template, type, values) of every described function, by "module.function"
_DESCRIBED: dict[str, tuple[str, str, dict]] = {}


def render(template: str, type_name: str, backend: str = "numpy", **values: str) -> str:
    """``template`` with its placeholders filled for ``type_name`` and ``backend``.

    ``values`` override :data:`DEFAULTS`; a value may itself use the
    placeholders of the type (``{ggml}``, ``{block_size}`` …).
    """
    t = FORMATS[type_name]
    keys = {"name": t.name, "lower": t.name.lower(), "ggml": t.name.lower().replace("_k", "_K"),
            "block_size": t.block_size, "type_size": t.type_size, "bits": t.bits,
            "nmax": 2 ** t.bits - 1, "group_size": t.group_size, "n_groups": t.block_size // t.group_size,
            "layout": ", ".join(f"{f.name} {f.nbytes}" for f in t.fields),
            "reference": values.pop("reference", ""), "function": values.pop("function", "")}
    keys.update({k: v.format(**keys) for k, v in BACKENDS[backend].items()})
    for k, v in {**DEFAULTS, **values}.items():
        keys[k] = v.format(**keys) if isinstance(v, str) else v
    if keys["summary"]:
        keys["summary"] = f"\n{keys['summary']}\n"
    keys["groups"] = "scale" if keys["mins"] is None else "scale and min"
    keys["mins"] = "" if keys["mins"] is None else f"; ``mins`` of the same shape, {keys['mins']}"
    return template.format(**keys)


def describe(template: str, type_name: str, **values: str) -> Callable[[F], F]:
    """Decorator: the function's docstring is ``template`` filled for ``type_name``.

    Parameters
    ----------
    template : str
        :data:`QUANTIZE`, :data:`DEQUANTIZE`, :data:`UNPACK` or another
        string with the same placeholders.
    type_name : str
        A registered type.
    **values : str
        The per-type placeholders (``notes``, ``examples``, ``formula`` …).

    Examples
    --------
    >>> @describe("Dequantize {name}: {formula} ({type_size} bytes a block).", "Q8_0", formula="q * d")
    ... def dequantize_q8_0(packed): ...
    >>> dequantize_q8_0.__doc__
    'Dequantize Q8_0: q * d (34 bytes a block).'
    """
    def attach(fn: F) -> F:
        _DESCRIBED[f"{fn.__module__}.{fn.__name__}"] = (template, type_name, values)
        fn.__doc__ = render(template, type_name, **values)
        return fn
    return attach


def describe_twins(module: str, backend: str, **values: str) -> None:
    """Give each per-type function of twin ``module`` its reference's docstring, told it is a twin.

    Parameters
    ----------
    module : str
        The twin module's name, ``qviz.kernels.<backend>.<family>`` (its
        ``__name__``).
    backend : {"numba", "torch"}
    **values : str
        Placeholders to fill differently from the reference (a torch twin's
        ``examples``).
    """
    namespace = vars(sys.modules[module])
    for t in types().values():
        if t.module_of(backend) != module:
            continue
        for verb in ("quantize", "dequantize", "unpack"):
            name = f"{verb}_{t.name.lower()}"
            reference = f"{t.module}.{name}"
            if name in namespace and reference in _DESCRIBED:
                template, type_name, own = _DESCRIBED[reference]
                namespace[name].__doc__ = render(template, type_name, backend,
                                                 **{**own, **values, "reference": reference,
                                                    "function": name})

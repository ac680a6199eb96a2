"""The one place a name becomes code: quant types and methods.

A **quant type** (:class:`QuantType`) is a storage format with a fixed block
layout, such as ggml's ``"Q4_K"``: its ids, its block's fields (the type size
and the bits per weight are derived from them), the type llama-quantize falls
back to, and the modules that implement it (a readable numpy reference and
its twins, under the same module name in ``kernels/numba/`` and
``kernels/torch/``). A **method** (:class:`Method`) is what
:func:`qviz.quantize` runs: its label, function, options schema
(:class:`Option`), whether it needs calibration activations, what its result
exports to and whether ``QuantLinear`` holds it. Every quant type is a method
too.

Registering is the only step that makes a name known: :func:`qviz.quantize`,
the explorers, ``quantize_model``, ``requantize``, ``QuantLinear``, the plots
and the tests' parametrization all look names up here. The built-in records
register themselves when their modules load: every module of
``qviz/formats/`` (types) and :mod:`qviz.quantizers` (methods) is imported on the
first lookup.

Names resolve exactly first, then case-insensitively when that is unique
(``"q4_k"`` is ``"Q4_K"``, ``"GPTQ"`` is ``"gptq"``); anything else is an
error that names the closest registered names.

Examples
--------
>>> from qviz import registry
>>> t = registry.quant_type("q4_k")
>>> t.name, t.type_size, t.bits_per_weight
('Q4_K', 144, 4.5)
>>> [o.name for o in registry.method("rtn").controls]
['bits', 'group_size', 'sym', 'per_tensor']
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import pkgutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple

__all__ = ["Field", "Option", "QuantType", "Method", "register_type", "register_method",
           "unregister", "load", "quant_type", "method", "types", "methods", "resolve_name", "TYPES", "METHODS"]


# --------------------------------------------------------------------------- records

@dataclass(frozen=True)
class QuantType:
    """A storage type with a fixed block layout (a ggml type).

    Attributes
    ----------
    name : str
        Upstream spelling, e.g. ``"Q4_K"``.
    ggml_type : int
        The ``GGMLQuantizationType`` / ``enum ggml_type`` value.
    block_size : int
        Weights per block (32, or 256 for the K-quants).
    fields : tuple of Field
        The block's fields in storage order (ggml-common.h ``block_<type>``).
    bits : int
        Code width in bits of one weight.
    group_size : int
        Weights that share one effective scale (a block or a sub-block).
    module : str
        The numpy reference module (``qviz.formats.<family>``). It defines
        ``quantize_<type>(x, imatrix)``, ``dequantize_<type>(packed)`` and
        ``unpack_<type>(packed)``, ``<type>`` the lowercase name.
    twins : tuple of str
        Backends with a twin module of the same name: ``"numba"``
        (``qviz.kernels.numba.<family>``, all three functions) and ``"torch"``
        (``qviz.kernels.torch.<family>``, ``dequantize_<type>`` only).
    fallback : str or None
        The type llama-quantize uses when a row is not a multiple of
        ``block_size`` (llama.cpp ``llama_tensor_get_type``).
    file_type : int or None
        ``general.file_type`` (``LlamaFileType``) of a file mostly of this type;
        a K-quant maps to its ``_S`` mix, the one closest to a single type.
    requires_imatrix : bool
        Quantizing refuses without an importance matrix
        (``ggml_quantize_requires_imatrix``).
    scale_format, scale_max : str, float
        How a block's scale is stored and its largest finite value (fp16's
        65504 for most ggml types): weights beyond it get a clear error where
        the scale would overflow.
    """

    name: str
    ggml_type: int
    block_size: int
    fields: tuple[Field, ...]
    bits: int
    group_size: int
    module: str
    twins: tuple[str, ...] = ("numba",)
    fallback: str | None = None
    file_type: int | None = None
    requires_imatrix: bool = False
    scale_format: str = "fp16"
    scale_max: float = 65504.0

    @property
    def type_size(self) -> int:
        """Bytes per block: the sum of the fields."""
        return sum(f.nbytes for f in self.fields)

    @property
    def bits_per_weight(self) -> float:
        """Storage bits per weight, derived from the type size."""
        return self.type_size * 8 / self.block_size

    def row_bytes(self, n_cols: int) -> int:
        """Bytes of one row of ``n_cols`` weights (a multiple of ``block_size``)."""
        return n_cols // self.block_size * self.type_size

    @property
    def family(self) -> str:
        """The module's last name part (``"gguf_k_min"``), shared by the twins."""
        return self.module.rsplit(".", 1)[-1]

    def provides(self, verb: str, backend: str = "numpy") -> bool:
        """Whether ``backend``'s module defines ``<verb>_<type>`` (``"points"``: the lattice types)."""
        mod = self.module_of(backend)
        return mod is not None and hasattr(importlib.import_module(mod), f"{verb}_{self.name.lower()}")

    def module_of(self, backend: str = "numpy") -> str | None:
        """The module implementing ``backend`` (``"numpy"``, ``"numba"``, ``"torch"``), or None."""
        if backend == "numpy":
            return self.module
        if backend not in self.twins:
            return None
        if not self.module.startswith("qviz.formats."):
            raise ValueError(f"{self.name}: twins live beside a module of qviz.formats, "
                             f"not {self.module!r}")
        return f"qviz.kernels.{backend}.{self.family}"

    def function(self, verb: str, backend: str = "numba") -> Callable:
        """``<verb>_<type>`` of ``backend``'s module; the reference serves a missing numba twin.

        Parameters
        ----------
        verb : {"quantize", "dequantize", "unpack"}
        backend : {"numba", "numpy", "torch"}

        Raises
        ------
        ValueError
            For a backend this type has no module for (torch twins are few).
        """
        mod = self.module_of(backend)
        if mod is None and backend == "numba":
            mod = self.module
        if mod is None:
            have = ", ".join(["numpy", *self.twins])
            raise ValueError(f"{self.name} has no {backend} implementation; it has: {have}")
        return getattr(importlib.import_module(mod), f"{verb}_{self.name.lower()}")


class Field(NamedTuple):
    """One field of a block: ggml's name and its size in bytes."""

    name: str
    nbytes: int


#: the kinds an option's value can be; "array" is any array-like, "any" is unchecked
_KINDS = {"bool": (bool,), "int": (int,), "float": (float, int), "str": (str,)}


@dataclass(frozen=True)
class Option:
    """One option of a method: its kind, default, allowed values and a line of help.

    Validation (:meth:`check`) and the explorers' controls are both built from it.

    Attributes
    ----------
    name : str
    kind : {"bool", "int", "float", "str", "array", "any"}
    default : object
    help : str
    low, high : float or None
        Inclusive bounds of a number.
    choices : tuple or None
        The allowed values (checked before ``low``/``high``).
    control : bool
        Shown as a control in the explorers.
    role : {None, "calibration", "importance"}
        ``"calibration"``: receives the layer's input activations;
        ``"importance"``: receives an importance per input column (the
        explorers show it as one ``imatrix`` on/off control).
    optional : bool
        None is accepted whatever the kind.
    """

    name: str
    kind: str
    default: Any = None
    help: str = ""
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    control: bool = False
    role: str | None = None
    optional: bool = False

    def check(self, method: str, value):
        """Return ``value`` (a numpy integer as int) or raise naming the value and the fix."""
        if value is None and (self.optional or self.default is None):
            return value
        if self.kind in ("array", "any"):
            return value
        import numbers

        if self.kind == "int" and isinstance(value, numbers.Integral) and not isinstance(value, bool):
            value = int(value)
        elif self.kind == "float" and isinstance(value, numbers.Real) and not isinstance(value, bool):
            value = float(value)
        wrong = not isinstance(value, _KINDS[self.kind]) or (self.kind != "bool" and isinstance(value, bool))
        if wrong and (self.low is None and self.high is None):
            raise TypeError(f"{method}: {self.name}={short_repr(value)} must be {_an(self.kind)}"
                            f"{'' if not self.help else f' ({self.help})'}")
        if self.choices is not None:
            if value not in self.choices:
                plural = f"{self.name} values" if self.name[-1] in "sx" else f"{self.name}s"
                raise ValueError(f"{method}: {self.name}={short_repr(value)}; valid {plural}: "
                                 f"{', '.join(map(repr, self.choices))}")
            return value
        if wrong or (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            lo = "" if self.low is None else f"from {self.low:g} "
            hi = "" if self.high is None else f"to {self.high:g}"
            raise ValueError(f"{self.name}={short_repr(value)}: choose {_an(self.kind)} {lo}{hi}".rstrip())
        return value


def short_repr(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters; arrays as their type, shape and dtype."""
    shape = getattr(value, "shape", None)
    if shape is not None and getattr(value, "dtype", None) is not None and len(shape):
        return f"<{type(value).__name__} of shape {tuple(shape)}, {value.dtype}>"
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _an(kind: str) -> str:
    return {"int": "an integer", "float": "a number", "bool": "True or False", "str": "a string"}[kind]


@dataclass(frozen=True)
class Method:
    """What :func:`qviz.quantize` runs under one name.

    Attributes
    ----------
    name : str
        ``"rtn"``, ``"gptq"`` … or a quant type's name.
    label : str
        Display name (``"RTN"``, ``"k-means"``, ``"Q4_K"``).
    function : callable or str
        ``function(w, **options) -> QuantResult`` with ``w`` float32 (n_rows,
        n_cols), or ``"module:attribute"`` imported on first use.
    options : tuple of Option
        Every keyword the function takes; nothing else is accepted.
    needs_calibration : bool
        The ``"calibration"`` option must be given (GPTQ, AWQ).
    exports : tuple of str
        Checkpoint formats its results export to (``qviz.io.export``).
    quantlinear : bool
        ``QuantLinear`` holds its results.
    driver : str or None
        ``"module:function"`` that quantizes a whole model block by block
        (``quantize_model``); None: layer by layer.
    quant_type : QuantType or None
        For a quant type's method.
    fixed : Mapping
        Keywords always passed (a quant type's ``name``).
    """

    name: str
    label: str
    function: Callable | str
    options: tuple[Option, ...] = ()
    needs_calibration: bool = False
    exports: tuple[str, ...] = ()
    quantlinear: bool = False
    driver: str | None = None
    quant_type: QuantType | None = None
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def option(self, name: str) -> Option | None:
        """The option called ``name``, or None."""
        return next((o for o in self.options if o.name == name), None)

    @property
    def controls(self) -> tuple[Option, ...]:
        """The options the explorers show, in order."""
        return tuple(o for o in self.options if o.control)

    def role(self, role: str) -> str | None:
        """The name of the option with ``role`` (``"calibration"``/``"importance"``), or None."""
        return next((o.name for o in self.options if o.role == role), None)

    @property
    def takes_calibration(self) -> bool:
        """Whether the method can use the layer's activations (GPTQ, AWQ)."""
        return self.role("calibration") is not None

    def check(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Validate ``options`` against the schema; returns them checked.

        Raises
        ------
        TypeError
            For an option the method does not take (listing those it takes), or
            a value of the wrong kind.
        ValueError
            For a value out of range.
        """
        names = [o.name for o in self.options]
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise TypeError(f"method {self.name!r} takes no option(s) {', '.join(unknown)}; "
                            f"its options are: {', '.join(names) or 'none'}")
        return {k: self.option(k).check(self.name, v) for k, v in options.items()}

    def call(self, w, **options):
        """Run the method on a validated float32 weight; options are checked first."""
        fn = self.function
        if isinstance(fn, str):
            fn = load(fn)
        return fn(w, **self.fixed, **self.check(options))


@functools.lru_cache(maxsize=None)
def load(path: str) -> Callable:
    """The object a record names as ``"module:attribute"`` (a method's function or driver), imported once."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


# --------------------------------------------------------------------------- the registry

_TYPES: dict[str, QuantType] = {}
_METHODS: dict[str, Method] = {}
_LOCK = threading.RLock()
_LOADED = False
#: where built-in records register themselves (every module of the package; one module)
BUILTIN_PACKAGES = ("qviz.formats",)
BUILTIN_MODULES = ("qviz.quantizers",)


def _load_builtins() -> None:
    global _LOADED
    if _LOADED:
        return
    with _LOCK:
        if _LOADED:
            return
        _LOADED = True  # set first: the modules below call register_* while loading
        for mod in BUILTIN_MODULES:  # the classic methods (RTN, GPTQ, AWQ …) first, as listed
            importlib.import_module(mod)
        for pkg in BUILTIN_PACKAGES:
            package = importlib.import_module(pkg)
            for m in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
                importlib.import_module(f"{pkg}.{m.name}")


def register_type(t: QuantType, *, replace: bool = False) -> QuantType:
    """Make quant type ``t`` known by its name (and as a method of that name).

    Raises
    ------
    ValueError
        When the name is taken (``replace=True`` overrides), or clashes with a
        method's name.
    """
    if not isinstance(t, QuantType):
        raise TypeError(f"register_type takes a QuantType, got {type(t).__name__}")
    with _LOCK:
        if not replace and (t.name in _TYPES or t.name in _METHODS):
            raise ValueError(f"{t.name!r} is registered already; pass replace=True to replace it")
        if t.fallback is not None and t.fallback == t.name:
            raise ValueError(f"{t.name}: a type cannot fall back to itself")
        _TYPES[t.name] = t
    return t


def register_method(m: Method, *, replace: bool = False) -> Method:
    """Make method ``m`` known to :func:`qviz.quantize`, the explorers and ``quantize_model``."""
    if not isinstance(m, Method):
        raise TypeError(f"register_method takes a Method, got {type(m).__name__}")
    with _LOCK:
        if not replace and (m.name in _METHODS or m.name in _TYPES):
            raise ValueError(f"{m.name!r} is registered already; pass replace=True to replace it")
        _METHODS[m.name] = m
    return m


def unregister(name: str) -> None:
    """Forget the type or method ``name`` (exact spelling); tests use it to clean up."""
    with _LOCK:
        _TYPES.pop(name, None)
        _METHODS.pop(name, None)


def resolve_name(name: str, names, what: str) -> str:
    """``name`` as spelled in ``names``: exact, else a unique case-insensitive match.

    Raises
    ------
    TypeError
        For a name that is not a string.
    ValueError
        For an unknown name, suggesting the closest ones.
    """
    if not isinstance(name, str):
        raise TypeError(f"a {what} is named by a string such as 'rtn' or 'Q4_K', got {name!r}")
    names = list(names)
    if name in names:
        return name
    folded = [n for n in names if n.casefold() == name.casefold()]
    if len(folded) == 1:
        return folded[0]

    def key(s: str) -> str:
        return s.casefold().replace("_", "").replace("-", "")

    keyed = {key(n): n for n in names}
    close = [keyed[k] for k in difflib.get_close_matches(key(name), list(keyed), n=4, cutoff=0.6)]
    close = folded + [c for c in close if c not in folded]
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise ValueError(f"unknown {what} {name!r}; {hint}valid {what}s: {', '.join(names)}")


def quant_type(name: str) -> QuantType:
    """The quant type called ``name`` (see :func:`resolve_name`)."""
    _load_builtins()
    return _TYPES[resolve_name(name, _TYPES, "quant type")]


def types() -> dict[str, QuantType]:
    """Every registered quant type, by name, in registration order."""
    _load_builtins()
    # legacy 32-blocks by ggml id, then the 256-blocks by ggml id: ggml's own order
    return dict(sorted(_TYPES.items(), key=lambda kv: (kv[1].block_size, kv[1].ggml_type)))


def method(name: str) -> Method:
    """The method called ``name``: a registered method or a quant type's."""
    _load_builtins()
    name = resolve_name(name, [*_METHODS, *types()], "method")
    if name in _METHODS:
        return _METHODS[name]
    return _type_method(_TYPES[name])


def _rank(m: Method) -> int:
    """0 for :data:`BUILTIN_MODULES`' methods, 1 for the format modules', 2 for any other."""
    fn = m.function
    module = fn.partition(":")[0] if isinstance(fn, str) else getattr(fn, "__module__", "") or ""
    if module in BUILTIN_MODULES:
        return 0
    return 1 if any(module.startswith(f"{p}.") for p in BUILTIN_PACKAGES) else 2


def methods() -> dict[str, Method]:
    """Every method ``qviz.quantize`` accepts, by name: methods first, then quant types.

    The built-in methods come first (RTN, GPTQ, AWQ …), then those of the format
    modules, then any other, each in registration order, whichever module was
    imported first.
    """
    _load_builtins()
    ordered = sorted(_METHODS.values(), key=_rank)  # stable: registration order within a rank
    return {**{m.name: m for m in ordered}, **{n: _type_method(t) for n, t in types().items()}}


#: the options every quant type takes, in the order the explorers show them
TYPE_OPTIONS = (
    Option("imatrix", "array", None, "llama.cpp importance: mean squared activation per input "
           "column, shape (n_cols,)", control=True, role="importance", optional=True),
    Option("backend", "str", "numba", "the fast kernel or the readable reference (same bytes)",
           choices=("numba", "numpy")),
    Option("fallback", "bool", False, "use llama-quantize's fallback type for rows no block divides"),
)


def _type_method(t: QuantType) -> Method:
    options = TYPE_OPTIONS
    if t.requires_imatrix:  # IQ2_XXS, IQ2_XS, IQ1_S: llama-quantize refuses them without one
        options = (dataclasses.replace(TYPE_OPTIONS[0], optional=False), *TYPE_OPTIONS[1:])
    # "MXFP4" is ggml's bytes, "mxfp4" the OCP tensor format: where a method shares the name, say which
    clash = any(n.casefold() == t.name.casefold() for n in _METHODS)
    return Method(t.name, f"{t.name} (GGUF)" if clash else t.name, "qviz.quantizers:quantize_type", options,
                  quant_type=t, fixed={"name": t.name},
                  quantlinear="torch" in t.twins)


class _View(Mapping):
    """A read-only live view of a registry table (loads the built-ins on first use)."""

    def __init__(self, table: Callable[[], dict]):
        self._table = table

    def __getitem__(self, key):
        return self._table()[key]

    def __iter__(self) -> Iterator:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())

    def __repr__(self) -> str:
        return f"<registry view of {', '.join(self)}>"


#: name -> QuantType, live
TYPES: Mapping[str, QuantType] = _View(types)
#: name -> Method (quant types included), live
METHODS: Mapping[str, Method] = _View(methods)

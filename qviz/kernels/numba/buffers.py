"""Output arrays of the kernels, and the public functions that allocate them around a kernel.

A weight-sized float32 array that is new each time costs page faults, tens
of milliseconds for 64 MB: a caller that decodes often (an explorer) hands
the kernels one buffer to overwrite instead (:func:`float_output`).

Every twin module makes its ``quantize_<type>``, ``dequantize_<type>`` and
``unpack_<type>`` with :func:`twins`: they check nothing beyond contiguity,
allocate the outputs from the type's record and call the ``@njit`` kernels,
which only do arithmetic. Their docstrings are the reference's
(:func:`qviz.formats.blocks.describe_twins`).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from qviz.formats.spec import FORMATS, Unpacked


def float_output(shape: tuple[int, int], out: np.ndarray | None = None) -> np.ndarray:
    """A float32 array of ``shape`` for a kernel to fill: ``out`` (checked) or a new one.

    Raises
    ------
    ValueError
        ``out`` is not a C-contiguous float32 array of ``shape``.
    """
    if out is None:
        return np.empty(shape, dtype=np.float32)
    if out.shape != tuple(shape) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous float32 array of shape {tuple(shape)}; "
                         f"got {out.dtype} {out.shape}")
    return out


def _named(fn: Callable, verb: str, type_name: str, module: str) -> Callable:
    fn.__name__ = fn.__qualname__ = f"{verb}_{type_name.lower()}"
    fn.__module__ = module
    return fn


def _quantizer(module: str, type_name: str, kernel: Callable, *params) -> Callable:
    """``quantize_<type>(x, imatrix=None)`` of twin ``module``.

    It calls ``kernel(x, imatrix, out, *params)`` with ``x`` float32
    (n_rows, n_cols) C-contiguous, ``imatrix`` float32 (n_cols,) or None
    (numba compiles a variant without the imatrix branch) and ``out`` uint8
    (n_rows, row_bytes), zeroed, which it returns.
    """
    def quantize(x: npt.NDArray[np.float32], imatrix: npt.NDArray[np.float32] | None = None) -> np.ndarray:
        out = np.zeros((x.shape[0], FORMATS[type_name].row_bytes(x.shape[1])), dtype=np.uint8)
        kernel(np.ascontiguousarray(x), imatrix, out, *params)
        return out
    return _named(quantize, "quantize", type_name, module)


def _dequantizer(module: str, type_name: str, kernel: Callable, *params) -> Callable:
    """``dequantize_<type>(packed, out=None)`` of twin ``module``.

    It calls ``kernel(packed, y, *params)`` with ``packed`` uint8 (n_rows,
    row_bytes) C-contiguous and ``y`` float32 (n_rows, n_cols), ``out`` or
    new (:func:`float_output`), which it returns.
    """
    def dequantize(packed: npt.NDArray[np.uint8], out: np.ndarray | None = None) -> np.ndarray:
        t = FORMATS[type_name]
        y = float_output((packed.shape[0], packed.shape[1] // t.type_size * t.block_size), out)
        kernel(np.ascontiguousarray(packed), y, *params)
        return y
    return _named(dequantize, "dequantize", type_name, module)


def _unpacker(module: str, type_name: str, kernel: Callable, *params, mins: bool = False,
              codebook: np.ndarray | None = None) -> Callable:
    """``unpack_<type>(packed)`` of twin ``module``, returning an :class:`Unpacked`.

    It calls ``kernel(packed, codes, scales, mins, *params)`` with ``packed``
    uint8 (n_rows, row_bytes) C-contiguous, ``codes`` uint8 (n_rows, n_cols),
    ``scales`` float32 (n_rows, n_cols // group_size) and ``mins`` of the same
    shape, or None for a type without, all to be written.
    ``codebook`` is returned as it is.
    """
    def unpack(packed: npt.NDArray[np.uint8]) -> Unpacked:
        t = FORMATS[type_name]
        packed = np.ascontiguousarray(packed, dtype=np.uint8)
        n_rows, n_cols = packed.shape[0], packed.shape[1] // t.type_size * t.block_size
        codes = np.empty((n_rows, n_cols), dtype=np.uint8)
        scales = np.empty((n_rows, n_cols // t.group_size), dtype=np.float32)
        offsets = np.empty_like(scales) if mins else None
        kernel(packed, codes, scales, offsets, *params)
        return Unpacked(codes, scales, offsets, None if codebook is None else codebook.copy())
    return _named(unpack, "unpack", type_name, module)


def twins(type_name: str, quantize: Callable | tuple, dequantize: Callable | tuple, unpack: Callable | tuple,
          codebook: np.ndarray | None = None) -> tuple[Callable, Callable, Callable]:
    """``quantize_<type>``, ``dequantize_<type>`` and ``unpack_<type>`` around a twin module's kernels.

    Parameters
    ----------
    type_name : str
        A registered type.
    quantize : callable or tuple
        ``@njit`` kernel ``(x, imatrix, out, *parameters)``, or ``(kernel, *parameters)``.
    dequantize : callable or tuple
        ``@njit`` kernel ``(packed, y, *parameters)``, or ``(kernel, *parameters)``;
        the functions belong to the kernel's module.
    unpack : callable or tuple
        ``@njit`` kernel ``(packed, codes, scales, mins, *parameters)``, or
        ``(kernel, *parameters)``. ``mins`` is an array where the type stores
        an offset (a field ``m`` or ``dmin``), else None.
    codebook : ndarray, shape (n_levels,), float32, optional
        Returned by ``unpack_<type>`` (a copy each time).

    Returns
    -------
    quantize, dequantize, unpack : callable
    """
    q, d, u = (k if isinstance(k, tuple) else (k,) for k in (quantize, dequantize, unpack))
    module = d[0].__module__
    mins = any(f.name in ("m", "dmin") for f in FORMATS[type_name].fields)
    return (_quantizer(module, type_name, *q), _dequantizer(module, type_name, *d),
            _unpacker(module, type_name, *u, mins=mins, codebook=codebook))
